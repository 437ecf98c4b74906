"""Convolution, Deconvolution, Pooling, LRN and Crop against real Caffe fixtures, NumPy references of Caffe's
loops, central-difference gradients, and the parameter checks Caffe makes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from caffelike.layers import layer_class
from google.protobuf import text_format
from helpers import Case, as_tuple, assert_blob_close, check_gradient, make_layer

from caffelike.errors import LayerError

FLT_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The blobs here are tiny: handing them to a second intra-op thread costs far more than the arithmetic
    (a 30 us convolution took 30 ms on a busy 2-core machine), and the gradient checks run thousands of them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rng(seed=0):
    return np.random.default_rng(seed)


def run(layer, *arrays):
    return as_tuple(layer(*[torch.as_tensor(a) for a in arrays]))


def pool_text(fields, tops=1):
    top = " ".join(f'top: "t{i}"' for i in range(tops))
    return f'type: "Pooling" name: "p" bottom: "x" {top} pooling_param {{ {fields} }}'


# =============================================================================================== real-Caffe fixtures
FIXTURE_CASES = [
    ("convolution", "conv"), ("deconvolution", "deconv"), ("pooling_max", "pool"), ("pooling_ave", "pool"),
    ("lrn_across", "norm"), ("lrn_within", "norm"), ("crop", "crop"),
]


def layer_from_case(case: Case, layer_name: str):
    lp = next(lp for lp in case.net_param().layer if lp.name == layer_name)
    layer = make_layer(text_format.MessageToString(lp), [case.data(b).shape for b in lp.bottom])
    for blob, value in zip(layer.blobs, case.stored_weights().get(layer_name, [])):
        blob.data.copy_(torch.from_numpy(value))
    return layer, lp


@pytest.mark.parametrize("case_name,layer_name", FIXTURE_CASES, ids=[c for c, _ in FIXTURE_CASES])
def test_fixture_forward_and_backward(case_name, layer_name):
    case = Case.load("layers", case_name)
    layer, lp = layer_from_case(case, layer_name)
    bottoms = [torch.from_numpy(case.data(b)).requires_grad_() for b in lp.bottom]
    (top,) = run(layer, *bottoms)
    assert_blob_close(top, case.data(lp.top[0]), **case.tolerance, name=lp.top[0])

    top.backward(torch.from_numpy(case.output_diff(lp.top[0])))
    assert_blob_close(bottoms[0].grad, case.diff(lp.bottom[0]), **case.tolerance, name=lp.bottom[0] + " diff")
    for i, blob in enumerate(layer.blobs):
        assert_blob_close(blob.grad, case.param_diff(layer_name, i), **case.tolerance, name=f"param {i} diff")
    if case_name == "crop":  # the reference bottom gets nothing, as in Caffe
        assert bottoms[1].grad is None
        assert not np.any(case.diff("ref"))


# cifar10_quick: ReLUs run in place after conv2, conv3 and pool1, so some recorded blobs are post-ReLU.
CIFAR_STEPS = [("conv1", "data", "conv1", False), ("pool1", "conv1", "pool1", True),
               ("conv2", "pool1", "conv2", True), ("pool2", "conv2", "pool2", False),
               ("conv3", "pool2", "conv3", True), ("pool3", "conv3", "pool3", False)]


@pytest.mark.parametrize("layer_name,bottom,top,relu_after", CIFAR_STEPS, ids=[s[0] for s in CIFAR_STEPS])
def test_cifar10_quick_layers(layer_name, bottom, top, relu_after):
    case = Case.load("nets", "cifar10_quick")
    layer, _ = layer_from_case(case, layer_name)
    (y,) = run(layer, case.data(bottom))
    if relu_after:
        y = y.clamp_min(0)
    assert_blob_close(y, case.data(top), **case.tolerance, name=top)


# ================================================================================================ NumPy references
def trunc_div(a, b):
    return -((-a) // b) if a < 0 else a // b


def np_conv(x, w, b, stride, pad, dil, group):
    """Caffe's im2col convolution, written as an explicit loop over output positions."""
    nd = x.ndim - 2
    out = [trunc_div(s + 2 * p - (d * (k - 1) + 1), st) + 1
           for s, k, st, p, d in zip(x.shape[2:], w.shape[2:], stride, pad, dil)]
    need = [(o - 1) * st + d * (k - 1) + 1 for o, st, k, d in zip(out, stride, w.shape[2:], dil)]
    xp = np.zeros(x.shape[:2] + tuple(max(n, s + 2 * p) for n, s, p in zip(need, x.shape[2:], pad)), x.dtype)
    xp[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, x.shape[2:]))] = x
    cg, og = x.shape[1] // group, w.shape[0] // group
    y = np.zeros((x.shape[0], w.shape[0], *out), x.dtype)
    axes = list(range(1, nd + 2))
    for pos in np.ndindex(*out):
        window = tuple(slice(i * st, i * st + d * (k - 1) + 1, d)
                       for i, st, k, d in zip(pos, stride, w.shape[2:], dil))
        patch = xp[(slice(None), slice(None)) + window]
        for g in range(group):
            y[(slice(None), slice(g * og, (g + 1) * og)) + pos] = np.tensordot(
                patch[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og], axes=(axes, axes))
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def np_deconv(x, w, b, stride, pad, dil, group):
    """Caffe's col2im deconvolution: every input pixel scatters its weighted kernel, then the pad is cut off."""
    nd = x.ndim - 2
    kernel = w.shape[2:]
    cg, og = x.shape[1] // group, w.shape[1]
    full = [st * (s - 1) + d * (k - 1) + 1 for s, k, st, d in zip(x.shape[2:], kernel, stride, dil)]
    canvas = np.zeros((x.shape[0], og * group, *full), x.dtype)
    for pos in np.ndindex(*x.shape[2:]):
        for q in np.ndindex(*kernel):
            target = tuple(i * st + j * d for i, j, st, d in zip(pos, q, stride, dil))
            for g in range(group):
                ins, outs = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
                canvas[(slice(None), outs) + target] += x[(slice(None), ins) + pos] @ w[(ins, slice(None)) + q]
    y = canvas[(slice(None), slice(None)) + tuple(slice(p, f - p) for p, f in zip(pad, full))]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd)
    return y


