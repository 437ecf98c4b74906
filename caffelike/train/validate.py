"""SolverParameter checked in one place, before any net is built: every field a solver reads, with the range
Caffe's rules (or plain arithmetic) allow.  A value out of range is refused with the file, the field's name, the
allowed range and the value, instead of failing or dividing by zero an hour into training.
"""
from __future__ import annotations

import math

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2
from caffelike.train.lr_policy import POLICIES
from caffelike.train.updates import RULES

# field -> (test, allowed range in words); only fields a set value of which can be wrong
_RANGES = {
    "base_lr": (lambda v: v >= 0, ">= 0"),
    "iter_size": (lambda v: v >= 1, ">= 1"),
    "max_iter": (lambda v: v >= 0, ">= 0"),
    "average_loss": (lambda v: v >= 1, ">= 1"),
    "display": (lambda v: v >= 0, ">= 0 (0: never)"),
    "snapshot": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "test_interval": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "momentum2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "rms_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "delta": (lambda v: v > 0, "> 0"),
    "gamma": (lambda v: True, "any finite number"),
    "power": (lambda v: True, "any finite number"),
    "clip_gradients": (lambda v: v < 0 or v > 0, "> 0, or < 0 for no clipping"),
}
_NEEDS = {  # lr policy -> fields it reads beyond base_lr, with their own ranges
    "fixed": {},
    "step": {"stepsize": (lambda v: v > 0, "> 0")},
    "exp": {},
    "inv": {"gamma": (lambda v: v >= 0, ">= 0")},
    "multistep": {},
    "poly": {"max_iter": (lambda v: v > 0, "> 0")},
    "sigmoid": {},
}


def check_solver(p: caffe_pb2.SolverParameter, where: str = "solver") -> None:
    """Refuse a SolverParameter that Caffe would refuse or that cannot train; `where` names the file."""
    def fail(message: str) -> None:
        raise CaffeError(f"{where}: {message}")

    if p.type not in RULES:
        fail(f"Unknown solver type: {p.type!r} (known types: {', '.join(RULES)})")
    if p.lr_policy not in POLICIES:
        fail(f"Unknown learning rate policy: {p.lr_policy!r} (known: {', '.join(POLICIES)}; lr_policy has no "
             "default)")
    for field, (ok, allowed) in _RANGES.items():
        value = getattr(p, field)
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"{field} must be a finite number, got {value}")
        if p.HasField(field) and not ok(value):
            fail(f"{field} must be {allowed}, got {value:g}")
    for field, (ok, allowed) in _NEEDS[p.lr_policy].items():
        if not ok(getattr(p, field)):
            fail(f'lr_policy "{p.lr_policy}" needs {field} {allowed}, got {getattr(p, field):g}')
    if p.lr_policy == "multistep" and list(p.stepvalue) != sorted(p.stepvalue):
        fail(f"stepvalue must be increasing, got {list(p.stepvalue)}")
    if p.type in ("AdaGrad", "RMSProp") and p.momentum != 0:
        fail(f"momentum cannot be used with {p.type} (set momentum: 0), got {p.momentum:g}")
    for i, n in enumerate(p.test_iter):
        if n < 0:
            fail(f"test_iter[{i}] must be >= 0, got {n}")
    if p.regularization_type not in ("L1", "L2"):
        fail(f'regularization_type must be "L1" or "L2", got {p.regularization_type!r}')
