"""Normalisation and affine layers (layers/norm.py): BatchNorm, Scale, Bias.

Each layer is checked against real Caffe output (tests/fixtures/layers/<case>), against a NumPy reference for the
parameters the fixtures do not cover, by float64 central differences, and on its edge cases and errors.
"""
import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import Case, assert_blob_close, check_gradient, forward, make_layer, rand

from caffelike.errors import LayerError

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def set_blobs(layer, *values):
    for blob, value in zip(layer.blobs, values):
        blob.data.copy_(torch.as_tensor(np.asarray(value, np.float32)).reshape(blob.shape))


# ------------------------------------------------------------------------------------------- real-Caffe fixtures
def fixture_layer(case: Case, layer_name: str):
    """The case's layer, built in the case's phase, with the caffemodel's (pre-forward) blobs."""
    net = case.net_param()
    (lp,) = [lp for lp in net.layer if lp.name == layer_name]
    phase = TRAIN if case.meta["phase"] == "TRAIN" else TEST
    layer = make_layer(text_format.MessageToString(lp), [case.data(b).shape for b in lp.bottom], phase)
    set_blobs(layer, *case.stored_weights().get(layer_name, []))
    return layer


@pytest.mark.parametrize("name,layer_name", [
    ("batchnorm_test", "bn"), ("batchnorm_train", "bn"), ("scale", "scale"), ("bias", "bias"),
], ids=["batchnorm_test", "batchnorm_train", "scale", "bias"])
def test_matches_caffe_fixture(name, layer_name):
    case = Case.load("layers", name)
    layer = fixture_layer(case, layer_name)
    tol = case.tolerance
    x = torch.tensor(case.data("x"), requires_grad=True)
    y = layer(x)
    assert_blob_close(y, case.data("y"), name="y", **tol)
    y.backward(torch.from_numpy(case.output_diff("y")))
    assert_blob_close(x.grad, case.diff("x"), name="x diff", **tol)
    for i, blob in enumerate(layer.blobs):
        # BatchNorm's statistics get no gradient at all; Caffe leaves their diff at 0.
        grad = blob.grad if blob.grad is not None else torch.zeros_like(blob)
        assert_blob_close(grad, case.param_diff(layer_name, i), name=f"param {i} diff", **tol)
        assert_blob_close(blob, case.param_data(layer_name, i), name=f"param {i} data", **tol)


def test_batchnorm_train_fixture_updates_the_stored_blobs():
    case = Case.load("layers", "batchnorm_train")
    before = case.stored_weights()["bn"]
    layer = fixture_layer(case, "bn")
    assert_blob_close(layer.blobs[2], before[2], name="scale factor before")
    assert float(before[2][0]) == 5.0
    forward(layer, case.data("x"))
    for i, name in enumerate(["mean accumulator", "variance accumulator", "scale factor"]):
        assert_blob_close(layer.blobs[i], case.param_data("bn", i), rtol=1e-6, atol=1e-7, name=name)
        assert not np.allclose(before[i], case.param_data("bn", i)), f"{name} should have changed"


def test_batchnorm_test_fixture_leaves_the_blobs_alone():
    case = Case.load("layers", "batchnorm_test")
    layer = fixture_layer(case, "bn")
    forward(layer, case.data("x"))
    for i, stored in enumerate(case.stored_weights()["bn"]):
        assert_blob_close(layer.blobs[i], stored, name=f"blob {i}")


# ---------------------------------------------------------------------------------------------------- BatchNorm
def np_batchnorm(x, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 2, 2, 3)], ids=["2d", "3d", "5d"])
def test_batchnorm_batch_stats_any_rank(shape):
    x = rand(shape, seed=1).astype(np.float64)
    layer = make_layer('type: "BatchNorm" batch_norm_param { eps: 0.01 }', [shape], TRAIN).double()
    mean, var = batch_stats(x)
    eps = float(np.float32(0.01))  # eps is a float in caffe.proto
    assert_blob_close(forward(layer, x), np_batchnorm(x, mean, var, eps), rtol=1e-12, atol=1e-12, name="y")
    m = x.size // shape[1]
    assert_blob_close(layer.blobs[0], mean, rtol=1e-12, atol=1e-14, name="mean accumulator")
    assert_blob_close(layer.blobs[1], var * m / (m - 1), rtol=1e-12, atol=1e-14, name="variance accumulator")
    assert_blob_close(layer.blobs[2], [1.0], name="scale factor")


