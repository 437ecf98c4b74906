"""More common layers (layers/common_extra.py): MVN, Reduction, ArgMax, Tile, Embed, Filter, BatchReindex,
Parameter, Im2col, SPP.

Each layer is checked against real Caffe output (tests/fixtures/layers/<case>), against a NumPy reference for the
parameters the fixtures do not cover, by float64 central differences, and on its edge cases and errors.
"""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import Case, as_tuple, assert_blob_close, check_gradient, forward, make_layer, rand

from caffelike.errors import LayerError

TEST = caffe_pb2.TEST


# ------------------------------------------------------------------------------------------- real-Caffe fixtures
FIXTURES = {"mvn": "MVN", "reduction": "Reduction", "argmax": "ArgMax", "tile": "Tile", "embed": "Embed",
            "filter": "Filter", "batchreindex": "BatchReindex", "parameter": "Parameter", "im2col": "Im2col",
            "spp": "SPP"}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_matches_caffe_fixture(name):
    """The case's layer alone: its bottoms' recorded data in, its tops' recorded data out; backward from the tops'
    recorded diffs gives the recorded bottom and parameter diffs."""
    case = Case.load("layers", name)
    (lp,) = [lp for lp in case.net_param().layer if lp.type == FIXTURES[name]]
    # At net setup Caffe shapes the bottoms as declared (Filter's first Reshape sees the full batch).
    layer = make_layer(text_format.MessageToString(lp), [case.data(b).shape for b in lp.bottom], TEST)
    for blob, stored in zip(layer.blobs, case.stored_weights().get(lp.name, [])):
        blob.data.copy_(torch.from_numpy(stored))
    diff_blobs = set(case.meta["diff_blobs"])
    bottoms = [torch.tensor(case.data(b), requires_grad=case.meta["backward"] and b in diff_blobs)
               for b in lp.bottom]
    tops = as_tuple(layer(*bottoms))
    for t, y in zip(lp.top, tops):
        assert_blob_close(y, case.data(t), name=t, **case.tolerance)
    if not case.meta["backward"]:
        assert layer.backward_free and not any(y.requires_grad for y in tops)
        return
    torch.autograd.backward(tops, [torch.from_numpy(case.diff(t)) for t in lp.top])
    for b, x in zip(lp.bottom, bottoms):
        if b in diff_blobs:
            assert_blob_close(x.grad, case.diff(b), name=f"{b} diff", **case.tolerance)
    for i, blob in enumerate(layer.blobs):
        assert_blob_close(blob.grad, case.param_diff(lp.name, i), name=f"param {i} diff", **case.tolerance)


# --------------------------------------------------------------------------------------------------------- MVN
def np_mvn(x, normalize_variance=True, across_channels=False, eps=1e-9):
    flat = x.reshape(x.shape[0] if across_channels else x.shape[0] * x.shape[1], -1)
    y = flat - flat.mean(axis=1, keepdims=True)
    if normalize_variance:
        y = y / (np.sqrt((y ** 2).mean(axis=1, keepdims=True)) + eps)
    return y.reshape(x.shape)


@pytest.mark.parametrize("text,kwargs", [
    ("", {}),
    ("mvn_param { across_channels: true }", {"across_channels": True}),
    ("mvn_param { normalize_variance: false }", {"normalize_variance": False}),
    ("mvn_param { normalize_variance: false across_channels: true }",
     {"normalize_variance": False, "across_channels": True}),
    ("mvn_param { eps: 0.5 }", {"eps": 0.5}),
], ids=["default", "across", "mean_only", "mean_only_across", "big_eps"])
def test_mvn_matches_numpy_reference(text, kwargs):
    x = rand((2, 3, 4, 5), seed=21)
    layer = make_layer(f'type: "MVN" {text}', [x.shape])
    assert_blob_close(forward(layer, x), np_mvn(x.astype(np.float64), **kwargs).astype(np.float32),
                      rtol=1e-5, atol=1e-6, name="y")


def test_mvn_eps_is_added_to_the_std_not_the_variance():
    x = np.array([[[1.0, 3.0]]], np.float32)  # mean 2, std 1
    y = forward(make_layer('type: "MVN" mvn_param { eps: 1 }', [x.shape]), x)
    assert_blob_close(y, np.array([[[[-0.5], [0.5]]]], np.float32), name="y")