def np_lrn(x, region, n, alpha, beta, k):
    half = (n - 1) // 2
    sq = np.pad(x * x, ((0, 0), (half, half), (0, 0), (0, 0)) if region == "ACROSS_CHANNELS"
                else ((0, 0), (0, 0), (half, half), (half, half)))
    if region == "ACROSS_CHANNELS":
        window = sum(sq[:, c:c + x.shape[1]] for c in range(n))
        scale = k + alpha / n * window
    else:
        window = sum(sq[:, :, i:i + x.shape[2], j:j + x.shape[3]] for i in range(n) for j in range(n))
        scale = 1 + alpha / n ** 2 * window
    return x * scale ** -beta


# ====================================================================================================== Convolution
def conv_fields(body, kind="Convolution"):
    return f'type: "{kind}" name: "c" bottom: "x" top: "y" convolution_param {{ {body} }}'


def conv_text(kind="Convolution", **fields):
    return conv_fields(" ".join(f"{k}: {v}" for k, v in fields.items()), kind)


CONV_CASES = {
    # id: (bottom shape, prototxt fields, stride, pad, dilation, group)
    "plain_3x3": ((2, 3, 6, 6), "num_output: 4 kernel_size: 3", (1, 1), (0, 0), (1, 1), 1),
    "group2_dilation2_stride2_pad1": ((2, 4, 9, 8), "num_output: 6 kernel_size: 3 group: 2 dilation: 2 stride: 2 "
                                                    "pad: 1", (2, 2), (1, 1), (2, 2), 2),
    "depthwise": ((1, 4, 5, 5), "num_output: 4 group: 4 kernel_size: 3 pad: 1", (1, 1), (1, 1), (1, 1), 4),
    "kernel_hw_stride_hw_pad_hw": ((2, 2, 7, 9), "num_output: 3 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 "
                                                 "pad_h: 1 pad_w: 2", (2, 3), (1, 2), (1, 1), 1),
    "repeated_per_axis": ((1, 2, 7, 6), "num_output: 2 kernel_size: 3 kernel_size: 2 stride: 1 stride: 2 "
                                        "pad: 0 pad: 1 dilation: 2 dilation: 1", (1, 2), (0, 1), (2, 1), 1),
    "truncated_size": ((1, 2, 2, 5), "num_output: 2 kernel_size: 4 stride: 3", (3, 3), (0, 0), (1, 1), 1),
    "no_bias": ((2, 3, 5, 5), "num_output: 2 kernel_size: 2 bias_term: false", (1, 1), (0, 0), (1, 1), 1),
    "conv1d": ((2, 3, 11), "num_output: 4 kernel_size: 3 stride: 2 pad: 1 dilation: 2", (2,), (1,), (2,), 1),
    "conv3d": ((1, 2, 4, 5, 6), "num_output: 2 kernel_size: 3 kernel_size: 2 kernel_size: 3 pad: 1 stride: 2",
               (2, 2, 2), (1, 1, 1), (1, 1, 1), 1),
}