def test_batchnorm_moving_average_over_two_passes():
    x1, x2 = rand((4, 2, 3), seed=2, dtype=np.float64), rand((4, 2, 3), seed=3, dtype=np.float64)
    layer = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 }',
                       [x1.shape], TRAIN).double()
    forward(layer, x1)
    forward(layer, x2)
    (m1, v1), (m2, v2) = batch_stats(x1), batch_stats(x2)
    correction = 12 / 11
    assert_blob_close(layer.blobs[0], 0.5 * m1 + m2, rtol=1e-12, name="mean accumulator")
    assert_blob_close(layer.blobs[1], correction * (0.5 * v1 + v2), rtol=1e-12, name="variance accumulator")
    assert_blob_close(layer.blobs[2], [1.5], name="scale factor")
    # In TEST the accumulators are normalised by the scale factor: a weighted average of the batch statistics.
    layer.phase = TEST
    expected = np_batchnorm(x1, (0.5 * m1 + m2) / 1.5, correction * (0.5 * v1 + v2) / 1.5)
    assert_blob_close(forward(layer, x1), expected, rtol=1e-12, atol=1e-12, name="y with global stats")


def test_batchnorm_single_value_per_channel_skips_the_bias_correction():
    # m = count / C = 1: Caffe uses the factor 1 instead of m / (m - 1).
    x = np.array([[1.0, -2.0, 4.0]], np.float32)
    layer = make_layer('type: "BatchNorm"', [x.shape], TRAIN)
    assert_blob_close(forward(layer, x), np.zeros_like(x), name="y")
    assert_blob_close(layer.blobs[0], x[0], name="mean accumulator")
    assert_blob_close(layer.blobs[1], np.zeros(3, np.float32), name="variance accumulator")


@pytest.mark.parametrize("scale_factor", [0.0, 1.0, 4.0], ids=["s0", "s1", "s4"])
def test_batchnorm_global_stats_divide_by_the_scale_factor(scale_factor):
    x = rand((2, 3, 4), seed=4)
    layer = make_layer('type: "BatchNorm"', [x.shape], TEST)
    mean_acc, var_acc = np.array([0.4, -1.2, 2.0]), np.array([2.0, 0.8, 6.0])
    set_blobs(layer, mean_acc, var_acc, [scale_factor])
    factor = 0.0 if scale_factor == 0 else 1.0 / scale_factor
    expected = np_batchnorm(x.astype(np.float64), mean_acc * factor, var_acc * factor)
    assert_blob_close(forward(layer, x), expected.astype(np.float32), rtol=1e-6, atol=1e-6, name="y")
    assert_blob_close(layer.blobs[2], np.array([scale_factor], np.float32), name="scale factor unchanged")


@pytest.mark.parametrize("phase,use_global,updates", [
    (TRAIN, None, True), (TEST, None, False), (TRAIN, True, False), (TEST, False, True),
], ids=["train_default", "test_default", "train_explicit_global", "test_explicit_batch"])
def test_batchnorm_use_global_stats_default_and_override(phase, use_global, updates):
    text = 'type: "BatchNorm"'
    if use_global is not None:
        text += f" batch_norm_param {{ use_global_stats: {str(use_global).lower()} }}"
    x = rand((3, 2, 4), seed=5)
    layer = make_layer(text, [x.shape], phase)
    set_blobs(layer, [0.5, -0.5], [2.0, 3.0], [1.0])
    y = forward(layer, x).numpy()
    assert layer.use_global_stats == (not updates)
    if updates:
        assert_blob_close(y, np_batchnorm(x, *batch_stats(x)), rtol=1e-5, atol=1e-5, name="y (batch stats)")
        assert float(layer.blobs[2]) == pytest.approx(1.999)
    else:
        expected = np_batchnorm(x, np.array([0.5, -0.5]), np.array([2.0, 3.0]))
        assert_blob_close(y, expected.astype(np.float32), rtol=1e-6, atol=1e-6, name="y (global stats)")
        assert float(layer.blobs[2]) == 1.0


