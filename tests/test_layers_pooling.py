"""Pooling against Caffe's loops (pooling_layer.cpp) written in NumPy: MAX and AVE with padding, ceil/floor
rounding and the pad clip, torch's own pooling path and the explicitly padded one, the mask top, global pooling,
gradients and errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from caffelike.layers.vision import pooled_size
from helpers import assert_blob_close, check_gradient, make_layer
from test_layers_vision import FLT_MAX, one_thread, pool_text, rng, run  # noqa: F401 (one_thread: an autouse fixture)

from caffelike.errors import LayerError


def np_pool(x, method, kernel, stride, pad, ceil=True):
    """Caffe's Forward_cpu loops for MAX (value and argmax mask) and AVE, vectorised over N and C."""
    _, _, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    rounding = math.ceil if ceil else math.floor
    oh = int(rounding((height + 2 * ph - kh) / sh)) + 1
    ow = int(rounding((width + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        oh -= (oh - 1) * sh >= height + ph
        ow -= (ow - 1) * sw >= width + pw
    y = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
    mask = np.full(y.shape, -1.0, x.dtype)
    for i, j in itertools.product(range(oh), range(ow)):
        hs, ws = i * sh - ph, j * sw - pw
        if method == "MAX":
            he, we = min(hs + kh, height), min(ws + kw, width)
            best = np.full(x.shape[:2], -FLT_MAX, x.dtype)
            where = np.full(x.shape[:2], -1.0, x.dtype)
            for h, w in itertools.product(range(max(hs, 0), he), range(max(ws, 0), we)):
                better = x[:, :, h, w] > best
                best = np.where(better, x[:, :, h, w], best)
                where = np.where(better, h * width + w, where)
            y[:, :, i, j], mask[:, :, i, j] = best, where
        else:
            he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
            size = (he - hs) * (we - ws)
            total = x[:, :, max(hs, 0):min(he, height), max(ws, 0):min(we, width)].sum(axis=(2, 3))
            with np.errstate(invalid="ignore"):
                y[:, :, i, j] = total / size
    return y, mask


POOL_CASES = {
    # id: (fields, bottom H, W, kernel, stride, pad, ceil, expected pooled (h, w))
    "max_k3_s2_p1_H6": ("pool: MAX kernel_size: 3 stride: 2 pad: 1", 6, 6, (3, 3), (2, 2), (1, 1), True, (4, 4)),
    "ave_k3_s2_p1_H6": ("pool: AVE kernel_size: 3 stride: 2 pad: 1", 6, 6, (3, 3), (2, 2), (1, 1), True, (4, 4)),
    "ave_ceil_k3_s2_H8": ("pool: AVE kernel_size: 3 stride: 2", 8, 8, (3, 3), (2, 2), (0, 0), True, (4, 4)),
    "max_clip_rule_k3_s2_p2_H4": ("pool: MAX kernel_size: 3 stride: 2 pad: 2", 4, 4, (3, 3), (2, 2), (2, 2), True,
                                  (3, 3)),
    "ave_clip_rule_k3_s3_p2_H6": ("pool: AVE kernel_size: 3 stride: 3 pad: 2", 6, 6, (3, 3), (3, 3), (2, 2), True,
                                  (3, 3)),
    "ave_pad_beyond_half_k3_p2": ("pool: AVE kernel_size: 3 stride: 1 pad: 2", 5, 4, (3, 3), (1, 1), (2, 2), True,
                                  (7, 6)),
    "max_pad_beyond_half_k3_p2": ("pool: MAX kernel_size: 3 stride: 1 pad: 2", 5, 4, (3, 3), (1, 1), (2, 2), True,
                                  (7, 6)),
    "max_floor": ("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", 6, 7, (3, 3), (2, 2), (0, 0), False,
                  (2, 3)),
    "ave_floor_pad": ("pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", 6, 6, (3, 3), (2, 2), (1, 1),
                      False, (3, 3)),
    "max_hw_spellings": ("pool: MAX kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0", 5, 7,
                         (2, 3), (1, 2), (1, 0), True, (6, 3)),
    # kernel < stride without pad: Caffe keeps a window starting past the edge (torch's ceil_mode would not).
    "max_kernel_below_stride": ("pool: MAX kernel_size: 1 stride: 3", 5, 5, (1, 1), (3, 3), (0, 0), True, (3, 3)),
    "ave_kernel_below_stride": ("pool: AVE kernel_size: 1 stride: 2", 4, 5, (1, 1), (2, 2), (0, 0), True, (3, 3)),
    # Any pad turns the clip rule on for both axes: W=5, k1, s3 gives 3 without pad but 2 with pad_h 1.
    "ave_pad_h_only_clips_w": ("pool: AVE kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride: 3", 4, 5, (3, 1),
                               (3, 3), (1, 0), True, (2, 2)),
    "max_kernel_wider_than_input": ("pool: MAX kernel_size: 5 stride: 3", 3, 4, (5, 5), (3, 3), (0, 0), True,
                                    (1, 1)),
}


@pytest.mark.parametrize("with_mask", [False, True], ids=["one_top", "mask_top"])
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pooling_matches_caffe_loops(name, with_mask):
    """With one top, torch's own pooling runs wherever it places Caffe's windows; with the mask top (MAX only),
    the explicitly padded path always does: both must give Caffe's loops."""
    fields, height, width, kernel, stride, pad, ceil, pooled = POOL_CASES[name]
    method = "MAX" if "MAX" in fields else "AVE"
    if with_mask and method != "MAX":
        pytest.skip("only MAX pooling has a mask top")
    tops = 2 if with_mask else 1
    layer = make_layer(pool_text(fields, tops), [(2, 3, height, width)])
    x = rng(8).standard_normal((2, 3, height, width))
    expected, mask = np_pool(x, method, kernel, stride, pad, ceil)
    assert expected.shape[2:] == pooled
    got = run(layer, x)
    assert_blob_close(got[0], expected, rtol=1e-12, atol=1e-12, name="top")
    if with_mask:
        assert_blob_close(got[1], mask, name="mask")
    assert layer.infer_top_shapes([(2, 3, height, width)])[0] == (2, 3) + pooled
    assert pooled_size(height, kernel[0], pad[0], stride[0], ceil, pad != (0, 0)) == pooled[0]


def test_pooling_degenerate_windows_follow_caffe():
    # Last row/column windows start at 4 == H: MAX gives -FLT_MAX with mask -1, AVE gives 0 / 0.
    x = np.ones((1, 1, 4, 4))
    mx, mask = run(make_layer(pool_text("pool: MAX kernel_size: 1 stride: 2", 2), [x.shape]), x)
    assert mx[0, 0, 2, 2].item() == -FLT_MAX and mask[0, 0, 2, 0].item() == -1 and mask[0, 0, 1, 1].item() == 10
    (ave,) = run(make_layer(pool_text("pool: AVE kernel_size: 1 stride: 2"), [x.shape]), x)
    assert torch.isnan(ave[0, 0, 2, 0]) and ave[0, 0, 1, 1].item() == 1.0


def test_pooling_caffe_test_forward_ave():
    """src/caffe/test/test_pooling_layer.cpp TestForwardAve: 3x3 of 2's, kernel 3, stride 1, pad 1."""
    layer = make_layer(pool_text("pool: AVE kernel_size: 3 stride: 1 pad: 1"), [(1, 1, 3, 3)])
    (y,) = run(layer, np.full((1, 1, 3, 3), 2.0, np.float32))
    expected = np.array([[8 / 9, 4 / 3, 8 / 9], [4 / 3, 2, 4 / 3], [8 / 9, 4 / 3, 8 / 9]], np.float32)
    assert_blob_close(y[0, 0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 1, 4)], ids=["5x7", "1x4"])
def test_pooling_global_non_square(method, shape):
    layer = make_layer(pool_text(f"pool: {method} global_pooling: true"), [shape])
    x = rng(9).standard_normal(shape)
    (y,) = run(layer, x)
    reduce = np.max if method == "MAX" else np.mean
    assert_blob_close(y, reduce(x, axis=(2, 3), keepdims=True), rtol=1e-12, atol=1e-12)
    # The kernel follows the bottom at every forward, as Caffe's Reshape re-reads it.
    (y2,) = run(layer, x[:, :, :1, :3])
    assert_blob_close(y2, reduce(x[:, :, :1, :3], axis=(2, 3), keepdims=True), rtol=1e-12, atol=1e-12)


def test_pooling_max_first_maximum_wins_and_padding_never_does():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 5.0  # a tie inside the first 2x2 window
    layer = make_layer(pool_text("pool: MAX kernel_size: 2 stride: 2", 2), [x.shape])
    xt = torch.as_tensor(x).requires_grad_()
    y, mask = layer(xt)
    assert mask[0, 0, 0, 0].item() == 1.0, "row-major first maximum (0, 1) wins the tie"
    y.sum().backward()
    assert xt.grad[0, 0, 0, 1] == 1 and xt.grad[0, 0, 1, 0] == 0
    negative = -np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    padded = make_layer(pool_text("pool: MAX kernel_size: 3 stride: 1 pad: 1"), [negative.shape])
    (y,) = run(padded, negative)
    assert y.max().item() == -1.0 and y[0, 0, 2, 2].item() == -5.0, "zero padding must not win over negatives"


@pytest.mark.parametrize("name", ["max_k3_s2_p1_H6", "max_pad_beyond_half_k3_p2", "ave_k3_s2_p1_H6",
                                  "ave_clip_rule_k3_s3_p2_H6", "ave_pad_beyond_half_k3_p2"])
def test_pooling_gradient(name):
    fields, height, width, *_ = POOL_CASES[name]
    shape = (2, 2, height, width)
    # Distinct values 0.01 apart, so the finite-difference step never changes which element is the maximum.
    x = (rng(10).permutation(math.prod(shape)) * 0.01).reshape(shape)
    check_gradient(make_layer(pool_text(fields), [shape]), [x])


POOL_ERRORS = [
    ("stochastic", "pool: STOCHASTIC kernel_size: 2", (1, 1, 4, 4), "STOCHASTIC is not implemented"),
    ("three_axes", "kernel_size: 2", (1, 4, 4), r'bottom "x" has 3 axes, Pooling needs 4 \(N, C, H, W\)'),
    ("no_kernel", "stride: 2", (1, 1, 4, 4), "kernel_size, or both kernel_h and kernel_w, must be given"),
    ("kernel_both_spellings", "kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 1, 4, 4),
     "either kernel_size or kernel_h/kernel_w"),
    ("kernel_h_alone", "kernel_h: 2", (1, 1, 4, 4), "kernel_h and kernel_w must both be given"),
    ("kernel_zero", "kernel_size: 0", (1, 1, 4, 4), r"kernel size must be > 0, got \[0, 0\]"),
    ("pad_both_spellings", "kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", (1, 1, 4, 4), "either pad or pad_h/pad_w"),
    ("pad_w_alone", "kernel_size: 3 pad_w: 1", (1, 1, 4, 4), "pad_h and pad_w must both be given"),
    ("stride_both_spellings", "kernel_size: 3 stride: 1 stride_h: 1 stride_w: 1", (1, 1, 4, 4),
     "either stride or stride_h/stride_w"),
    ("stride_zero", "kernel_size: 3 stride: 0", (1, 1, 4, 4), r"stride must be > 0, got \[0, 0\]"),
    ("pad_not_below_kernel", "kernel_size: 3 pad: 3", (1, 1, 4, 4), "pad_h 3 must be smaller than kernel_h 3"),
    ("pad_w_not_below_kernel_w", "kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 2", (1, 1, 4, 4),
     "pad_w 2 must be smaller than kernel_w 2"),
    ("global_with_kernel", "global_pooling: true kernel_size: 2", (1, 1, 4, 4), "must not be given"),
    ("global_with_pad", "global_pooling: true pad: 1", (1, 1, 4, 4), "only pad 0 and stride 1"),
    ("global_with_stride", "global_pooling: true stride: 2", (1, 1, 4, 4), "only pad 0 and stride 1"),
]


@pytest.mark.parametrize("fields,shape,message", [c[1:] for c in POOL_ERRORS], ids=[c[0] for c in POOL_ERRORS])
def test_pooling_errors(fields, shape, message):
    with pytest.raises(LayerError, match=r'Pooling layer "p": .*' + message):
        make_layer(pool_text(fields), [shape])


def test_pooling_errors_of_tops_and_shapes():
    with pytest.raises(LayerError, match="only MAX pooling has a second top .* for AVE"):
        make_layer(pool_text("pool: AVE kernel_size: 2", tops=2), [(1, 1, 4, 4)])
    with pytest.raises(LayerError, match="takes at most 2 top blobs, got 3"):
        make_layer(pool_text("kernel_size: 2", tops=3), [(1, 1, 4, 4)])
    floor = make_layer(pool_text("kernel_size: 5 round_mode: FLOOR stride: 3"), [(1, 1, 3, 3)])
    with pytest.raises(LayerError, match=r"pooled output \(0, 0\) is empty"):
        floor.infer_top_shapes([(1, 1, 3, 3)])
    layer = make_layer(pool_text("kernel_size: 2"), [(1, 1, 4, 4)])
    with pytest.raises(LayerError, match="has 5 axes, Pooling needs 4"):
        layer(torch.zeros(1, 1, 1, 4, 4))


