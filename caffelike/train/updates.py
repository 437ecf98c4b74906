"""Caffe's update rules (ComputeUpdateValue of sgd_solver.cpp and the other solvers), on torch tensors.

Each rule turns a parameter's processed gradient `g` (accumulated, clipped, divided by iter_size, plus weight
decay) into the step that Net::Update subtracts, keeping Caffe's arithmetic: e.g. SGD's history is
`momentum*history + local_rate*g`, with the rate INSIDE the history (not torch.optim.SGD's form).  A rule owns its
history tensors, in the order Caffe saves them in a .solverstate.
"""
from __future__ import annotations

import math

import torch

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2
from caffelike.train.powx import powx

RULES: dict[str, type["UpdateRule"]] = {}


def rule(name: str):
    def deco(cls):
        RULES[name] = cls
        cls.type_name = name
        return cls
    return deco


class UpdateRule:
    """History per parameter: `histories_per_param` tensors each, saved as all first histories, then all second.

    `step` works on a group of parameters that share one local rate, with torch's `_foreach_*` ops: one call per
    operation for the whole group instead of one per tensor, and each element goes through the same float
    operations, in the same order, as Caffe's per-blob code (no fused multiply-adds that would round differently).
    """
    type_name = ""
    histories_per_param = 1

    def __init__(self, param: caffe_pb2.SolverParameter, params: list[torch.Tensor]):
        self.p = param
        self.history = [torch.zeros_like(t) for _ in range(self.histories_per_param) for t in params]
        self.n = len(params)

    def histories(self, indices: list[int], which: int = 0) -> list[torch.Tensor]:
        return [self.history[i + which * self.n] for i in indices]

    def step(self, indices: list[int], grads: list[torch.Tensor], local_rate: float, it: int) -> list[torch.Tensor]:
        """The values Net::Update subtracts from parameters `indices`, given their processed gradients."""
        raise NotImplementedError


def _squares(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return torch._foreach_mul(grads, grads)


def _scaled_by_root(grads, h, delta: float, local_rate: float) -> list[torch.Tensor]:
    """g / (sqrt(h) + delta) * rate, the step shared by AdaGrad and RMSProp."""
    root = torch._foreach_sqrt(h)
    torch._foreach_add_(root, delta)
    out = torch._foreach_div(grads, root)
    torch._foreach_mul_(out, local_rate)
    return out


@rule("SGD")
class SGD(UpdateRule):
    def step(self, indices, grads, local_rate, it):
        v = self.histories(indices)
        torch._foreach_mul_(v, self.p.momentum)
        torch._foreach_add_(v, grads, alpha=local_rate)
        return v


@rule("Nesterov")
class Nesterov(UpdateRule):
    def step(self, indices, grads, local_rate, it):
        m = self.p.momentum
        v = self.histories(indices)
        previous = torch._foreach_mul(v, m)
        torch._foreach_mul_(v, m)
        torch._foreach_add_(v, grads, alpha=local_rate)
        out = torch._foreach_mul(v, 1 + m)
        torch._foreach_sub_(out, previous)
        return out


@rule("AdaGrad")
class AdaGrad(UpdateRule):
    def step(self, indices, grads, local_rate, it):
        h = self.histories(indices)
        torch._foreach_add_(h, _squares(grads))
        return _scaled_by_root(grads, h, self.p.delta, local_rate)


@rule("RMSProp")
class RMSProp(UpdateRule):
    def step(self, indices, grads, local_rate, it):
        h = self.histories(indices)
        torch._foreach_mul_(h, self.p.rms_decay)
        torch._foreach_add_(h, _squares(grads), alpha=1 - self.p.rms_decay)
        return _scaled_by_root(grads, h, self.p.delta, local_rate)


@rule("AdaDelta")
class AdaDelta(UpdateRule):
    histories_per_param = 2

    def step(self, indices, grads, local_rate, it):
        m, delta = self.p.momentum, self.p.delta
        hg, hd = self.histories(indices, 0), self.histories(indices, 1)
        # Caffe squares and takes roots here with caffe_powx (the C library's powf), not x*x and sqrt
        torch._foreach_mul_(hg, m)
        torch._foreach_add_(hg, [powx(g, 2) for g in grads], alpha=1 - m)
        num = torch._foreach_add(hd, delta)
        den = torch._foreach_add(hg, delta)
        ratio = [powx(r, 0.5) for r in torch._foreach_div(num, den)]
        update = torch._foreach_mul(grads, ratio)
        torch._foreach_mul_(hd, m)
        torch._foreach_add_(hd, [powx(u, 2) for u in update], alpha=1 - m)
        torch._foreach_mul_(update, local_rate)
        return update


@rule("Adam")
class Adam(UpdateRule):
    histories_per_param = 2

    def step(self, indices, grads, local_rate, it):
        b1, b2 = self.p.momentum, self.p.momentum2
        m, v = self.histories(indices, 0), self.histories(indices, 1)
        t = it + 1
        try:
            correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        except (ValueError, OverflowError, ZeroDivisionError):
            # caffelike.train.validate refuses such values up front; a SolverParameter changed after it ran ends here
            raise CaffeError(f"Adam solver: the bias correction sqrt(1 - momentum2^t) / (1 - momentum^t) at t = {t} "
                             f"is not a number for momentum {b1:g} and momentum2 {b2:g} (both must be in [0, 1))") \
                from None
        torch._foreach_mul_(m, b1)
        torch._foreach_add_(m, grads, alpha=1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_add_(v, _squares(grads), alpha=1 - b2)
        root = torch._foreach_sqrt(v)
        torch._foreach_add_(root, self.p.delta)
        out = torch._foreach_div(m, root)
        torch._foreach_mul_(out, local_rate * correction)
        return out


def make_rule(param: caffe_pb2.SolverParameter, params: list[torch.Tensor]) -> UpdateRule:
    if param.type not in RULES:
        raise CaffeError(f"Unknown solver type: {param.type!r} (known types: {', '.join(RULES)})")
    return RULES[param.type](param, params)