def test_batchnorm_shape_inference_does_not_update_the_blobs():
    layer = make_layer('type: "BatchNorm"', [(4, 3, 2, 2)], TRAIN)
    assert layer.infer_top_shapes([(4, 3, 2, 2)]) == [(4, 3, 2, 2)]
    for blob in layer.blobs:
        assert not blob.is_meta and float(blob.abs().sum()) == 0.0


def test_batchnorm_blobs_are_zero_statistics_without_gradient():
    layer = make_layer('type: "BatchNorm"', [(2, 5, 3)], TRAIN)
    assert [tuple(b.shape) for b in layer.blobs] == [(5,), (5,), (1,)]
    assert all(not b.requires_grad and float(b.abs().sum()) == 0.0 for b in layer.blobs)


def test_batchnorm_appends_lr_mult_zero_like_caffe():
    layer = make_layer('type: "BatchNorm"', [(2, 3)])
    assert len(layer.param.param) == 3
    for spec in layer.param.param:
        assert spec.lr_mult == 0.0
        # Caffe sets lr_mult only; decay_mult keeps its default (irrelevant with a zero rate).
        assert not spec.HasField("decay_mult") and spec.decay_mult == 1.0


def test_batchnorm_keeps_given_zero_param_specs_and_completes_them():
    layer = make_layer('type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 name: "m" }', [(2, 3)])
    assert [s.lr_mult for s in layer.param.param] == [0.0, 0.0, 0.0]
    assert layer.param.param[0].name == "m" and layer.param.param[0].decay_mult == 0.0
    assert not layer.param.param[1].HasField("decay_mult")


@pytest.mark.parametrize("params,index,lr", [
    ("param { lr_mult: 1 }", 0, "1"),
    ("param { lr_mult: 0 } param { lr_mult: 0.5 }", 1, "0.5"),
    ("param { lr_mult: 0 } param { lr_mult: 0 } param { }", 2, "1"),
], ids=["first", "second", "default_lr_mult"])
def test_batchnorm_rejects_a_learning_rate(params, index, lr):
    with pytest.raises(LayerError, match=rf'BatchNorm layer "batchnorm": BatchNorm parameters have no learning '
                                         rf'rate: param {index} has lr_mult {lr}, expected 0'):
        make_layer(f'type: "BatchNorm" {params}', [(2, 3)])


def test_batchnorm_rejects_one_axis():
    with pytest.raises(LayerError, match=r"bottom must have at least 2 axes \(N, C, \.\.\.\), got shape \(4\)"):
        make_layer('type: "BatchNorm"', [(4,)])


def test_batchnorm_rejects_zero_channels():
    # Found by tests/test_fuzz.py: a (4, 0) bottom in TRAIN made the forward divide by zero (ZeroDivisionError).
    with pytest.raises(LayerError, match=r'BatchNorm layer "batchnorm": bottom has 0 channels \(axis 1 of shape '
                                         r"\(4, 0\)\); BatchNorm needs at least 1"):
        make_layer('type: "BatchNorm"', [(4, 0)], phase=caffe_pb2.TRAIN)


def test_batchnorm_rejects_a_channel_mismatch():
    layer = make_layer('type: "BatchNorm"', [(2, 3, 4)])
    with pytest.raises(LayerError, match=r"bottom has 5 channels \(shape \(2, 5, 4\)\) but the statistics blobs "
                                         r"have shapes \(3\) and \(3\)"):
        forward(layer, rand((2, 5, 4)))