@pytest.mark.parametrize("shape,top", [
    ((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4), (2, 3, 4, 1)), ((5, 3), (5, 3, 1, 1)), ((6,), (6, 1, 1, 1)),
], ids=["4d", "3d", "2d", "1d"])
def test_mvn_top_is_the_legacy_num_channels_height_width(shape, top):
    """Caffe reshapes MVN's top from the bottom's num(), channels(), height(), width()."""
    x = rand(shape, seed=22)
    layer = make_layer('type: "MVN"', [shape])
    y = forward(layer, x)
    assert tuple(y.shape) == top
    legacy = x.reshape(top)
    assert_blob_close(y, np_mvn(legacy.astype(np.float64)).astype(np.float32), rtol=1e-5, atol=1e-6, name="y")


def test_mvn_refuses_more_than_four_axes():
    with pytest.raises(LayerError, match=r'MVN layer .*5 axes \(1, 2, 3, 4, 5\).*at most 4'):
        make_layer('type: "MVN"', [(1, 2, 3, 4, 5)])


def test_mvn_backward_is_caffes_and_finite_on_a_constant_map():
    # std == 0: Caffe's backward gives (dy - mean(dy)) / eps; autograd of sqrt would give NaN.
    layer = make_layer('type: "MVN" mvn_param { eps: 0.5 }', [(1, 1, 3)])
    x = torch.full((1, 1, 3), 2.0, dtype=torch.float64, requires_grad=True)
    dy = torch.tensor([[[1.0, 2.0, 6.0]]], dtype=torch.float64)
    layer.double()(x).backward(dy.reshape(1, 1, 3, 1))  # the top is (num, channels, height, width)
    assert_blob_close(x.grad, ((dy - 3.0) / 0.5).numpy(), rtol=1e-12, name="dx")


# --------------------------------------------------------------------------------------------------- Reduction
def np_reduction(x, op, axis, coeff):
    flat = x.reshape(*x.shape[:axis], -1)
    y = {"SUM": flat.sum(-1), "ASUM": np.abs(flat).sum(-1), "SUMSQ": (flat ** 2).sum(-1),
         "MEAN": flat.mean(-1)}[op]
    return np.asarray(y * coeff)


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis,coeff", [(0, 1.0), (1, -0.5), (-1, 2.0), (2, 1.0)], ids=["a0", "a1", "a-1", "a2"])
def test_reduction_matches_numpy_reference(op, axis, coeff):
    x = rand((2, 3, 4), seed=22)
    layer = make_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}',
                       [x.shape])
    expected = np_reduction(x.astype(np.float64), op, axis % 3, coeff).astype(np.float32)
    assert layer.infer_top_shapes([x.shape]) == [x.shape[:axis % 3]]
    assert_blob_close(forward(layer, x), expected, rtol=1e-5, atol=1e-5, name="y")


def test_reduction_default_reduces_everything_to_a_scalar():
    x = rand((2, 3), seed=23)
    y = forward(make_layer('type: "Reduction"', [x.shape]), x)
    assert tuple(y.shape) == ()
    assert abs(y.item() - x.astype(np.float64).sum()) < 1e-5


# ------------------------------------------------------------------------------------------------------ ArgMax
def test_argmax_ties_go_to_the_larger_index():
    x = np.array([[3.0, 1.0, 3.0, 2.0, 3.0]], np.float32)
    y = forward(make_layer('type: "ArgMax" argmax_param { top_k: 4 }', [x.shape]), x)
    assert_blob_close(y, np.array([[[4.0, 2.0, 0.0, 3.0]]], np.float32), name="indices")


