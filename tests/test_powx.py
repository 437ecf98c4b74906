"""caffe_powx: the C library's powf, element for element, where Caffe's solvers square and take roots."""
import platform

import numpy as np
import pytest
import torch

from caffelike.proto import caffe_pb2
from caffelike.train.powx import libc_powf, powx
from caffelike.train.updates import make_rule

powf = libc_powf()
needs_powf = pytest.mark.skipif(powf is None, reason="no C library powf to compare with")


def libm(values: np.ndarray, p: float) -> np.ndarray:
    """The reference: the C library's powf called on every element."""
    return np.array([powf(float(v), p) for v in values.ravel()], np.float32).reshape(values.shape)


def wide_floats(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp2(rng.integers(-70, 70, n))).astype(np.float32)
    x[: n // 5] = np.round(x[: n // 5] * 4096) / 4096  # few mantissa bits: exact squares and ties
    return x


@needs_powf
@pytest.mark.parametrize("p", [2.0, 0.5], ids=["square", "root"])
def test_powx_is_the_c_librarys_powf_element_for_element(p):
    x = wide_floats(200_000, seed=3)
    x = np.abs(x) if p == 0.5 else x
    assert np.array_equal(powx(torch.from_numpy(x), p).numpy(), libm(x, p))


@needs_powf
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's powf is the one known to round this way")
def test_glibcs_powf_is_not_x_times_x():
    # 1 + 2^-12 squared is exactly halfway between two floats: x*x rounds to even, powf need not
    x = wide_floats(200_000, seed=4)
    with np.errstate(over="ignore"):
        assert (powx(torch.from_numpy(x), 2.0).numpy() != x * x).sum() > 0


@needs_powf
def test_adadelta_squares_and_roots_with_powf_bit_for_bit():
    """AdaDelta's ComputeUpdateValue, op for op as Caffe runs it (powx for squares and roots, axpby as a scale
    then an axpy), against the grouped rule on 60,000 weights over three steps."""
    p = caffe_pb2.SolverParameter(type="AdaDelta", momentum=0.95, delta=1e-6)
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(40_000, generator=gen), torch.randn(100, 200, generator=gen)]
    rule = make_rule(p, params)
    hist = [[torch.zeros_like(t), torch.zeros_like(t)] for t in params]
    m, delta, rate = p.momentum, p.delta, 0.7
    for it in range(3):
        grads = [(torch.randn(t.shape, generator=gen) * 1e-2).round(decimals=4) for t in params]
        got = rule.step([0, 1], [g.clone() for g in grads], rate, it)
        for i, g in enumerate(grads):
            hg, hd = hist[i]
            hg.mul_(m).add_(torch.from_numpy(libm(g.numpy(), 2.0)), alpha=1 - m)
            ratio = torch.from_numpy(libm(((hd + delta) / (hg + delta)).numpy(), 0.5))
            update = g * ratio
            hd.mul_(m).add_(torch.from_numpy(libm(update.numpy(), 2.0)), alpha=1 - m)
            assert torch.equal(got[i], update * rate), (it, i)