def filled_conv(kind, shape, fields, seed=0):
    fill = ' weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 }'
    torch.manual_seed(seed)
    return make_layer(conv_fields(fields + fill, kind), [shape])


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_convolution_matches_numpy(name):
    shape, fields, stride, pad, dil, group = CONV_CASES[name]
    layer = filled_conv("Convolution", shape, fields).double()
    x = rng(1).standard_normal(shape)
    w = layer.blobs[0].detach().numpy()
    b = layer.blobs[1].detach().numpy() if len(layer.blobs) > 1 else None
    (y,) = run(layer, x)
    expected = np_conv(x, w, b, stride, pad, dil, group)
    assert_blob_close(y, expected, rtol=1e-10, atol=1e-10, name=name)
    assert layer.infer_top_shapes([shape]) == [expected.shape]


def test_convolution_truncated_size_is_caffes():
    # (2 - 4) / 3 truncates to 0 in C++, so one output where floor division (and torch) would give none.
    layer = make_layer(conv_text(num_output=1, kernel_size=4, stride=3), [(1, 1, 2, 2)])
    assert layer.infer_top_shapes([(1, 1, 2, 2)]) == [(1, 1, 1, 1)]


@pytest.mark.parametrize("name", ["group2_dilation2_stride2_pad1", "conv1d", "conv3d", "truncated_size"])
def test_convolution_gradient(name):
    shape, fields, *_ = CONV_CASES[name]
    layer = filled_conv("Convolution", shape, fields)
    check_gradient(layer, [rng(2).standard_normal(shape)])


@pytest.mark.parametrize("axis,shape", [(2, (2, 3, 4, 6, 6)), (0, (4, 6, 6)), (-3, (2, 3, 4, 6, 6))],
                         ids=["axis2_leading_batch_axes", "axis0_no_batch", "axis_negative"])
def test_convolution_axis_flattens_leading_axes(axis, shape):
    layer = filled_conv("Convolution", shape, f"num_output: 5 kernel_size: 3 axis: {axis}").double()
    x = rng(3).standard_normal(shape)
    canonical = axis % len(shape)
    lead = shape[:canonical]
    expected = np_conv(x.reshape((-1,) + shape[canonical:]), layer.blobs[0].detach().numpy(),
                       layer.blobs[1].detach().numpy(), (1, 1), (0, 0), (1, 1), 1)
    (y,) = run(layer, x)
    assert_blob_close(y, expected.reshape(lead + expected.shape[1:]), rtol=1e-10, atol=1e-10)
    assert layer.blobs[0].shape == (5, 4, 3, 3)


def test_convolution_blob_shapes_and_fillers():
    fields = ('num_output: 6 kernel_size: 3 group: 3 weight_filler { type: "constant" value: 0.5 } '
              'bias_filler { type: "constant" value: -2 }')
    layer = make_layer(conv_fields(fields), [(1, 9, 5, 5)])
    assert [tuple(b.shape) for b in layer.blobs] == [(6, 3, 3, 3), (6,)]
    assert torch.all(layer.blobs[0] == 0.5) and torch.all(layer.blobs[1] == -2)
    no_filler = make_layer(conv_text(num_output=2, kernel_size=1), [(1, 3, 2, 2)])
    assert torch.all(no_filler.blobs[0] == 0), "Caffe's default filler is constant 0"


