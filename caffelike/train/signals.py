"""Caffe's SignalHandler: SIGINT and SIGHUP become requests the solver polls once per iteration
(--sigint_effect / --sighup_effect: stop, snapshot or none)."""
from __future__ import annotations

import signal

EFFECTS = ("stop", "snapshot", "none")


class SignalHandler:
    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot"):
        for name, effect in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect)):
            if effect not in EFFECTS:
                raise ValueError(f"--{name} must be one of {', '.join(EFFECTS)}, got {effect!r}")
        self.effects = {signal.SIGINT: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending: str | None = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        effect = self.effects[signum]
        if effect != "none":
            self.pending = effect

    def __enter__(self) -> "SignalHandler":
        for signum in self.effects:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def requested_action(self) -> str | None:
        """The pending request ('stop' or 'snapshot'), cleared once read."""
        action, self.pending = self.pending, None
        return action
