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

RULES: dict[str, type["UpdateRule"]] = {}


def rule(name: str):
    def deco(cls):
        RULES[name] = cls
        cls.type_name = name
        return cls
    return deco


class UpdateRule:
    """History per parameter: `histories_per_param` tensors each, saved as all first histories, then all second."""
    type_name = ""
    histories_per_param = 1

    def __init__(self, param: caffe_pb2.SolverParameter, params: list[torch.Tensor]):
        self.p = param
        self.check()
        self.history = [torch.zeros_like(t) for _ in range(self.histories_per_param) for t in params]
        self.n = len(params)

    def check(self) -> None:
        pass

    def step(self, i: int, g: torch.Tensor, local_rate: float, it: int) -> torch.Tensor:
        raise NotImplementedError


@rule("SGD")
class SGD(UpdateRule):
    def step(self, i, g, local_rate, it):
        v = self.history[i]
        v.mul_(self.p.momentum).add_(g, alpha=local_rate)
        return v


@rule("Nesterov")
class Nesterov(UpdateRule):
    def step(self, i, g, local_rate, it):
        v = self.history[i]
        previous = v.clone()
        v.mul_(self.p.momentum).add_(g, alpha=local_rate)
        return v * (1 + self.p.momentum) - previous * self.p.momentum


@rule("AdaGrad")
class AdaGrad(UpdateRule):
    def check(self):
        if self.p.momentum != 0:
            raise CaffeError("AdaGrad solver: momentum cannot be used with AdaGrad (set momentum: 0)")

    def step(self, i, g, local_rate, it):
        h = self.history[i]
        h.add_(g * g)
        return g / (h.sqrt() + self.p.delta) * local_rate


@rule("RMSProp")
class RMSProp(UpdateRule):
    def check(self):
        if self.p.momentum != 0:
            raise CaffeError("RMSProp solver: momentum cannot be used with RMSProp (set momentum: 0)")
        if not 0 <= self.p.rms_decay < 1:
            raise CaffeError(f"RMSProp solver: rms_decay must be in [0, 1), got {self.p.rms_decay}")

    def step(self, i, g, local_rate, it):
        h = self.history[i]
        h.mul_(self.p.rms_decay).add_(g * g, alpha=1 - self.p.rms_decay)
        return g / (h.sqrt() + self.p.delta) * local_rate


@rule("AdaDelta")
class AdaDelta(UpdateRule):
    histories_per_param = 2

    def step(self, i, g, local_rate, it):
        m, delta = self.p.momentum, self.p.delta
        hg, hd = self.history[i], self.history[i + self.n]
        hg.mul_(m).add_(g * g, alpha=1 - m)
        update = g * ((hd + delta) / (hg + delta)).sqrt()
        hd.mul_(m).add_(update * update, alpha=1 - m)
        return update * local_rate


@rule("Adam")
class Adam(UpdateRule):
    histories_per_param = 2

    def step(self, i, g, local_rate, it):
        b1, b2 = self.p.momentum, self.p.momentum2
        m, v = self.history[i], self.history[i + self.n]
        t = it + 1
        correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).add_(g * g, alpha=1 - b2)
        return m / (v.sqrt() + self.p.delta) * (local_rate * correction)


def make_rule(param: caffe_pb2.SolverParameter, params: list[torch.Tensor]) -> UpdateRule:
    if param.type not in RULES:
        raise CaffeError(f"Unknown solver type: {param.type!r} (known types: {', '.join(RULES)})")
    return RULES[param.type](param, params)