def test_convolution_engine_is_ignored():
    a = filled_conv("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 engine: CUDNN")
    b = filled_conv("Convolution", (1, 2, 5, 5), "num_output: 2 kernel_size: 3 engine: CAFFE")
    x = rng(4).standard_normal((1, 2, 5, 5)).astype(np.float32)
    assert_blob_close(run(a, x)[0], run(b, x)[0].detach().numpy())


def test_convolution_reads_replaced_blobs():
    layer = filled_conv("Convolution", (1, 1, 3, 3), "num_output: 1 kernel_size: 3")
    layer.blobs[0] = torch.nn.Parameter(torch.ones(1, 1, 3, 3))
    layer.blobs[1] = torch.nn.Parameter(torch.zeros(1))
    (y,) = run(layer, np.ones((1, 1, 3, 3), np.float32))
    assert y.item() == 9.0


def test_convolution_several_bottoms_share_weights():
    text = ('type: "Convolution" name: "c" bottom: "a" bottom: "b" top: "ya" top: "yb" '
            'convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" } }')
    layer = make_layer(text, [(2, 3, 5, 5), (2, 3, 5, 5)])
    a, b = rng(5).standard_normal((2, 2, 3, 5, 5)).astype(np.float32)
    ya, yb = run(layer, a, b)
    assert_blob_close(ya, run(layer, a)[0].detach().numpy())
    assert_blob_close(yb, run(layer, b)[0].detach().numpy())
    with pytest.raises(LayerError, match=r'bottom "a" is \(2, 3, 5, 5\), bottom "b" is \(2, 3, 6, 5\)'):
        layer(torch.as_tensor(a), torch.zeros(2, 3, 6, 5))
    with pytest.raises(LayerError, match="as many top blobs as bottom blobs"):
        layer.check_blob_counts(2, 1)


CONV_ERRORS = [
    ("channels_not_multiple_of_group", (1, 3, 5, 5), "num_output: 4 kernel_size: 3 group: 2",
     "the 3 input channels are not a multiple of group 2"),
    ("num_output_not_multiple_of_group", (1, 4, 5, 5), "num_output: 3 kernel_size: 3 group: 2",
     "num_output 3 is not a multiple of group 2"),
    ("num_output_missing", (1, 4, 5, 5), "kernel_size: 3", "num_output must be > 0, got 0"),
    ("group_zero", (1, 4, 5, 5), "num_output: 2 kernel_size: 3 group: 0", "group must be > 0"),
    ("kernel_missing", (1, 4, 5, 5), "num_output: 2", r"kernel_size must be > 0 on every spatial axis, got \[0, 0\]"),
    ("kernel_zero_hw", (1, 4, 5, 5), "num_output: 2 kernel_h: 0 kernel_w: 3", "kernel_size must be > 0"),
    ("kernel_both_spellings", (1, 4, 5, 5), "num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3",
     "either kernel_size or kernel_h/kernel_w"),
    ("kernel_h_alone", (1, 4, 5, 5), "num_output: 2 kernel_h: 3", "kernel_h and kernel_w must both be given"),
    ("kernel_hw_in_3d", (1, 4, 5, 5, 5), "num_output: 2 kernel_h: 3 kernel_w: 3", "2 spatial axes, got 3"),
    ("kernel_three_values_2d", (1, 4, 5, 5), "num_output: 2 kernel_size: 1 kernel_size: 2 kernel_size: 3",
     "once per spatial axis"),
    ("stride_zero", (1, 4, 5, 5), "num_output: 2 kernel_size: 3 stride: 0", "stride must be > 0"),
    ("dilation_zero", (1, 4, 5, 5), "num_output: 2 kernel_size: 3 dilation: 0", "dilation must be > 0"),
    ("no_spatial_axes", (4, 5), "num_output: 2 kernel_size: 3", "leaving 0 spatial axes"),
    ("four_spatial_axes", (1, 2, 3, 3, 3, 3), "num_output: 2 kernel_size: 1", "leaving 4 spatial axes"),
    ("axis_out_of_range", (1, 4, 5, 5), "num_output: 2 kernel_size: 3 axis: 4", "axis 4 is out of range"),
]