@pytest.mark.parametrize("phase", [TRAIN, TEST], ids=["batch_stats", "global_stats"])
def test_batchnorm_gradient(phase):
    x = rand((3, 2, 2, 3), seed=6, dtype=np.float64)
    layer = make_layer('type: "BatchNorm"', [x.shape], phase)
    set_blobs(layer, [0.3, -0.7], [1.5, 0.6], [2.0])
    check_gradient(layer, [x])


def test_batchnorm_gradient_matches_caffe_formula():
    # Caffe's batch-stats backward: (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps), per channel.
    x, dy = rand((4, 3, 5), seed=7, dtype=np.float64), rand((4, 3, 5), seed=8, dtype=np.float64)
    layer = make_layer('type: "BatchNorm"', [x.shape], TRAIN).double()
    xt = torch.tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(torch.tensor(dy))
    yv = y.detach().numpy()
    axes = (0, 2)
    mean, var = batch_stats(x)
    expected = (dy - dy.mean(axis=axes, keepdims=True) - (dy * yv).mean(axis=axes, keepdims=True) * yv) \
        / np.sqrt(var.reshape(1, -1, 1) + 1e-5)
    assert_blob_close(xt.grad, expected, rtol=1e-10, atol=1e-12, name="x diff")


# -------------------------------------------------------------------------------------------------- Scale, Bias
def np_broadcast(operand, x_ndim, axis):
    operand = np.asarray(operand)
    return operand.reshape((1,) * axis + operand.shape + (1,) * (x_ndim - axis - operand.ndim))


SCALE_CASES = {
    # name: (scale_param text, bottom shape, expected blob shapes, axis where the scale starts)
    "default_axis_1": ("", (2, 3, 4), [(3,)], 1),
    "axis_0_two_axes": ("axis: 0 num_axes: 2", (2, 3, 4), [(2, 3)], 0),
    "negative_axis": ("axis: -1", (2, 3, 4), [(4,)], 2),
    "to_the_end": ("axis: 1 num_axes: -1", (2, 3, 4, 2), [(3, 4, 2)], 1),
    "scalar": ("axis: 2 num_axes: 0", (2, 3, 4), [()], 0),
    "with_bias": ("axis: 1 num_axes: 2 bias_term: true", (2, 3, 4, 5), [(3, 4), (3, 4)], 1),
    "scalar_with_bias": ("num_axes: 0 bias_term: true", (2, 3), [(), ()], 0),
}


@pytest.mark.parametrize("name", list(SCALE_CASES))
def test_scale_one_bottom_matches_numpy_reference(name):
    text, shape, blob_shapes, start = SCALE_CASES[name]
    fillers = 'filler { type: "uniform" min: -2 max: 2 } bias_filler { type: "uniform" min: -1 max: 1 }'
    layer = make_layer(f'type: "Scale" scale_param {{ {text} {fillers} }}', [shape])
    assert [tuple(b.shape) for b in layer.blobs] == blob_shapes
    x = rand(shape, seed=9)
    scale = layer.blobs[0].detach().numpy()
    expected = x * np_broadcast(scale, x.ndim, start)
    if len(blob_shapes) == 2:
        expected = expected + np_broadcast(layer.blobs[1].detach().numpy(), x.ndim, start)
    assert_blob_close(forward(layer, x), expected, name="y")


def test_scale_default_fillers_are_one_and_zero():
    layer = make_layer('type: "Scale" scale_param { bias_term: true }', [(2, 3, 4)])
    assert_blob_close(layer.blobs[0], np.ones(3, np.float32), name="scale")
    assert_blob_close(layer.blobs[1], np.zeros(3, np.float32), name="bias")
    x = rand((2, 3, 4), seed=10)
    assert_blob_close(forward(layer, x), x, name="identity")


