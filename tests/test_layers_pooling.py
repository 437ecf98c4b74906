"""Pooling against Caffe's loops (pooling_layer.cpp) written in NumPy: MAX and AVE with padding, ceil/floor
rounding and the pad clip, torch's own pooling path and the explicitly padded one, the mask top, global pooling,
gradients and errors; STOCHASTIC against the loops of Caffe's GPU kernels (pooling_layer.cu), its sampling
statistics and gradient routing, and a net that uses it."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from caffelike.layers.pooling import pooled_size
from caffelike.proto import caffe_pb2
from helpers import assert_blob_close, check_gradient, make_layer
from test_layers_vision import FLT_MAX, one_thread, pool_text, rng, run  # noqa: F401 (one_thread: an autouse fixture)

import caffelike as caffe
from caffelike.errors import LayerError
from caffelike.format.prototxt import parse_net

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
set_random_seed = caffe.set_random_seed


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
    ("stochastic_pad", "pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 4, 4),
     r"padding is implemented only for MAX and AVE pooling, got pad \[1, 1\] with pool: STOCHASTIC"),
    ("stochastic_pad_w", "pool: STOCHASTIC kernel_size: 3 pad_h: 0 pad_w: 2", (1, 1, 4, 4),
     r"padding is implemented only for MAX and AVE pooling, got pad \[0, 2\] with pool: STOCHASTIC"),
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




# ======================================================================================================= STOCHASTIC
FLT_MIN = float(np.finfo(np.float32).tiny)


def np_stochastic(x, kernel, stride, ceil=True, uniforms=None):
    """The loops of Caffe's StoPoolForwardTest (uniforms None) or StoPoolForwardTrain (one uniform per window):
    windows start at i * stride and are clipped to the bottom.  TRAIN returns the top and the chosen flat index
    h * W + w per window (-1 where the walk never reaches the threshold)."""
    _, _, height, width = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    rounding = math.ceil if ceil else math.floor
    oh = int(rounding((height - kh) / sh)) + 1
    ow = int(rounding((width - kw) / sw)) + 1
    y = np.zeros(x.shape[:2] + (oh, ow), x.dtype)
    chosen = np.full(y.shape, -1)
    for n, c, i, j in itertools.product(*(range(d) for d in y.shape)):
        rows, cols = range(i * sh, min(i * sh + kh, height)), range(j * sw, min(j * sw + kw, width))
        cells = list(itertools.product(rows, cols))
        if uniforms is None:
            total, squares = x.dtype.type(FLT_MIN), x.dtype.type(0)
            for h, w in cells:
                total += x[n, c, h, w]
                squares += x[n, c, h, w] * x[n, c, h, w]
            y[n, c, i, j] = squares / total
            continue
        total = x.dtype.type(0)
        for h, w in cells:
            total += x[n, c, h, w]
        threshold = uniforms[n, c, i, j] * total
        running = x.dtype.type(0)
        for h, w in cells:
            running += x[n, c, h, w]
            if running >= threshold:
                y[n, c, i, j], chosen[n, c, i, j] = x[n, c, h, w], h * width + w
                break
    return y, chosen


def np_windows(x, kernel, stride, pooled):
    """Each window's values (clipped to the bottom) as a list per (n, c, i, j)."""
    (kh, kw), (sh, sw) = kernel, stride
    return {(n, c, i, j): x[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw].ravel()
            for n, c, i, j in itertools.product(*(range(d) for d in x.shape[:2] + pooled))}


STOCHASTIC_CASES = {
    # id: (fields, bottom H, W, kernel, stride, ceil, expected pooled (h, w))
    "k3_s2_ceil_partial_border": ("kernel_size: 3 stride: 2", 6, 7, (3, 3), (2, 2), True, (3, 3)),
    "k2_s2_partial_border": ("kernel_size: 2 stride: 2", 5, 5, (2, 2), (2, 2), True, (3, 3)),
    "k3_s1_overlapping": ("kernel_size: 3", 4, 5, (3, 3), (1, 1), True, (2, 3)),
    "hw_spellings": ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", 5, 8, (2, 3), (1, 2), True, (4, 4)),
    "floor_drops_partial": ("kernel_size: 3 stride: 2 round_mode: FLOOR", 6, 7, (3, 3), (2, 2), False, (2, 3)),
    "kernel_wider_than_input": ("kernel_size: 5 stride: 3", 3, 4, (5, 5), (3, 3), True, (1, 1)),
    # kernel < stride: Caffe's ceil keeps a last window that starts past the edge and holds nothing.
    "window_beyond_edge": ("kernel_size: 1 stride: 3", 5, 4, (1, 1), (3, 3), True, (3, 2)),
}


def stochastic_layer(fields, shape, phase):
    return make_layer(pool_text("pool: STOCHASTIC " + fields), [shape], phase)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(STOCHASTIC_CASES))