@pytest.mark.parametrize("shape,fields,message", [c[1:] for c in CONV_ERRORS], ids=[c[0] for c in CONV_ERRORS])
def test_convolution_errors(shape, fields, message):
    with pytest.raises(LayerError, match=r'Convolution layer "c": .*' + message):
        make_layer(conv_fields(fields), [shape])


def test_convolution_errors_at_forward():
    layer = make_layer(conv_text(num_output=2, kernel_size=3), [(1, 4, 5, 5)])
    with pytest.raises(LayerError, match=r"set up for 4 channels on axis 1, got a bottom of shape \(1, 3, 5, 5\)"):
        layer(torch.zeros(1, 3, 5, 5))
    with pytest.raises(LayerError, match="has 5 axes, but the layer was set up for 4"):
        layer(torch.zeros(1, 4, 5, 5, 5))
    with pytest.raises(LayerError, match=r"output spatial size \[-1, -1\] is empty"):
        layer(torch.zeros(1, 4, 1, 1))  # (1 - 3) / 1 + 1 = -1 (Caffe would abort on a negative size)


# ==================================================================================================== Deconvolution
DECONV_CASES = {
    "plain": ((2, 4, 4, 4), "num_output: 3 kernel_size: 3", (1, 1), (0, 0), (1, 1), 1),
    "upsample_k4_s2_p1": ((1, 2, 3, 5), "num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 2), (1, 1), (1, 1), 1),
    "group2_dilation2_stride3": ((2, 4, 3, 3), "num_output: 6 kernel_size: 3 group: 2 dilation: 2 stride: 3",
                                 (3, 3), (0, 0), (2, 2), 2),
    "pad_beyond_half_kernel": ((1, 2, 5, 5), "num_output: 1 kernel_size: 3 pad: 2", (1, 1), (2, 2), (1, 1), 1),
    "hw_spellings": ((1, 2, 3, 4), "num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1",
                     (2, 1), (0, 1), (1, 1), 1),
    "deconv1d": ((2, 3, 5), "num_output: 2 kernel_size: 3 stride: 2", (2,), (0,), (1,), 1),
    "deconv3d": ((1, 2, 2, 3, 2), "num_output: 2 kernel_size: 2 stride: 2 bias_term: false", (2, 2, 2), (0, 0, 0),
                 (1, 1, 1), 1),
}


@pytest.mark.parametrize("name", list(DECONV_CASES))
def test_deconvolution_matches_numpy(name):
    shape, fields, stride, pad, dil, group = DECONV_CASES[name]
    layer = filled_conv("Deconvolution", shape, fields).double()
    x = rng(6).standard_normal(shape)
    w = layer.blobs[0].detach().numpy()
    b = layer.blobs[1].detach().numpy() if len(layer.blobs) > 1 else None
    assert w.shape[:2] == (shape[1], w.shape[1]), "Deconvolution weight is (C_in, num_output / group, k...)"
    (y,) = run(layer, x)
    assert_blob_close(y, np_deconv(x, w, b, stride, pad, dil, group), rtol=1e-10, atol=1e-10, name=name)


@pytest.mark.parametrize("name", ["group2_dilation2_stride3", "upsample_k4_s2_p1", "deconv1d"])
def test_deconvolution_gradient(name):
    shape, fields, *_ = DECONV_CASES[name]
    check_gradient(filled_conv("Deconvolution", shape, fields), [rng(7).standard_normal(shape)])


def test_deconvolution_blob_shapes_and_empty_output():
    layer = make_layer(conv_text("Deconvolution", num_output=6, kernel_size=3, group=2), [(1, 4, 3, 3)])
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 3, 3, 3), (6,)]
    tight = make_layer(conv_text("Deconvolution", num_output=1, kernel_size=3, pad=2), [(1, 1, 2, 2)])
    with pytest.raises(LayerError, match=r'Deconvolution layer "c": output spatial size \[0, 0\] is empty'):
        tight.infer_top_shapes([(1, 1, 2, 2)])


