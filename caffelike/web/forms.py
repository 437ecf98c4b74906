"""Reading a submitted form (HTML or DIGITS' REST fields) with every bad value collected, so the page can show
each message beside its field and the API can answer `{"errors": [...]}` with a 400 - never a 500."""
from __future__ import annotations

import math

from caffelike.errors import CaffeError


class FormError(CaffeError):
    """Bad form values: `errors` maps each field to its message."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = dict(errors)


class Form:
    """The values of one request (`values`: a MultiDict or dict; `files`: uploads), read field by field; each
    reader returns the value, or the default after recording an error.  `check()` raises FormError if any."""

    def __init__(self, values, files=None):
        self.values = values
        self.files = files or {}
        self.errors: dict[str, str] = {}

    def error(self, field: str, message: str) -> None:
        self.errors.setdefault(field, message)

    def has(self, field: str) -> bool:
        return str(self.values.get(field, "")).strip() != ""

    def text(self, field: str, default: str = "", *, required: bool = False, max_length: int = 10000) -> str:
        value = str(self.values.get(field, "")).strip()
        if not value:
            if required:
                self.error(field, "required")
            return default
        if len(value) > max_length:
            self.error(field, f"at most {max_length} characters")
            return default
        return value

    def integer(self, field: str, default: int | None = None, *, minimum: int | None = None,
                maximum: int | None = None, required: bool = False) -> int | None:
        raw = self.text(field, required=required)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.error(field, f"must be a whole number, got {raw!r}")
            return default
        return self._bounded(field, value, default, minimum, maximum)

    def number(self, field: str, default: float | None = None, *, minimum: float | None = None,
               maximum: float | None = None, required: bool = False, positive: bool = False) -> float | None:
        raw = self.text(field, required=required)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.error(field, f"must be a number, got {raw!r}")
            return default
        if not math.isfinite(value):
            self.error(field, f"must be a finite number, got {raw!r}")
            return default
        if positive and value <= 0:
            self.error(field, f"must be > 0, got {raw}")
            return default
        return self._bounded(field, value, default, minimum, maximum)

    def _bounded(self, field, value, default, minimum, maximum):
        if minimum is not None and value < minimum:
            self.error(field, f"must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.error(field, f"must be at most {maximum}, got {value}")
            return default
        return value

    def choice(self, field: str, choices, default=None, *, required: bool = False):
        raw = self.text(field, required=required)
        if not raw:
            return default
        if raw not in choices:
            self.error(field, f"must be one of {', '.join(map(str, choices))}; got {raw!r}")
            return default
        return raw

    def flag(self, field: str, default: bool = False) -> bool:
        """A checkbox or a DIGITS boolean: on/true/1/yes."""
        raw = str(self.values.get(field, "")).strip().lower()
        if not raw:
            return default
        return raw in ("on", "true", "1", "yes", "y")

    def upload(self, field: str):
        """The uploaded file of `field` (werkzeug FileStorage), or None when none was sent."""
        f = self.files.get(field)
        return f if f is not None and f.filename else None

    def check(self) -> None:
        if self.errors:
            raise FormError(self.errors)