def test_stochastic_test_phase_matches_caffe_kernel(name, dtype):
    """TEST: sum(x^2) / (FLT_MIN + sum(x)) over each window, an empty window beyond the edge giving 0."""
    fields, height, width, kernel, stride, ceil, pooled = STOCHASTIC_CASES[name]
    shape = (2, 3, height, width)
    layer = stochastic_layer(fields, shape, TEST)
    x = rng(20).uniform(0.0, 2.0, shape).astype(dtype)
    x[0, 0] = 0.0  # all-zero windows: 0, not 0 / 0
    expected, _ = np_stochastic(x, kernel, stride, ceil)
    assert expected.shape[2:] == pooled
    (got,) = run(layer, x)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert_blob_close(got, expected, rtol=tol, atol=tol)
    assert not got[0, 0].any()
    assert layer.infer_top_shapes([shape])[0] == (2, 3) + pooled


@pytest.mark.parametrize("name", ["k3_s2_ceil_partial_border", "k3_s1_overlapping", "hw_spellings"])
def test_stochastic_test_phase_gradient(name):
    fields, height, width, *_ = STOCHASTIC_CASES[name]
    shape = (2, 2, height, width)
    x = rng(21).uniform(0.5, 2.0, shape)  # window sums well away from 0
    check_gradient(stochastic_layer(fields, shape, TEST), [x])


@pytest.mark.parametrize("name", list(STOCHASTIC_CASES))
def test_stochastic_train_phase_is_caffe_walk_over_the_same_uniforms(name):
    """TRAIN draws one uniform per window (torch.rand of the top's shape, from the global generator); given the
    same uniforms, Caffe's running-sum walk picks the same elements, and the diff goes one-hot to them."""
    fields, height, width, kernel, stride, ceil, pooled = STOCHASTIC_CASES[name]
    shape = (2, 3, height, width)
    layer = stochastic_layer(fields, shape, TRAIN)
    x = rng(22).uniform(0.0, 2.0, shape)
    x[1, 1, :, ::2] = 0.0  # zeros inside windows are never picked while the threshold is positive
    xt = torch.as_tensor(x).requires_grad_()
    torch.manual_seed(5)
    got = layer(xt)
    torch.manual_seed(5)
    uniforms = torch.rand((2, 3) + pooled, dtype=torch.float64).numpy()
    expected, chosen = np_stochastic(x, kernel, stride, ceil, uniforms)
    assert_blob_close(got, expected)
    for key, values in np_windows(x, kernel, stride, pooled).items():
        if values.size == 0:  # the window beyond the edge: 0, as Caffe's TEST pass gives there
            assert got[key].item() == 0.0 and chosen[key] == -1
        else:
            assert got[key].item() in values.tolist() and chosen[key] >= 0, key
    dy = rng(29).standard_normal(got.shape)
    got.backward(torch.as_tensor(dy))
    routed = np.zeros(shape)
    for key in itertools.product(*(range(d) for d in chosen.shape)):
        if chosen[key] >= 0:
            routed[key[0], key[1]].ravel()[chosen[key]] += dy[key]
    assert_blob_close(xt.grad, routed, rtol=1e-12, atol=1e-12)


def test_stochastic_train_phase_is_reproducible_with_a_seed():
    fields, height, width, *_ = STOCHASTIC_CASES["k3_s1_overlapping"]
    shape = (4, 3, height, width)
    layer = stochastic_layer(fields, shape, TRAIN)
    x = rng(23).uniform(0.0, 1.0, shape).astype(np.float32)
    draws = []
    for seed in (11, 11, 12):
        set_random_seed(seed)
        draws.append(run(layer, x)[0])
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])
    # The shape pass (meta tensors) draws nothing.
    state = torch.get_rng_state()
    layer.infer_top_shapes([shape])
    assert torch.equal(state, torch.get_rng_state())


def test_stochastic_train_sampling_frequencies_follow_values():
    """20000 draws of one 2x3 window holding 0..5: element k comes out with probability k / 15, 0 never."""
    draws = 20000
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    x = np.broadcast_to(values, (1, draws, 2, 3)).copy()
    layer = stochastic_layer("kernel_h: 2 kernel_w: 3", x.shape, TRAIN)
    torch.manual_seed(1234)
    (y,) = run(layer, x)
    counts = np.bincount(y.numpy().ravel().astype(int), minlength=6)
    assert counts.sum() == draws and counts[0] == 0
    # Binomial standard deviations are at most 0.0035 here; 0.015 is more than four of them.
    np.testing.assert_allclose(counts / draws, np.arange(6) / 15, atol=0.015)


