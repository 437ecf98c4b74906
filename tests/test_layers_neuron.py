"""Neuron layers (layers/neuron.py): ReLU, PReLU, ELU, Sigmoid, TanH, Power, Dropout.

Each layer is checked against real Caffe output (tests/fixtures/layers/<case>), against a NumPy reference for the
parameters the fixtures do not cover, by float64 central differences, and on its edge cases and errors.
"""
import numpy as np
import pytest
import torch
from caffelike.layers import layer_class
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import Case, as_tuple, assert_blob_close, check_gradient, forward, make_layer, rand

from caffelike.errors import LayerError

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def input_grad(layer, x, dy):
    """dL/dx for L = <layer(x), dy>."""
    x = torch.tensor(x, requires_grad=True)
    layer(x).backward(torch.as_tensor(dy))
    return x.grad


# ------------------------------------------------------------------------------------------- real-Caffe fixtures
def fixture_layer(case: Case, layer_name: str):
    """The case's layer, built in the case's phase, with the caffemodel's (pre-forward) blobs."""
    net = case.net_param()
    (lp,) = [lp for lp in net.layer if lp.name == layer_name]
    phase = TRAIN if case.meta["phase"] == "TRAIN" else TEST
    shapes = [case.data(b).shape for b in lp.bottom]
    layer = make_layer(text_format.MessageToString(lp), shapes, phase)
    for blob, stored in zip(layer.blobs, case.stored_weights().get(layer_name, [])):
        blob.data.copy_(torch.from_numpy(stored))
    return layer


FIXTURES = ["relu", "relu_leaky", "prelu", "elu", "sigmoid", "tanh", "power", "dropout"]


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_caffe_fixture(name):
    case = Case.load("layers", name)
    layer = fixture_layer(case, name)
    x = torch.tensor(case.data("x"), requires_grad=True)
    y = layer(x)
    assert_blob_close(y, case.data("y"), name="y", **case.tolerance)
    y.backward(torch.from_numpy(case.output_diff("y")))
    assert_blob_close(x.grad, case.diff("x"), name="x diff", **case.tolerance)
    for i, blob in enumerate(layer.blobs):
        assert_blob_close(blob.grad, case.param_diff(name, i), name=f"param {i} diff", **case.tolerance)
        assert_blob_close(blob, case.param_data(name, i), name=f"param {i} data", **case.tolerance)


@pytest.mark.parametrize("name", ["relu", "relu_leaky"])
def test_relu_fixture_is_exact(name):
    # ReLU does no arithmetic beyond one multiplication: Caffe's numbers come out bit for bit.
    case = Case.load("layers", name)
    layer = fixture_layer(case, name)
    assert_blob_close(forward(layer, case.data("x")), case.data("y"), name="y")
    assert_blob_close(input_grad(layer, case.data("x"), case.output_diff("y")), case.diff("x"), name="x diff")


# ---------------------------------------------------------------------------------------------- NumPy references
def np_relu(x, slope=0.0):
    return np.maximum(x, 0) + slope * np.minimum(x, 0)


def np_elu(x, alpha=1.0):
    return np.maximum(x, 0) + alpha * (np.exp(np.minimum(x, 0)) - 1)


def np_power(x, power=1.0, scale=1.0, shift=0.0):
    return (shift + scale * x) ** power


REFERENCES = {
    "relu": ('type: "ReLU"', np_relu),
    "relu_slope_0.25": ('type: "ReLU" relu_param { negative_slope: 0.25 }', lambda x: np_relu(x, 0.25)),
    "relu_slope_negative": ('type: "ReLU" relu_param { negative_slope: -0.5 }', lambda x: np_relu(x, -0.5)),
    "elu_alpha_1": ('type: "ELU"', np_elu),
    "elu_alpha_2.5": ('type: "ELU" elu_param { alpha: 2.5 }', lambda x: np_elu(x, 2.5)),
    "sigmoid": ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x))),
    "tanh": ('type: "TanH"', np.tanh),
    "power_identity": ('type: "Power"', lambda x: x),
    "power_linear": ('type: "Power" power_param { scale: -1.5 shift: 0.25 }', lambda x: np_power(x, 1, -1.5, .25)),
    "power_cube": ('type: "Power" power_param { power: 3 }', lambda x: x ** 3),
    "power_sqrt": ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 2 }',
                   lambda x: np_power(x, 0.5, 0.5, 2)),
    "power_inverse": ('type: "Power" power_param { power: -1 shift: 3 }', lambda x: 1 / (3 + x)),
    "power_zero_power": ('type: "Power" power_param { power: 0 scale: 2 shift: 5 }', lambda x: np.ones_like(x)),
    "power_zero_scale": ('type: "Power" power_param { power: 3 scale: 0 shift: 2 }',
                         lambda x: np.full_like(x, 8.0)),
    "dropout_test": ('type: "Dropout" dropout_param { dropout_ratio: 0.9 }', lambda x: x),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_numpy_reference(name):
    text, reference = REFERENCES[name]
    x = rand((2, 3, 4, 5), seed=len(name))
    layer = make_layer(text, [x.shape], TEST)
    assert_blob_close(forward(layer, x), reference(x.astype(np.float64)).astype(np.float32),
                      rtol=1e-6, atol=1e-6, name=name)