def test_argmax_out_max_val_without_axis_stacks_indices_then_values():
    x = rand((2, 3, 2, 2), seed=24)
    y = forward(make_layer('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [x.shape]), x)
    assert tuple(y.shape) == (2, 2, 3, 1)
    flat = x.reshape(2, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :3]
    assert_blob_close(y[:, 0, :, 0], order.astype(np.float32), name="indices")
    assert_blob_close(y[:, 1, :, 0], np.take_along_axis(flat, order, 1), name="values")


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_along_an_axis(axis, out_max_val):
    x = rand((3, 4, 5), seed=25)
    text = f'type: "ArgMax" argmax_param {{ top_k: 2 axis: {axis} out_max_val: {str(out_max_val).lower()} }}'
    y = forward(make_layer(text, [x.shape]), x)
    order = np.flip(np.argsort(x, axis=axis, kind="stable"), axis=axis)
    order = np.moveaxis(np.moveaxis(order, axis, 0)[:2], 0, axis)
    expected = np.take_along_axis(x, order, axis) if out_max_val else order.astype(np.float32)
    assert_blob_close(y, expected, name="top")


def test_argmax_on_two_axes_has_three():
    layer = make_layer('type: "ArgMax"', [(4, 6)])
    assert layer.infer_top_shapes([(4, 6)]) == [(4, 1, 1)]


# -------------------------------------------------------------------------------------------------------- Tile
@pytest.mark.parametrize("axis,tiles", [(0, 2), (1, 3), (-1, 4)])
def test_tile_matches_numpy_reference(axis, tiles):
    x = rand((2, 3, 4), seed=26)
    y = forward(make_layer(f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}', [x.shape]), x)
    reps = [1, 1, 1]
    reps[axis] = tiles
    assert_blob_close(y, np.tile(x, reps), name="y")


# ------------------------------------------------------------------------------------------------------- Embed
EMBED = ('type: "Embed" embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" } '
         'bias_filler { type: "uniform" } }')


def test_embed_matches_numpy_reference():
    idx = np.array([[0.0, 4.0], [2.0, 2.0], [1.0, 3.0]], np.float32)
    layer = make_layer(EMBED, [idx.shape])
    assert [tuple(b.shape) for b in layer.blobs] == [(5, 3), (3,)]
    weight, bias = (b.detach().numpy() for b in layer.blobs)
    assert_blob_close(forward(layer, idx), weight[idx.astype(int)] + bias, name="y")


def test_embed_without_bias_and_weight_gradient_accumulates():
    layer = make_layer('type: "Embed" embed_param { num_output: 2 input_dim: 4 bias_term: false }', [(3,)])
    assert len(layer.blobs) == 1
    dy = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    layer(torch.tensor([1.0, 3.0, 1.0])).backward(torch.from_numpy(dy))
    expected = np.zeros((4, 2), np.float32)
    expected[1] = dy[0] + dy[2]
    expected[3] = dy[1]
    assert_blob_close(layer.blobs[0].grad, expected, name="W diff")
    # force_backward reaches the indices as in Caffe, and asking for their gradient is refused
    assert layer.allow_force_backward(0) and "indices" in layer.gradient_refusal(0, 1)


@pytest.mark.parametrize("bad", [5.0, -1.0])
def test_embed_rejects_an_index_out_of_range(bad):
    layer = make_layer(EMBED, [(2,)])
    with pytest.raises(LayerError, match=rf'Embed layer "embed": embedding index {bad:g} is out of range \[0, 5\)'):
        forward(layer, np.array([0.0, bad], np.float32))


# ------------------------------------------------------------------------------------------------------ Filter
def test_filter_keeps_selected_items_of_every_bottom():
    a, b = rand((4, 2, 3), seed=27), rand((4, 5), seed=28)
    sel = np.array([[0.0], [1.0], [0.0], [-2.0]], np.float32)
    layer = make_layer('type: "Filter" top: "a" top: "b"', [a.shape, b.shape, sel.shape])
    assert layer.infer_top_shapes([a.shape, b.shape, sel.shape]) == [a.shape, b.shape]  # Caffe's first Reshape
    ya, yb = forward(layer, a, b, sel)
    assert_blob_close(ya, a[[1, 3]], name="a")
    assert_blob_close(yb, b[[1, 3]], name="b")


def test_filter_backward_zeroes_unselected_items_and_skips_the_selector():
    x = torch.tensor(rand((3, 2), seed=29), requires_grad=True)
    sel = torch.tensor([1.0, 0.0, 1.0])
    layer = make_layer('type: "Filter"', [(3, 2), (3,)])
    layer(x, sel).backward(torch.ones(2, 2))
    assert_blob_close(x.grad, np.array([[1, 1], [0, 0], [1, 1]], np.float32), name="x diff")
    assert layer.gradient_refusal(0, 2) is None and "selector" in layer.gradient_refusal(1, 2)


def test_filter_selecting_nothing_gives_an_empty_top():
    y = forward(make_layer('type: "Filter"', [(3, 2), (3,)]), rand((3, 2)), np.zeros(3, np.float32))
    assert tuple(y.shape) == (0, 2)


@pytest.mark.parametrize("shapes,message", [
    ([(3, 2), (3, 2)], r"the selector \(last bottom\) must have shape \(N, 1, ...\), got \(3, 2\)"),
    ([(4, 2), (3, 1)], r"bottom 0 of shape \(4, 2\) must have the selector's first dimension 3"),
], ids=["selector_not_singleton", "batch_mismatch"])
def test_filter_rejects_bad_shapes(shapes, message):
    with pytest.raises(LayerError, match=r'Filter layer "filter": ' + message):
        make_layer('type: "Filter"', shapes)


def test_filter_needs_one_top_per_filtered_bottom():
    layer = make_layer('type: "Filter"', [(3, 2), (3,)])
    with pytest.raises(LayerError, match=r"needs one top per filtered bottom \(bottoms - 1 = 2\), got 1 tops"):
        layer.check_blob_counts(3, 1)


# ------------------------------------------------------------------------------------------------ BatchReindex
def test_batchreindex_gathers_and_scatter_adds():
    x = torch.tensor(rand((3, 2), seed=30), requires_grad=True)
    idx = np.array([2.0, 0.0, 2.0, 2.0], np.float32)
    layer = make_layer('type: "BatchReindex"', [(3, 2), (4,)])
    y = layer(x, torch.from_numpy(idx))
    assert_blob_close(y, x.detach().numpy()[[2, 0, 2, 2]], name="y")
    y.backward(torch.ones(4, 2))
    assert_blob_close(x.grad, np.array([[1, 1], [0, 0], [3, 3]], np.float32), name="x diff")
    assert layer.gradient_refusal(0, 2) is None and "index" in layer.gradient_refusal(1, 2)


def test_batchreindex_errors():
    with pytest.raises(LayerError, match=r'BatchReindex layer "batchreindex": the index bottom must have 1 axis, '
                                         r'got shape \(2, 1\)'):
        make_layer('type: "BatchReindex"', [(3, 2), (2, 1)])
    layer = make_layer('type: "BatchReindex"', [(3, 2), (2,)])
    with pytest.raises(LayerError, match=r"batch index 3 is out of range \[0, 3\)"):
        forward(layer, rand((3, 2)), np.array([0.0, 3.0], np.float32))


# --------------------------------------------------------------------------------------------------- Parameter
def test_parameter_is_zero_initialised_and_its_top_is_the_blob():
    layer = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert_blob_close(layer.blobs[0], np.zeros((2, 3), np.float32), name="blob")
    assert layer.infer_top_shapes([]) == [(2, 3)]
    y = layer()
    assert y.data_ptr() == layer.blobs[0].data_ptr()
    y.backward(torch.full((2, 3), 1.5))
    assert_blob_close(layer.blobs[0].grad, np.full((2, 3), 1.5, np.float32), name="blob diff")


# ------------------------------------------------------------------------------------------------------ Im2col
def np_im2col(x, kernel, pad, stride, dilation):
    """Caffe's im2col_nd_cpu, literally: every (channel, kernel offset) row reads zeros outside the map."""
    n, c, spatial = x.shape[0], x.shape[1], x.shape[2:]
    # C++ integer division truncates toward zero: a kernel larger than the padded map still gives one window.
    out = [int((s + 2 * p - (d * (k - 1) + 1)) / st) + 1
           for s, k, p, st, d in zip(spatial, kernel, pad, stride, dilation)]
    cols = np.zeros((n, c * int(np.prod(kernel)), *out), x.dtype)
    for ci in range(c):
        for ki, offs in enumerate(itertools.product(*[range(k) for k in kernel])):
            for pos in itertools.product(*[range(o) for o in out]):
                src = [q * st - p + o * d for q, st, p, o, d in zip(pos, stride, pad, offs, dilation)]
                if all(0 <= s < size for s, size in zip(src, spatial)):
                    cols[(slice(None), ci * int(np.prod(kernel)) + ki, *pos)] = x[(slice(None), ci, *src)]
    return cols


@pytest.mark.parametrize("shape,text,geometry", [
    ((2, 2, 5, 6), "kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1",
     ((2, 3), (1, 0), (2, 1), (1, 1))),
    ((1, 3, 6, 6), "kernel_size: 3 pad: 2 stride: 2 dilation: 2", ((3, 3), (2, 2), (2, 2), (2, 2))),
    ((2, 2, 7), "kernel_size: 3 stride: 2", ((3,), (0,), (2,), (1,))),
    ((1, 2, 3, 4, 4), "kernel_size: 2 pad: 1 stride: 2", ((2, 2, 2), (1, 1, 1), (2, 2, 2), (1, 1, 1))),
    ((1, 1, 2, 2), "kernel_size: 3 stride: 2", ((3, 3), (0, 0), (2, 2), (1, 1))),
], ids=["2d_hw", "2d_dilated", "1d", "3d", "kernel_larger_than_map"])
def test_im2col_matches_numpy_reference(shape, text, geometry):
    x = rand(shape, seed=31)
    layer = make_layer(f'type: "Im2col" convolution_param {{ {text} }}', [shape])
    assert_blob_close(forward(layer, x), np_im2col(x, *geometry), name="columns")


def test_im2col_2d_equals_torch_unfold():
    x = torch.tensor(rand((2, 3, 6, 5), seed=32))
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 }', [x.shape])
    expected = F.unfold(x, 3, padding=1, stride=2).reshape(2, 27, 3, 3)
    assert_blob_close(forward(layer, x), expected.numpy(), name="columns")


def test_im2col_channel_axis_and_leading_batch_axes():
    x = rand((2, 2, 3, 4, 4), seed=33)
    layer = make_layer('type: "Im2col" convolution_param { kernel_size: 2 axis: 2 }', [x.shape])
    y = forward(layer, x)
    expected = np_im2col(x.reshape(4, 3, 4, 4), (2, 2), (0, 0), (1, 1), (1, 1)).reshape(2, 2, 12, 3, 3)
    assert_blob_close(y, expected, name="columns")


def test_im2col_needs_a_kernel():
    with pytest.raises(LayerError, match=r'Im2col layer "im2col": kernel_size must be > 0 on every spatial axis'):
        make_layer('type: "Im2col"', [(1, 1, 4, 4)])


# --------------------------------------------------------------------------------------------------------- SPP
def np_spp_level(x, bins, pool):
    """One pyramid level by Caffe's rules: kernel ceil(H/bins), pad (kernel*bins - H + 1)/2, stride = kernel,
    pooled size ceil((H + 2 pad - k)/k) + 1 less one if the last window starts in the padding; MAX over the
    window clipped to the map, AVE divided by the window clipped to H + pad."""
    n, c, h, w = x.shape
    geometry = []
    for size in (h, w):
        k = -(-size // bins)
        p = (k * bins - size + 1) // 2
        pooled = -(-(size + 2 * p - k) // k) + 1
        if p > 0 and (pooled - 1) * k >= size + p:
            pooled -= 1
        geometry.append((k, p, pooled, size))
    (kh, ph, oh, _), (kw, pw, ow, _) = geometry
    y = np.zeros((n, c, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * kh - ph, j * kw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            window = x[:, :, max(h0, 0):min(h1, h), max(w0, 0):min(w1, w)]
            if pool == "MAX":
                y[:, :, i, j] = window.max(axis=(2, 3))
            else:
                y[:, :, i, j] = window.sum(axis=(2, 3)) / ((h1 - h0) * (w1 - w0))
    return y


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 8, 8), (1, 1, 13, 6)], ids=["7x9", "8x8", "13x6"])
def test_spp_matches_numpy_reference(pool, shape):
    x = rand(shape, seed=34)
    layer = make_layer(f'type: "SPP" spp_param {{ pyramid_height: 3 pool: {pool} }}', [shape])
    expected = np.concatenate([np_spp_level(x, 2 ** lv, pool).reshape(shape[0], -1) for lv in range(3)], axis=1)
    assert layer.infer_top_shapes([shape]) == [expected.shape]
    assert_blob_close(forward(layer, x), expected, rtol=1e-6, atol=1e-6, name="y")


def test_spp_pyramid_height_one_keeps_four_axes():
    x = rand((2, 3, 5, 4), seed=35)
    y = forward(make_layer('type: "SPP" spp_param { pyramid_height: 1 pool: AVE }', [x.shape]), x)
    assert_blob_close(y, x.mean(axis=(2, 3), keepdims=True), rtol=1e-6, atol=1e-6, name="y")


def test_spp_follows_a_new_bottom_size():
    layer = make_layer('type: "SPP" spp_param { pyramid_height: 2 }', [(1, 1, 4, 4)])
    x = rand((1, 2, 6, 10), seed=36)
    expected = np.concatenate([np_spp_level(x, b, "MAX").reshape(1, -1) for b in (1, 2)], axis=1)
    assert_blob_close(forward(layer, x), expected, name="y")


@pytest.mark.parametrize("shape,text,message", [
    ((2, 3, 4), "pyramid_height: 2", r"bottom must have 4 axes \(N, C, H, W\), got shape \(2, 3, 4\)"),
    ((1, 1, 5, 5), "pyramid_height: 3", r'Pooling layer "spp level 2": pad_h 2 must be smaller than kernel_h 2'),
    ((1, 1, 5, 5), "pyramid_height: 2 pool: STOCHASTIC",
     r'Pooling layer "spp level 1": padding is implemented only for MAX and AVE pooling, got pad \[1, 1\] with '
     r"pool: STOCHASTIC"),
], ids=["3_axes", "map_too_small", "stochastic"])
def test_spp_errors(shape, text, message):
    with pytest.raises(LayerError, match=message):
        make_layer(f'type: "SPP" spp_param {{ {text} }}', [shape])


# ------------------------------------------------------------------------------------------------ gradient checks
def away_from_zero(shape, seed):
    x = rand(shape, seed=seed, dtype=np.float64)
    return np.where(np.abs(x) < 0.05, 0.5, x)


GRADIENT_CASES = {
    # name: (layer text, bottoms, check_gradient options)
    "mvn": ('type: "MVN"', lambda: [rand((2, 3, 4), seed=40, dtype=np.float64)], {}),
    "mvn_across": ('type: "MVN" mvn_param { across_channels: true }',
                   lambda: [rand((2, 3, 2, 2), seed=41, dtype=np.float64)], {}),
    "mvn_mean_only": ('type: "MVN" mvn_param { normalize_variance: false }',
                      lambda: [rand((2, 3, 4), seed=42, dtype=np.float64)], {}),
    "reduction_sum": ('type: "Reduction" reduction_param { axis: 1 coeff: 2 }',
                      lambda: [rand((2, 3, 4), seed=43, dtype=np.float64)], {}),
    "reduction_asum": ('type: "Reduction" reduction_param { operation: ASUM axis: -1 }',
                       lambda: [rand((2, 3, 4), seed=44, dtype=np.float64)], {"kink": 0.0, "kink_range": 0.01}),
    "reduction_sumsq": ('type: "Reduction" reduction_param { operation: SUMSQ coeff: -0.3 }',
                        lambda: [rand((2, 3, 4), seed=45, dtype=np.float64)], {}),
    "reduction_mean": ('type: "Reduction" reduction_param { operation: MEAN axis: 1 coeff: 1.5 }',
                       lambda: [rand((2, 3, 4), seed=46, dtype=np.float64)], {}),
    "tile": ('type: "Tile" tile_param { axis: 0 tiles: 3 }', lambda: [rand((2, 3), seed=47, dtype=np.float64)], {}),
    "embed": (EMBED, lambda: [np.array([[0.0, 4.0, 4.0], [2.0, 1.0, 0.0]])], {"grad_bottoms": []}),
    "filter": ('type: "Filter" top: "a" top: "b"', lambda: [rand((4, 2), seed=48, dtype=np.float64),
               rand((4, 3), seed=49, dtype=np.float64), np.array([1.0, 0.0, 1.0, 1.0])], {"grad_bottoms": [0, 1]}),
    "batchreindex": ('type: "BatchReindex"', lambda: [rand((3, 2, 2), seed=50, dtype=np.float64),
                     np.array([1.0, 1.0, 0.0, 2.0, 1.0])], {"grad_bottoms": [0]}),
    "parameter": ('type: "Parameter" parameter_param { shape { dim: 3 } }', lambda: [], {}),
    "im2col": ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 2 }',
               lambda: [rand((2, 2, 5, 5), seed=51, dtype=np.float64)], {}),
    "spp_max": ('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }',
                lambda: [np.random.default_rng(52).permutation(2 * 2 * 7 * 9).reshape(2, 2, 7, 9) / 10.0], {}),
    "spp_ave": ('type: "SPP" spp_param { pyramid_height: 3 pool: AVE }',
                lambda: [rand((1, 2, 7, 9), seed=53, dtype=np.float64)], {}),
}


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_gradient(name):
    text, bottoms, options = GRADIENT_CASES[name]
    xs = bottoms()
    report = check_gradient(make_layer(text, [x.shape for x in xs]), xs, **options)
    assert report.checked > 0


def test_argmax_is_backward_free():
    layer = make_layer('type: "ArgMax"', [(2, 3)])
    assert layer.backward_free
    assert not layer(torch.tensor(rand((2, 3)), requires_grad=True)).requires_grad


# ------------------------------------------------------------------------------------------- dtype, device, errors
DTYPE_CASES = {
    "mvn": ('type: "MVN"', lambda: [rand((2, 3, 4), seed=60)]),
    "reduction": ('type: "Reduction" reduction_param { operation: ASUM axis: 1 }', lambda: [rand((2, 3), seed=61)]),
    "argmax": ('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', lambda: [rand((2, 5), seed=62)]),
    "tile": ('type: "Tile" tile_param { tiles: 2 }', lambda: [rand((2, 3), seed=63)]),
    "embed": (EMBED, lambda: [np.array([1.0, 4.0], np.float32)]),
    "filter": ('type: "Filter"', lambda: [rand((3, 2), seed=64), np.array([1.0, 0.0, 1.0], np.float32)]),
    "batchreindex": ('type: "BatchReindex"', lambda: [rand((3, 2), seed=65), np.array([2.0, 0.0], np.float32)]),
    "parameter": ('type: "Parameter" parameter_param { shape { dim: 2 } }', lambda: []),
    "im2col": ('type: "Im2col" convolution_param { kernel_size: 2 }', lambda: [rand((1, 2, 3, 3), seed=66)]),
    "spp": ('type: "SPP" spp_param { pyramid_height: 2 }', lambda: [rand((1, 2, 5, 5), seed=67)]),
}


@pytest.mark.parametrize("name", list(DTYPE_CASES))
def test_float64_stays_float64(name):
    text, bottoms = DTYPE_CASES[name]
    xs = [x.astype(np.float64) for x in bottoms()]
    tops = as_tuple(forward(make_layer(text, [x.shape for x in xs]).double(), *xs))
    assert all(t.dtype == torch.float64 for t in tops)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(DTYPE_CASES))
