"""Caffe's learning-rate policies (SGDSolver::GetLearningRate), each a pure function of the solver parameters,
the iteration (number of updates done) and, for multistep, the current step.

Caffe computes the rate in double from the float fields and stores it as a float; `learning_rate` does the same.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def _fixed(p, it, step):
    return p.base_lr, step


def _step(p, it, step):
    if p.stepsize <= 0:
        raise CaffeError(f"lr_policy \"step\" needs stepsize > 0, got {p.stepsize}")
    step = it // p.stepsize
    return p.base_lr * math.pow(p.gamma, step), step


def _exp(p, it, step):
    return p.base_lr * math.pow(p.gamma, it), step


def _inv(p, it, step):
    return p.base_lr * math.pow(1.0 + p.gamma * it, -p.power), step


def _multistep(p, it, step):
    # At most one step per call, as Caffe does; the step count is part of the solver state.
    if step < len(p.stepvalue) and it >= p.stepvalue[step]:
        step += 1
        log.info("MultiStep Status: Iteration %d, step = %d", it, step)
    return p.base_lr * math.pow(p.gamma, step), step


def _poly(p, it, step):
    if p.max_iter <= 0:
        raise CaffeError(f"lr_policy \"poly\" needs max_iter > 0, got {p.max_iter}")
    return p.base_lr * math.pow(1.0 - float(it) / p.max_iter, p.power), step


def _sigmoid(p, it, step):
    return p.base_lr * (1.0 / (1.0 + math.exp(-p.gamma * (it - p.stepsize)))), step


POLICIES = {"fixed": _fixed, "step": _step, "exp": _exp, "inv": _inv, "multistep": _multistep, "poly": _poly,
            "sigmoid": _sigmoid}


def check_policy(param: caffe_pb2.SolverParameter) -> None:
    if param.lr_policy not in POLICIES:
        raise CaffeError(f"Unknown learning rate policy: {param.lr_policy!r} "
                         f"(known: {', '.join(POLICIES)}; lr_policy has no default)")


def learning_rate(param: caffe_pb2.SolverParameter, it: int, current_step: int = 0) -> tuple[float, int]:
    """(rate for the update at iteration `it`, updated current_step)."""
    check_policy(param)
    try:
        rate, step = POLICIES[param.lr_policy](param, it, current_step)
    except (ValueError, OverflowError, ZeroDivisionError) as e:
        p = param
        raise CaffeError(f"lr_policy \"{p.lr_policy}\" at iteration {it}: the rate is not a number for base_lr "
                         f"{p.base_lr:g}, gamma {p.gamma:g}, power {p.power:g}, stepsize {p.stepsize}, max_iter "
                         f"{p.max_iter} ({e})") from None
    return float(np.float32(rate)), step