def test_prelu_matches_numpy_reference():
    x = rand((2, 4, 3, 3), seed=3)
    layer = make_layer('type: "PReLU" prelu_param { filler { type: "uniform" min: -1 max: 1 } }', [x.shape])
    slope = layer.blobs[0].detach().numpy()
    expected = np.maximum(x, 0) + slope[None, :, None, None] * np.minimum(x, 0)
    assert_blob_close(forward(layer, x), expected, name="y")


def test_prelu_channel_shared_matches_numpy_reference():
    x = rand((2, 4, 3), seed=4)
    layer = make_layer('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" value: -0.3 } }',
                       [x.shape])
    assert tuple(layer.blobs[0].shape) == ()
    assert_blob_close(forward(layer, x), np_relu(x, np.float32(-0.3)), name="y")


def test_prelu_default_filler_is_a_quarter():
    layer = make_layer('type: "PReLU"', [(2, 5, 3)])
    assert tuple(layer.blobs[0].shape) == (5,)
    assert_blob_close(layer.blobs[0], np.full(5, 0.25, np.float32), name="slope")


# ------------------------------------------------------------------------------------------------ gradient checks
GRADIENT_CASES = {
    # name: (layer text, input range, kink, kink range)
    "relu": ('type: "ReLU"', (-2, 2), 0.0, 0.01),
    "relu_leaky": ('type: "ReLU" relu_param { negative_slope: 0.1 }', (-2, 2), 0.0, 0.01),
    "prelu": ('type: "PReLU" prelu_param { filler { type: "uniform" min: 0.05 max: 0.5 } }', (-2, 2), 0.0, 0.01),
    "prelu_shared": ('type: "PReLU" prelu_param { channel_shared: true }', (-2, 2), 0.0, 0.01),
    "elu": ('type: "ELU" elu_param { alpha: 0.7 }', (-2, 2), 0.0, 0.01),
    "sigmoid": ('type: "Sigmoid"', (-4, 4), 0.0, -1.0),
    "tanh": ('type: "TanH"', (-3, 3), 0.0, -1.0),
    "power_linear": ('type: "Power" power_param { scale: 0.7 shift: -1 }', (-2, 2), 0.0, -1.0),
    "power_square": ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', (-2, 2), 0.0, -1.0),
    "power_cube_no_shift": ('type: "Power" power_param { power: 3 scale: -0.8 }', (-2, 2), 0.0, 0.05),
    "power_general": ('type: "Power" power_param { power: 0.5 scale: 0.5 shift: 2 }', (-2, 2), 0.0, -1.0),
    "power_unit_scale": ('type: "Power" power_param { power: -2 shift: 3 }', (-2, 2), 0.0, -1.0),
    "power_constant": ('type: "Power" power_param { power: 0 scale: 2 shift: 1 }', (-2, 2), 0.0, -1.0),
    "dropout_train": ('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', (-2, 2), 0.0, -1.0),
    "dropout_test": ('type: "Dropout"', (-2, 2), 0.0, -1.0),
}


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_gradient(name):
    text, (low, high), kink, kink_range = GRADIENT_CASES[name]
    x = rand((2, 3, 3, 4), seed=11, low=low, high=high, dtype=np.float64)
    phase = TRAIN if name.endswith("_train") else TEST
    report = check_gradient(make_layer(text, [x.shape], phase), [x], kink=kink, kink_range=kink_range)
    assert report.checked > 0


@pytest.mark.parametrize("text,expected", [
    ('type: "ReLU"', 0.0),
    ('type: "ReLU" relu_param { negative_slope: 0.25 }', 0.25),
    ('type: "PReLU" prelu_param { filler { type: "constant" value: 0.375 } }', 0.375),
    ('type: "ELU" elu_param { alpha: 0.5 }', 0.5),
], ids=["relu", "relu_leaky", "prelu", "elu"])
def test_gradient_at_exactly_zero_is_the_negative_side(text, expected):
    # Caffe's backward tests x > 0, so x == 0 takes the negative side's slope.
    layer = make_layer(text, [(1, 2, 3)])
    grad = input_grad(layer, np.zeros((1, 2, 3), np.float32), np.ones((1, 2, 3), np.float32))
    assert_blob_close(grad, np.full((1, 2, 3), expected, np.float32), name="dx at 0")