# ============================================================================================================== LRN
LRN_CASES = {
    "across_n5_default_k": ("norm_region: ACROSS_CHANNELS local_size: 5 alpha: 0.3 beta: 0.75", 5, 0.3, 0.75, 1.0),
    "across_n3_k2": ("local_size: 3 alpha: 0.5 beta: 0.6 k: 2", 3, 0.5, 0.6, 2.0),
    "across_n1": ("local_size: 1 alpha: 0.2 beta: 1.5", 1, 0.2, 1.5, 1.0),
    "across_wider_than_channels": ("local_size: 7 alpha: 1 beta: 0.75", 7, 1.0, 0.75, 1.0),
    "within_n3": ("norm_region: WITHIN_CHANNEL local_size: 3 alpha: 0.4 beta: 0.75", 3, 0.4, 0.75, 1.0),
    "within_n5_k_ignored": ("norm_region: WITHIN_CHANNEL local_size: 5 alpha: 2 beta: 0.5 k: 7", 5, 2.0, 0.5, 7.0),
}


@pytest.mark.parametrize("name", list(LRN_CASES))
def test_lrn_matches_numpy(name):
    fields, n, alpha, beta, k = LRN_CASES[name]
    region = "WITHIN_CHANNEL" if "WITHIN" in fields else "ACROSS_CHANNELS"
    layer = make_layer(f'type: "LRN" name: "n" lrn_param {{ {fields} }}', [(2, 4, 5, 6)])
    x = rng(11).standard_normal((2, 4, 5, 6))
    # alpha is stored as a float in the proto, so the reference uses the same rounded value.
    alpha = float(np.float32(alpha))
    (y,) = run(layer, x)
    assert_blob_close(y, np_lrn(x, region, n, alpha, float(np.float32(beta)), k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["across_n5_default_k", "across_n3_k2", "within_n3"])
def test_lrn_gradient(name):
    layer = make_layer(f'type: "LRN" name: "n" lrn_param {{ {LRN_CASES[name][0]} }}', [(2, 4, 3, 4)])
    check_gradient(layer, [rng(12).standard_normal((2, 4, 3, 4))])


@pytest.mark.parametrize("fields,shape,message", [
    ("local_size: 4", (1, 4, 3, 3), "local_size must be odd, got 4"),
    ("norm_region: WITHIN_CHANNEL local_size: 2", (1, 4, 3, 3), "local_size must be odd, got 2"),
    ("", (4, 3, 3), r'bottom "x" has 3 axes, LRN needs 4'),
], ids=["even_across", "even_within", "three_axes"])
def test_lrn_errors(fields, shape, message):
    with pytest.raises(LayerError, match=r'LRN layer "n": ' + message):
        make_layer(f'type: "LRN" name: "n" bottom: "x" lrn_param {{ {fields} }}', [shape])


# ============================================================================================================= Crop
def crop_text(fields=""):
    return f'type: "Crop" name: "c" bottom: "x" bottom: "ref" top: "y" crop_param {{ {fields} }}'


CROP_CASES = [
    ("default_axis2_no_offset", "", (2, 3, 7, 8), (1, 1, 4, 5), (slice(None), slice(None), slice(0, 4), slice(0, 5))),
    ("axis1_one_offset", "axis: 1 offset: 1", (2, 4, 8, 8), (1, 2, 5, 4),
     (slice(None), slice(1, 3), slice(1, 6), slice(1, 5))),
    ("axis2_offset_per_axis", "offset: 2 offset: 1", (2, 3, 7, 8), (9, 9, 4, 5),
     (slice(None), slice(None), slice(2, 6), slice(1, 6))),
    ("axis_negative", "axis: -1 offset: 3", (2, 3, 7, 8), (1, 1, 1, 5), (Ellipsis, slice(3, 8))),
    ("axis0_everything", "axis: 0 offset: 1 offset: 0 offset: 2 offset: 3", (2, 3, 7, 8), (1, 3, 4, 5),
     (slice(1, 2), slice(0, 3), slice(2, 6), slice(3, 8))),
    ("ref_with_more_axes", "axis: 1", (2, 3, 4), (5, 2, 2, 9), (slice(None), slice(0, 2), slice(0, 2))),
]


@pytest.mark.parametrize("fields,shape,ref_shape,window", [c[1:] for c in CROP_CASES],
                         ids=[c[0] for c in CROP_CASES])
def test_crop_forward_and_gradient(fields, shape, ref_shape, window):
    layer = make_layer(crop_text(fields), [shape, ref_shape])
    x = rng(13).standard_normal(shape)
    (y,) = run(layer, x, np.zeros(ref_shape))
    assert_blob_close(y, x[window])
    assert layer.infer_top_shapes([shape, ref_shape]) == [x[window].shape]
    check_gradient(layer, [x, np.zeros(ref_shape)], grad_bottoms=[0], max_elements=100)


def test_crop_gives_no_gradient_to_the_reference():
    layer = make_layer(crop_text("offset: 1"), [(1, 2, 5, 5), (1, 2, 3, 3)])
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    ref = torch.randn(1, 2, 3, 3, requires_grad=True)
    gx, gref = torch.autograd.grad(layer(x, ref).sum(), [x, ref], allow_unused=True)
    assert gref is None
    assert gx.sum().item() == 18 and gx[0, :, 1:4, 1:4].eq(1).all()
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)


