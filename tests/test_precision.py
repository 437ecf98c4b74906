"""Opt-in mixed precision: autocast training keeps float32 weights and Caffe's update arithmetic, tracks the
float32 run closely, and float16's dynamic loss scaling skips overflowing iterations."""
import math

import pytest
import torch
from helpers import lenet_train_solver

from caffelike.errors import CaffeError
from caffelike.train.precision import MixedPrecision


def lenet_solver(precision: str):
    solver = lenet_train_solver(16)
    solver.set_precision(precision)
    return solver


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_tracks_float32(precision):
    start = [e.param.detach().clone() for e in lenet_solver("fp32").net.learnable]
    reference, mixed = lenet_solver("fp32"), lenet_solver(precision)
    if precision == "fp16":  # the default 2**16 overflows LeNet's first backward (skipped, as it should be)
        mixed.precision = MixedPrecision("fp16", "cpu", init_scale=1024.0)
    reference.step(4)
    mixed.step(4)
    assert mixed.net.blobs["conv1"].tensor.dtype == (torch.bfloat16 if precision == "bf16" else torch.float16)
    for a, b, a0 in zip(reference.net.learnable, mixed.net.learnable, start):
        assert b.param.dtype == torch.float32 and b.param.grad.dtype == torch.float32
        moved_ref = (a.param - a0).norm()
        assert (b.param - a.param).norm() <= 0.1 * moved_ref + 1e-6, (a.layer, a.index)
    losses = [v for _, v in mixed.history["train"]["loss"]]
    assert all(math.isfinite(v) for v in losses)
    assert mixed.precision.skipped == 0


def test_fp16_overflow_skips_the_update_and_lowers_the_scale():
    scaler = MixedPrecision("fp16", init_scale=1024.0, growth_interval=2)
    grads = [torch.tensor([2048.0, 1024.0]), torch.tensor([float("inf")])]
    assert not scaler.unscale(grads, 7)
    assert scaler.scale == 512.0 and scaler.skipped == 1 and all((g == 0).all() for g in grads)
    grads = [torch.tensor([512.0, 256.0])]
    assert scaler.unscale(grads, 8) and torch.equal(grads[0], torch.tensor([1.0, 0.5]))
    assert scaler.unscale([torch.ones(1)], 9) and scaler.scale == 1024.0  # two good steps: the scale grows


def test_fp32_is_untouched_and_unknown_names_fail():
    scaler = MixedPrecision("fp32")
    g = [torch.tensor([3.0])]
    assert scaler.unscale(g, 0) and g[0].item() == 3.0 and scaler.scaled(torch.tensor(2.0)).item() == 2.0
    with pytest.raises(CaffeError, match="unknown precision 'fp8'"):
        MixedPrecision("fp8")


def test_bfloat16_blobs_read_as_locked_float32():
    solver = lenet_solver("bf16")
    solver.step(1)
    data = solver.net.blobs["conv1"].data
    assert data.dtype == "float32" and data.shape == (16, 20, 24, 24)
    with pytest.raises(ValueError):
        data[...] = 0