def test_prelu_slope_gradient_sums_over_negative_inputs_only():
    x = np.array([[[-1.0, 2.0], [0.0, -3.0]], [[4.0, -0.5], [-2.0, 1.0]]], np.float32)  # (N=2, C=2, 2)
    dy = np.array([[[1.0, 5.0], [2.0, 0.5]], [[7.0, 4.0], [1.5, 3.0]]], np.float32)
    layer = make_layer('type: "PReLU"', [x.shape])
    layer(torch.tensor(x)).backward(torch.tensor(dy))
    expected = (dy * x * (x <= 0)).sum(axis=(0, 2))
    assert_blob_close(layer.blobs[0].grad, expected, name="slope diff")


# ------------------------------------------------------------------------------------------------------- Power
def test_power_zero_base_gives_nan_gradient_like_caffe():
    # Caffe computes dy/dx = power * y / x when shift == 0: 0/0 at x == 0, where autograd of pow would give 0.
    layer = make_layer('type: "Power" power_param { power: 3 }', [(3,)])
    grad = input_grad(layer, np.array([0.0, 1.0, -2.0], np.float32), np.ones(3, np.float32))
    assert np.isnan(grad[0].item())
    assert_blob_close(grad[1:], np.array([3.0, 12.0], np.float32), name="dx away from 0")


def test_power_square_at_zero_base_is_finite():
    # power == 2 has its own formula in Caffe (2 * scale * (shift + scale * x)), defined everywhere.
    layer = make_layer('type: "Power" power_param { power: 2 scale: 2 shift: -2 }', [(2,)])
    grad = input_grad(layer, np.array([1.0, 3.0], np.float32), np.ones(2, np.float32))
    assert_blob_close(grad, np.array([0.0, 16.0], np.float32), name="dx")


@pytest.mark.parametrize("text,value", [
    ('power_param { power: 0 scale: 3 shift: -7 }', 1.0),
    ('power_param { power: 2 scale: 0 shift: 3 }', 9.0),
    ('power_param { power: 0.5 scale: 0 shift: -4 }', float("nan")),
], ids=["power_0", "scale_0", "scale_0_negative_base"])
def test_power_constant_ignores_input_and_has_zero_gradient(text, value):
    layer = make_layer(f'type: "Power" {text}', [(4,)])
    x = np.array([np.inf, -np.inf, np.nan, 1.5], np.float32)
    assert_blob_close(forward(layer, x), np.full(4, value, np.float32), name="y")
    assert_blob_close(input_grad(layer, x, np.full(4, np.nan, np.float32)), np.zeros(4, np.float32), name="dx")


# ----------------------------------------------------------------------------------------------------- Dropout
def dropout_train(ratio, shape=(4, 5, 6, 7)):
    return make_layer(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}', [shape], TRAIN)


def test_dropout_train_keeps_or_zeroes_and_rescales():
    x = rand((4, 5, 6, 7), seed=5, low=0.5, high=2.0)
    torch.manual_seed(0)
    y = forward(dropout_train(0.3), x).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] * np.float32(1 / (1 - np.float32(0.3))), rtol=1e-6)
    assert abs((~kept).mean() - 0.3) < 0.05, f"dropped fraction {(~kept).mean():.3f}, expected about 0.3"


def test_dropout_train_backward_uses_the_same_mask():
    x = rand((3, 4, 5), seed=6, low=0.5, high=2.0)
    dy = rand((3, 4, 5), seed=7)
    layer = dropout_train(0.5, x.shape)
    xt = torch.tensor(x, requires_grad=True)
    torch.manual_seed(1)
    y = layer(xt)
    y.backward(torch.tensor(dy))
    mask_scale = y.detach().numpy() / x
    assert set(np.unique(mask_scale.round(5))) <= {0.0, 2.0}
    assert_blob_close(xt.grad, dy * mask_scale.astype(np.float32), rtol=1e-6, name="x diff")


def test_dropout_train_is_reproducible_under_a_seed():
    x = rand((2, 3, 4), seed=8)
    layer = dropout_train(0.5, x.shape)
    torch.manual_seed(42)
    first = forward(layer, x)
    torch.manual_seed(42)
    assert_blob_close(forward(layer, x), first.numpy(), name="second draw")


