"""Caffe's weight fillers (include/caffe/filler.hpp), drawing from torch's seeded CPU generator.

Random values cannot match Caffe's boost RNG draw for draw; distributions, fan-in/fan-out rules and the
deterministic fillers (constant, bilinear) do match.
"""
from __future__ import annotations

import math

import torch

from caffelike.errors import LayerError
from caffelike.proto import caffe_pb2

_NORM = caffe_pb2.FillerParameter


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's fan_in = count/shape[0] and fan_out = count/shape[1] (count for a 1-D blob)."""
    n = math.prod(shape)
    fan_in = n // shape[0] if shape and shape[0] else n
    fan_out = n // shape[1] if len(shape) > 1 and shape[1] else n
    return fan_in, fan_out


def _scale_base(shape: tuple[int, ...], p: caffe_pb2.FillerParameter) -> float:
    fan_in, fan_out = fans(shape)
    if p.variance_norm == _NORM.FAN_OUT:
        return fan_out
    if p.variance_norm == _NORM.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(shape: tuple[int, ...], p: caffe_pb2.FillerParameter) -> torch.Tensor:
    """A new float32 tensor of `shape` filled as FillerParameter `p` says."""
    kind = p.type
    if kind == "constant":
        return torch.full(shape, p.value)
    if kind == "uniform":
        return torch.empty(shape).uniform_(p.min, p.max)
    if kind == "gaussian":
        out = torch.empty(shape).normal_(p.mean, p.std)
        if p.sparse >= 0:
            if not shape:
                raise LayerError("gaussian filler with sparse needs a blob with at least one axis")
            keep = min(1.0, p.sparse / shape[0])
            out *= torch.bernoulli(torch.full(shape, keep))
        return out
    if kind == "positive_unitball":
        out = torch.rand(shape)
        rows = out.reshape(shape[0] if shape else 1, -1)
        rows /= rows.sum(dim=1, keepdim=True)
        return out
    if kind == "xavier":
        bound = math.sqrt(3.0 / _scale_base(shape, p))
        return torch.empty(shape).uniform_(-bound, bound)
    if kind == "msra":
        return torch.empty(shape).normal_(0.0, math.sqrt(2.0 / _scale_base(shape, p)))
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise LayerError(f"bilinear filler needs a 4-D blob with a square kernel, got shape {shape}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (k - 1) / (2.0 * f)
        axis = 1 - (torch.arange(k, dtype=torch.float64) / f - c).abs()
        kernel = (axis[:, None] * axis[None, :]).float()
        return kernel.expand(shape).clone()
    raise LayerError(f"Unknown filler name: {kind!r} (known: constant, uniform, gaussian, positive_unitball, "
                     "xavier, msra, bilinear)")
