"""Caffe's caffe_powx (y = std::pow(x, p) in float, element by element) on torch tensors.

std::pow(float, float) is the C library's powf, and glibc's powf is not correctly rounded: it evaluates
x^p in double with an error near 2^-33 and rounds that to float, so where the true x^p lies within about
1/500 of a float step from the midpoint between two floats it may round the other way than x*x or
sqrt(x) do.  Over a LeNet run a few hundred such elements per step are enough to move AdaDelta's loss in
the fourth digit after some tens of iterations.

So: the correctly rounded result is computed for every element (in float64, where x*x is exact and
sqrt is accurate far beyond float), and the elements whose true value lies near a float midpoint, about
1.5% of them, are recomputed by the platform's own powf, the function Caffe calls.  Where no C library
powf can be loaded, or for tensors on a GPU (Caffe's GPU path calls CUDA's powf, a third rounding),
the correctly rounded result stands.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

NEAR = 2.0 ** -7  # in float steps; glibc's powf was seen to misround up to 2^-9.4 steps from a midpoint


@functools.lru_cache(maxsize=None)
def libc_powf():
    """The C library's powf, or None where it cannot be loaded."""
    name = ctypes.util.find_library("m") or ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).powf
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float, ctypes.c_float]
    return fn


def _near_midpoint(precise: torch.Tensor) -> torch.Tensor:
    """Where the float64 value `precise` lies within NEAR float steps of a midpoint between two floats.

    In float32's normal range a float keeps the top 23 of a double's 52 fraction bits, so the midpoints are the
    doubles whose 29 dropped bits read 1000...0; below it (subnormal results) every non-zero value is taken."""
    dropped = precise.view(torch.int64) & ((1 << 29) - 1)
    near = (dropped - (1 << 28)).abs() < int(NEAR * (1 << 29))
    size = precise.abs()
    normal = (size >= 2.0 ** -126) & (size < 2.0 ** 128)
    return torch.where(normal, near, (size > 0) & (size < 2.0 ** -126))


def powx(x: torch.Tensor, p: float) -> torch.Tensor:
    """caffe_powx(x, p) for p = 2 or 0.5 (the powers Caffe's solvers take): a new float32 tensor."""
    if p == 2:
        precise = x.double() * x.double()
    elif p == 0.5:
        precise = torch.sqrt(x.double())
    else:
        raise ValueError(f"powx: only the powers 2 and 0.5 are supported, got {p}")
    out = precise.float()
    powf = libc_powf()
    if powf is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return out
    flat, flat_out = x.reshape(-1), out.view(-1)
    where = _near_midpoint(precise).reshape(-1).nonzero().flatten()
    if len(where):
        values = [powf(v, p) for v in flat[where].tolist()]
        flat_out[where] = torch.tensor(values, dtype=torch.float32)
    return out
