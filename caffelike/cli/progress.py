"""Progress bars for the long verbs (train, test, convert_imageset, compute_image_mean, dataset, tutorial).

A tqdm bar is drawn on stderr only while stderr is a terminal: redirected to a file or a pipe (a log that
parse_log.py, DIGITS or the web app reads) nothing but Caffe's glog lines is written.  While the bar shows,
caffelike's log lines are routed through tqdm so each prints whole above the bar instead of through it.
"""
from __future__ import annotations

import contextlib
import logging
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class ProgressBar:
    """`with ProgressBar("Training", total=n) as bar: bar.update(1)`, or `bar.advance_to(done, total)` from a
    callback that knows the totals only once work starts."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", stream=None):
        self.stream = stream or sys.stderr
        self.shown = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, disable=not self.shown, leave=False,
                        dynamic_ncols=True, mininterval=0.2)
        self._logs = logging_redirect_tqdm([logging.getLogger("caffelike")]) if self.shown \
            else contextlib.nullcontext()

    def __enter__(self) -> ProgressBar:
        self._logs.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        self._logs.__exit__(*exc)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def advance_to(self, done: int, total: int | None = None, **postfix) -> None:
        if total is not None and self.bar.total != total:
            self.bar.total = total
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(done - self.bar.n)


def solver_bar(solver, desc: str = "Training", stream=None) -> ProgressBar:
    """A bar over a solver's iterations (to max_iter), with the smoothed loss beside it, fed by its hooks."""
    bar = ProgressBar(desc, total=solver.param.max_iter, unit="iter", stream=stream)
    bar.advance_to(solver.iter)
    solver.add_hook("on_update", lambda s: bar.advance_to(s.iter, loss=f"{s.smoothed_loss:.4g}"))
    return bar


class NetBuildBar:
    """Listens to caffelike.net.graph's building of large nets and shows it as a bar (see BUILD_LISTENERS)."""

    def __init__(self, stream=None):
        self.stream, self.bar = stream, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = ProgressBar("Building net", total=total, unit="layer", stream=self.stream).__enter__()
        self.bar.advance_to(done, total)
        if done >= total:
            self.bar.__exit__(None, None, None)
            self.bar = None