def test_dropout_ratio_zero_keeps_everything_in_train():
    x = rand((2, 3, 4), seed=9)
    assert_blob_close(forward(dropout_train(0.0, x.shape), x), x, name="y")


def test_dropout_test_phase_returns_a_distinct_tensor():
    x = torch.tensor(rand((2, 3), seed=10))
    y = make_layer('type: "Dropout"', [x.shape], TEST)(x)
    assert y is not x
    assert_blob_close(y, x.numpy(), name="y")


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_dropout_rejects_bad_ratio(ratio):
    with pytest.raises(LayerError, match=r'Dropout layer "dropout": dropout_ratio must be in \[0, 1\), got'):
        dropout_train(ratio)


def test_dropout_train_shape_inference_leaves_the_rng_alone():
    layer = dropout_train(0.5)
    torch.manual_seed(3)
    before = torch.rand(1)
    torch.manual_seed(3)
    assert layer.infer_top_shapes([(4, 5, 6, 7)]) == [(4, 5, 6, 7)]
    assert_blob_close(torch.rand(1), before.numpy(), name="next random number")


# ------------------------------------------------------------------------------------------ any rank, dtype, meta
ANY_RANK_LAYERS = {
    "relu": ('type: "ReLU" relu_param { negative_slope: 0.2 }', lambda x: np_relu(x, 0.2)),
    "prelu": ('type: "PReLU"', lambda x: np_relu(x, 0.25)),
    "elu": ('type: "ELU"', np_elu),
    "sigmoid": ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x))),
    "tanh": ('type: "TanH"', np.tanh),
    "power": ('type: "Power" power_param { power: 2 scale: 3 shift: 1 }', lambda x: np_power(x, 2, 3, 1)),
    "dropout": ('type: "Dropout"', lambda x: x),
}
SHAPES = {"1d": (7,), "2d": (3, 4), "5d": (2, 3, 2, 2, 3)}


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("name", list(ANY_RANK_LAYERS))
def test_any_rank(name, rank):
    shape = SHAPES[rank]
    if name == "prelu" and len(shape) < 2:
        pytest.skip("PReLU needs a channel axis (tested in test_prelu_rejects_one_axis)")
    text, reference = ANY_RANK_LAYERS[name]
    x = rand(shape, seed=12)
    layer = make_layer(text, [shape])
    assert layer.infer_top_shapes([shape]) == [shape]
    assert_blob_close(forward(layer, x), reference(x.astype(np.float64)).astype(np.float32),
                      rtol=1e-6, atol=1e-6, name=f"{name} on {rank}")


@pytest.mark.parametrize("name", list(ANY_RANK_LAYERS))
def test_float64_stays_float64(name):
    layer = make_layer(ANY_RANK_LAYERS[name][0], [(2, 3)]).double()
    y = forward(layer, rand((2, 3), seed=13, dtype=np.float64))
    assert y.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(ANY_RANK_LAYERS))
def test_cuda_matches_cpu(name):
    x = rand((2, 3, 4, 5), seed=14)
    layer = make_layer(ANY_RANK_LAYERS[name][0], [x.shape])
    expected = forward(layer, x)
    got = forward(layer.cuda(), torch.tensor(x).cuda())
    assert got.device.type == "cuda"
    assert_blob_close(got.cpu(), expected.numpy(), rtol=1e-6, atol=1e-7, name=name)


# -------------------------------------------------------------------------------------------------------- errors
def test_prelu_rejects_one_axis():
    with pytest.raises(LayerError, match=r'PReLU layer "prelu": bottom must have at least 2 axes .* got shape \(5\)'):
        make_layer('type: "PReLU"', [(5,)])


def test_prelu_rejects_a_slope_blob_of_the_wrong_size():
    layer = make_layer('type: "PReLU"', [(2, 3, 4)])
    with pytest.raises(LayerError, match=r"slope blob has 3 values, expected one per channel \(5\)"):
        forward(layer, rand((2, 5, 4)))


@pytest.mark.parametrize("text", ['type: "ReLU"', 'type: "Power"', 'type: "Dropout"', 'type: "PReLU"'],
                         ids=["relu", "power", "dropout", "prelu"])
def test_takes_exactly_one_bottom(text):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter(name="n1"))
    layer = layer_class(lp.type)(lp, TEST)
    with pytest.raises(LayerError, match=rf'{lp.type} layer "n1": takes exactly 1 bottom blob, got 2'):
        layer.check_blob_counts(2, 1)


def test_tops_are_single_tensors():
    layer = make_layer('type: "TanH"', [(2, 2)])
    assert len(as_tuple(forward(layer, rand((2, 2))))) == 1