@pytest.mark.parametrize("fields,shape,ref_shape,message", [
    ("offset: 2", (1, 2, 5, 5), (1, 2, 4, 4), "the crop of axis 2 is out of bounds: size 4 at offset 2 does not "
                                               "fit in 5"),
    ("", (1, 2, 5, 5), (1, 2, 6, 5), "the crop of axis 2 is out of bounds: size 6 at offset 0"),
    ("offset: 1 offset: 1 offset: 1", (1, 2, 5, 5), (1, 2, 3, 3), r"offset must be given once or once per cropped "
                                                                  r"axis \(2 from axis 2\), got 3 values"),
    ("axis: 4", (1, 2, 5, 5), (1, 2, 3, 3), "axis 4 is out of range for a bottom with 4 axes"),
    ("", (1, 2, 5, 5), (3, 3), r'bottom "ref" has 2 axes, Crop needs at least 4'),
], ids=["offset_too_big", "ref_bigger", "offset_count", "axis_out_of_range", "ref_fewer_axes"])
def test_crop_errors(fields, shape, ref_shape, message):
    with pytest.raises(LayerError, match=r'Crop layer "c": ' + message):
        make_layer(crop_text(fields), [shape, ref_shape])


# ====================================================================================================== all layers
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution", "Pooling", "LRN", "Crop"])
def test_registered(kind):
    assert layer_class(kind).type == kind


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_dtype_is_kept(dtype):
    shape = (1, 2, 5, 5)
    layers = [filled_conv("Convolution", shape, "num_output: 2 kernel_size: 3 pad: 1"),
              filled_conv("Deconvolution", shape, "num_output: 2 kernel_size: 3 pad: 1"),
              make_layer(pool_text("pool: AVE kernel_size: 3 stride: 2 pad: 1"), [shape]),
              make_layer(pool_text("pool: MAX kernel_size: 3 stride: 2 pad: 1", 2), [shape]),
              make_layer('type: "LRN" name: "n"', [shape])]
    x = torch.randn(shape, dtype=dtype)
    for layer in layers:
        for top in as_tuple(layer.to(dtype)(x)):
            assert top.dtype == dtype, layer.type


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    shape = (2, 4, 9, 7)
    layers = [filled_conv("Convolution", shape, "num_output: 4 kernel_size: 3 group: 2 dilation: 2"),
              filled_conv("Deconvolution", shape, "num_output: 2 kernel_size: 4 stride: 2 pad: 1"),
              make_layer(pool_text("pool: AVE kernel_size: 3 stride: 2 pad: 2"), [shape]),
              make_layer(pool_text("pool: MAX kernel_size: 1 stride: 3", 2), [shape]),
              make_layer('type: "LRN" name: "n" lrn_param { norm_region: WITHIN_CHANNEL }', [shape])]
    x = torch.randn(shape)
    for layer in layers:
        cpu = as_tuple(layer(x))
        gpu = as_tuple(layer.cuda()(x.cuda()))
        for a, b in zip(cpu, gpu):
            assert_blob_close(b, a.detach().numpy(), rtol=1e-5, atol=1e-5, name=layer.type)
