"""Opt-in mixed precision for training (`Solver.set_precision`, `caffelike train --precision`).

Caffe trains in float32 only.  Here the forward and backward passes may run under torch.autocast in bfloat16 or
float16 while the weights, their gradients, the solver's histories and its update arithmetic stay float32, so a
solverstate or caffemodel written by a mixed-precision run is an ordinary float32 one.

float16 has too little range for small gradients, so its loss is multiplied by a scale before backward and the
gradients divided by it before the update (dynamic loss scaling): an iteration whose scaled gradients overflow is
skipped and the scale halved; after `growth_interval` good iterations the scale doubles.  bfloat16 has float32's
range and needs no scaling.
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch

from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    def __init__(self, name: str = "fp32", device_type: str = "cpu", *, init_scale: float = 2.0 ** 16,
                 growth_interval: int = 2000):
        if name not in DTYPES:
            raise CaffeError(f"unknown precision {name!r}; choose one of {', '.join(DTYPES)}")
        self.name = name
        self.dtype = DTYPES[name]
        self.device_type = device_type
        self.scale = init_scale if name == "fp16" else 1.0
        self.growth_interval = growth_interval
        self.good_steps = 0
        self.skipped = 0

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.scale != 1.0 else loss

    def unscale(self, grads: list[torch.Tensor], iteration: int) -> bool:
        """Divide the gradients by the loss scale; False when they overflowed (the caller skips the update)."""
        if self.scale == 1.0 or not grads:
            return True
        total = sum(float(g.float().abs().sum()) for g in grads)  # one pass; inf or nan if any element is
        if not math.isfinite(total):
            self.scale /= 2.0
            self.good_steps = 0
            self.skipped += 1
            log.info("Iteration %d: float16 gradients overflowed; update skipped, loss scale lowered to %g",
                     iteration, self.scale)
            for g in grads:
                g.zero_()
            return False
        torch._foreach_mul_(grads, 1.0 / self.scale)
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale *= 2.0
            self.good_steps = 0
        return True