def test_cuda_matches_cpu(name):
    text, bottoms = DTYPE_CASES[name]
    xs = bottoms()
    layer = make_layer(text, [x.shape for x in xs])
    expected = as_tuple(forward(layer, *xs))
    got = as_tuple(forward(layer.cuda(), *[torch.tensor(x).cuda() for x in xs]))
    for g, e in zip(got, expected):
        assert g.device.type == "cuda"
        assert_blob_close(g.cpu(), e.numpy(), rtol=1e-5, atol=1e-6, name=name)


@pytest.mark.parametrize("text,shapes,message", [
    ('type: "Reduction" reduction_param { axis: 3 }', [(2, 3)], r"axis 3 is out of range for a bottom with 2 axes"),
    ('type: "ArgMax" argmax_param { top_k: 7 }', [(2, 3, 2)], r"top_k 7 is larger than the 6 values"),
    ('type: "ArgMax" argmax_param { top_k: 4 axis: 1 }', [(2, 3)], r"top_k 4 is larger than the 3 values of axis 1"),
    ('type: "ArgMax" argmax_param { top_k: 0 }', [(2, 3)], r"top_k must be >= 1, got 0"),
    ('type: "Tile"', [(2, 3)], r"tile_param.tiles must be given"),
    ('type: "Tile" tile_param { tiles: 0 }', [(2, 3)], r"tiles must be > 0, got 0"),
    ('type: "Embed" embed_param { input_dim: 3 }', [(2,)], r"num_output must be set to a positive value, got 0"),
    ('type: "Embed" embed_param { num_output: 3 }', [(2,)], r"input_dim must be set to a positive value, got 0"),
], ids=["reduction_axis", "argmax_top_k", "argmax_top_k_axis", "argmax_top_k_0", "tile_missing", "tile_0",
        "embed_num_output", "embed_input_dim"])
def test_rejects_bad_parameters(text, shapes, message):
    type_name = text.split('"')[1]
    with pytest.raises(LayerError, match=rf'{type_name} layer "{type_name.lower()}": ' + message):
        make_layer(text, shapes)