def test_stochastic_train_backward_routes_to_the_sampled_elements():
    """Distinct values identify the element each window picked; the bottom diff is the top diff routed there
    (summed where overlapping windows pick the same element) and zero elsewhere."""
    shape, kernel, stride, pooled = (2, 2, 7, 6), (3, 3), (2, 2), (3, 3)  # overlapping, partial border windows
    layer = stochastic_layer("kernel_size: 3 stride: 2", shape, TRAIN)
    x = torch.as_tensor((rng(24).permutation(math.prod(shape)) + 1.0).reshape(shape)).requires_grad_()
    torch.manual_seed(3)
    y = layer(x)
    dy = torch.as_tensor(rng(25).standard_normal(y.shape))
    y.backward(dy)
    expected = np.zeros(shape)
    xs = x.detach().numpy()
    for (n, c, i, j), values in np_windows(xs, kernel, stride, pooled).items():
        assert y[n, c, i, j].item() in values.tolist()
        flat = np.flatnonzero(xs[n, c] == y[n, c, i, j].item())
        assert flat.size == 1
        expected[n, c].ravel()[flat[0]] += dy[n, c, i, j].item()
    assert_blob_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    assert np.count_nonzero(x.grad.numpy()) <= y.numel()


def test_stochastic_train_all_zero_window_picks_its_first_element():
    """A zero window sum makes the threshold 0, which the running sum reaches (>=) at the window's first element:
    the top is 0 and the diff goes to each window's top-left element."""
    layer = stochastic_layer("kernel_size: 2 stride: 2", (1, 1, 4, 5), TRAIN)
    x = torch.zeros(1, 1, 4, 5, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(4)
    y = layer(x)
    assert y.shape == (1, 1, 2, 3) and not y.detach().any()
    y.backward(torch.arange(1.0, 7.0, dtype=torch.float64).reshape(y.shape))
    expected = np.zeros((1, 1, 4, 5))
    expected[0, 0, ::2, ::2] = np.arange(1.0, 7.0).reshape(2, 3)
    assert_blob_close(x.grad, expected)


@pytest.mark.parametrize("phase", [TRAIN, TEST], ids=["train", "test"])
def test_stochastic_global_pooling(phase):
    shape = (2, 3, 4, 5)
    layer = stochastic_layer("global_pooling: true", shape, phase)
    x = rng(26).uniform(0.1, 1.0, shape)
    torch.manual_seed(0)
    (y,) = run(layer, x)
    assert y.shape == (2, 3, 1, 1)
    if phase == TEST:
        assert_blob_close(y[:, :, 0, 0], (x * x).sum(axis=(2, 3)) / x.sum(axis=(2, 3)), rtol=1e-12, atol=1e-12)
    else:
        for n, c in itertools.product(range(2), range(3)):
            assert y[n, c, 0, 0].item() in x[n, c].ravel().tolist()


STOCHASTIC_NET = """
name: "stochastic" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
        pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 } }
"""


@pytest.mark.parametrize("phase", [TRAIN, TEST], ids=["train", "test"])
def test_stochastic_net_from_prototxt_runs(phase):
    net = caffe.Net(parse_net(STOCHASTIC_NET), phase)
    x = rng(27).standard_normal((2, 3, 9, 9)).astype(np.float32)
    relu = np.maximum(x, 0)
    torch.manual_seed(8)
    out = net.forward(data=x)["pool"]
    assert out.shape == (2, 3, 4, 4)
    if phase == TEST:
        expected, _ = np_stochastic(relu, (3, 3), (2, 2))
        assert_blob_close(out, expected, rtol=2e-6, atol=2e-6)
    else:
        for key, values in np_windows(relu, (3, 3), (2, 2), (4, 4)).items():
            assert out[key] in values
    diff = net.backward(pool=np.ones(out.shape, np.float32))["data"]
    assert diff.shape == x.shape and np.isfinite(diff).all()
    assert (diff[x < 0] == 0).all()
    if phase == TRAIN:  # each window hands its 1 to one element (lost where ReLU zeroed that element)
        assert diff.sum() <= out.size and np.array_equal(diff, np.round(diff)) and diff.min() >= 0


@pytest.mark.gpu
def test_stochastic_on_cuda():
    """TEST matches the CPU; TRAIN (CUDA's own generator stream) picks window elements, reproducibly, and routes
    the diff to them."""
    shape, pooled = (2, 3, 9, 10), (4, 5)
    x = torch.as_tensor(rng(28).uniform(0.0, 2.0, shape).astype(np.float32))
    test = stochastic_layer("kernel_size: 3 stride: 2", shape, TEST)
    assert_blob_close(test(x.cuda()), test(x), rtol=1e-5, atol=1e-6)
    train = stochastic_layer("kernel_size: 3 stride: 2", shape, TRAIN)
    xc = x.cuda().requires_grad_()
    torch.manual_seed(9)
    y = train(xc)
    torch.manual_seed(9)
    assert torch.equal(y, train(xc))
    for key, values in np_windows(x.numpy(), (3, 3), (2, 2), pooled).items():
        assert y[key].item() in values.tolist()
    y.backward(torch.ones_like(y))
    assert xc.grad.sum().item() == y.numel() and torch.count_nonzero(xc.grad) <= y.numel()