@pytest.mark.parametrize("scale_shape,axis,bias_term", [
    ((3,), 1, False), ((3, 4), 1, True), ((2, 3), 0, True), ((4,), -1, False), ((), 1, True),
], ids=["channel", "two_axes_bias", "axis_0_bias", "last_axis", "scalar_bias"])
def test_scale_two_bottoms(scale_shape, axis, bias_term):
    x = rand((2, 3, 4), seed=11)
    s = rand(scale_shape, seed=12)
    text = f'type: "Scale" scale_param {{ axis: {axis} bias_term: {str(bias_term).lower()} ' \
           f'bias_filler {{ type: "uniform" min: -1 max: 1 }} }}'
    layer = make_layer(text, [x.shape, s.shape])
    start = 0 if not scale_shape else axis % 3
    assert [tuple(b.shape) for b in layer.blobs] == ([scale_shape] if bias_term else [])
    expected = x * np_broadcast(s, 3, start)
    if bias_term:
        expected = expected + np_broadcast(layer.blobs[0].detach().numpy(), 3, start)
    assert_blob_close(forward(layer, x, s), expected, name="y")


@pytest.mark.parametrize("text,shapes", [
    ('scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('scale_param { axis: 0 num_axes: -1 filler { type: "gaussian" } }', [(2, 3, 2)]),
    ('scale_param { num_axes: 0 filler { type: "gaussian" } }', [(2, 3, 2)]),
    ('scale_param { axis: 1 bias_term: true bias_filler { type: "gaussian" } }', [(2, 3, 4), (3, 4)]),
], ids=["learned_with_bias", "learned_all_axes", "learned_scalar", "bottom_scale_with_bias"])
def test_scale_gradient(text, shapes):
    bottoms = [rand(s, seed=13 + i, dtype=np.float64) for i, s in enumerate(shapes)]
    check_gradient(make_layer(f'type: "Scale" {text}', shapes), bottoms)


BIAS_CASES = {
    "default_axis_1": ("", (2, 3, 4), (3,), 1),
    "to_the_end": ("axis: 1 num_axes: -1", (2, 3, 4), (3, 4), 1),
    "axis_0": ("axis: 0 num_axes: 1", (2, 3, 4), (2,), 0),
    "negative_axis": ("axis: -2 num_axes: 2", (2, 3, 4), (3, 4), 1),
    "scalar": ("num_axes: 0", (2, 3, 4), (), 0),
}


@pytest.mark.parametrize("name", list(BIAS_CASES))
def test_bias_one_bottom_matches_numpy_reference(name):
    text, shape, blob_shape, start = BIAS_CASES[name]
    layer = make_layer(f'type: "Bias" bias_param {{ {text} filler {{ type: "uniform" min: -1 max: 1 }} }}', [shape])
    assert [tuple(b.shape) for b in layer.blobs] == [blob_shape]
    x = rand(shape, seed=14)
    expected = x + np_broadcast(layer.blobs[0].detach().numpy(), x.ndim, start)
    assert_blob_close(forward(layer, x), expected, name="y")


def test_bias_default_filler_is_zero():
    layer = make_layer('type: "Bias"', [(2, 3)])
    assert_blob_close(layer.blobs[0], np.zeros(3, np.float32), name="bias")


@pytest.mark.parametrize("bias_shape,axis", [((3,), 1), ((2, 3), 0), ((3, 4), -2), ((), 2)],
                         ids=["channel", "axis_0", "negative_axis", "scalar"])
def test_bias_two_bottoms(bias_shape, axis):
    x, b = rand((2, 3, 4), seed=15), rand(bias_shape, seed=16)
    layer = make_layer(f'type: "Bias" bias_param {{ axis: {axis} }}', [x.shape, b.shape])
    assert len(layer.blobs) == 0
    start = 0 if not bias_shape else axis % 3
    assert_blob_close(forward(layer, x, b), x + np_broadcast(b, 3, start), name="y")


@pytest.mark.parametrize("text,shapes", [
    ('bias_param { filler { type: "gaussian" } }', [(2, 3, 4)]),
    ('bias_param { axis: 1 num_axes: -1 filler { type: "gaussian" } }', [(2, 3, 2)]),
    ('bias_param { axis: 0 }', [(2, 3, 4), (2, 3)]),
], ids=["learned", "learned_to_the_end", "bottom_bias"])
def test_bias_gradient(text, shapes):
    bottoms = [rand(s, seed=17 + i, dtype=np.float64) for i, s in enumerate(shapes)]
    check_gradient(make_layer(f'type: "Bias" {text}', shapes), bottoms)


@pytest.mark.parametrize("layer_type", ["Scale", "Bias"])
def test_second_bottom_must_fit(layer_type):
    with pytest.raises(LayerError, match=rf'{layer_type} layer "{layer_type.lower()}": bottom\[1\] .* of shape '
                                         r"\(3, 5\) does not fit bottom\[0\] of shape \(2, 3, 4\) from axis 1: "
                                         r"expected shape \(3, 4\)"):
        make_layer(f'type: "{layer_type}"', [(2, 3, 4), (3, 5)])


@pytest.mark.parametrize("layer_type", ["Scale", "Bias"])
def test_second_bottom_is_checked_again_in_forward(layer_type):
    layer = make_layer(f'type: "{layer_type}"', [(2, 3, 4), (3,)])
    with pytest.raises(LayerError, match=r"of shape \(4\) does not fit the bottom of shape \(2, 3, 4\) from axis 1: "
                                         r"expected shape \(3\)"):
        forward(layer, rand((2, 3, 4)), rand((4,)))


@pytest.mark.parametrize("layer_type", ["Scale", "Bias"])
@pytest.mark.parametrize("text,message", [
    ("axis: 1 num_axes: 3", r"blob's shape extends past bottom\[0\]'s shape \(2, 3, 4\) when applied from axis 1"),
    ("num_axes: -2", r"num_axes must be non-negative, or -1 to extend to the end of bottom\[0\], got -2"),
    ("axis: 3", r"axis 3 is out of range for a bottom with 3 axes"),
    ("axis: -4", r"axis -4 is out of range for a bottom with 3 axes"),
], ids=["too_many_axes", "num_axes_below_minus_1", "axis_too_big", "axis_too_negative"])
def test_bad_axes_are_rejected(layer_type, text, message):
    field = "scale_param" if layer_type == "Scale" else "bias_param"
    with pytest.raises(LayerError, match=message):
        make_layer(f'type: "{layer_type}" {field} {{ {text} }}', [(2, 3, 4)])


@pytest.mark.parametrize("layer_type", ["Scale", "Bias"])
def test_learned_blob_that_no_longer_fits_is_reported(layer_type):
    layer = make_layer(f'type: "{layer_type}"', [(2, 3, 4)])
    with pytest.raises(LayerError, match=rf'{layer_type} layer .*: .* of shape \(3\) does not fit the bottom of '
                                         r"shape \(2, 5, 4\) from axis 1"):
        forward(layer, rand((2, 5, 4)))


@pytest.mark.parametrize("text", ['type: "Scale" scale_param { bias_term: true }', 'type: "Bias"',
                                  'type: "BatchNorm"'], ids=["scale", "bias", "batchnorm"])
def test_meta_shape_inference_and_float64(text):
    layer = make_layer(text, [(2, 3, 4)], TRAIN)
    assert layer.infer_top_shapes([(2, 3, 4)]) == [(2, 3, 4)]
    y = forward(layer.double(), rand((2, 3, 4), seed=18, dtype=np.float64))
    assert y.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("text,phase", [
    ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } }', TEST),
    ('type: "Bias" bias_param { filler { type: "gaussian" } }', TEST),
    ('type: "BatchNorm"', TRAIN),
], ids=["scale", "bias", "batchnorm_train"])
def test_cuda_matches_cpu(text, phase):
    x = rand((2, 3, 4, 5), seed=19)
    cpu = make_layer(text, [x.shape], phase)
    gpu = make_layer(text, [x.shape], phase)
    gpu.load_state_dict(cpu.state_dict())
    gpu.cuda()
    expected = forward(cpu, x)
    got = forward(gpu, torch.tensor(x).cuda())
    assert_blob_close(got.cpu(), expected.numpy(), rtol=1e-5, atol=1e-6, name="y")
    for a, b in zip(gpu.blobs, cpu.blobs):
        assert_blob_close(a.detach().cpu(), b.detach().numpy(), rtol=1e-5, atol=1e-6, name="blob")
