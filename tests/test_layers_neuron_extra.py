"""More neuron layers (layers/neuron_extra.py): AbsVal, BNLL, Exp, Log, Threshold, Clip, Swish.

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

TEST = caffe_pb2.TEST


def input_grad(layer, x, dy):
    """dL/dx for L = <layer(x), dy>."""
    x = torch.tensor(x, requires_grad=True)
    layer(x).backward(torch.as_tensor(dy))
    return x.grad


# ------------------------------------------------------------------------------------------- real-Caffe fixtures
FIXTURES = {"absval": "AbsVal", "bnll": "BNLL", "exp": "Exp", "log": "Log", "threshold": "Threshold",
            "clip": "Clip", "swish": "Swish"}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_matches_caffe_fixture(name):
    case = Case.load("layers", name)
    (lp,) = [lp for lp in case.net_param().layer if lp.type == FIXTURES[name]]
    layer = make_layer(text_format.MessageToString(lp), [case.data("x").shape], TEST)
    x = torch.tensor(case.data("x"), requires_grad=case.meta["backward"])
    y = layer(x)
    assert_blob_close(y, case.data("y"), name="y", **case.tolerance)
    if case.meta["backward"]:
        y.backward(torch.from_numpy(case.output_diff("y")))
        assert_blob_close(x.grad, case.diff("x"), name="x diff", **case.tolerance)
    else:
        assert layer.backward_free and not y.requires_grad


@pytest.mark.parametrize("name", ["absval", "threshold", "clip"])
def test_exact_layers_match_caffe_bit_for_bit(name):
    # No arithmetic beyond comparisons: Caffe's numbers come out exactly.
    case = Case.load("layers", name)
    (lp,) = [lp for lp in case.net_param().layer if lp.type == FIXTURES[name]]
    layer = make_layer(text_format.MessageToString(lp), [case.data("x").shape])
    assert_blob_close(forward(layer, case.data("x")), case.data("y"), name="y")


# ---------------------------------------------------------------------------------------------- NumPy references
def np_bnll(x):
    return np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


REFERENCES = {
    "absval": ('type: "AbsVal"', np.abs),
    "bnll": ('type: "BNLL"', np_bnll),
    "exp_default": ('type: "Exp"', np.exp),
    "exp_base_e_shift": ('type: "Exp" exp_param { scale: -0.5 shift: 0.3 }', lambda x: np.exp(0.3 - 0.5 * x)),
    "exp_base_3": ('type: "Exp" exp_param { base: 3 scale: 0.25 }', lambda x: 3.0 ** (0.25 * x)),
    "log_default": ('type: "Log"', np.log),
    "log_base_10": ('type: "Log" log_param { base: 10 scale: 2 shift: 5 }', lambda x: np.log10(5 + 2 * x)),
    "log_base_half": ('type: "Log" log_param { base: 0.5 shift: 3 }', lambda x: np.log(3 + x) / np.log(0.5)),
    "threshold_default": ('type: "Threshold"', lambda x: (x > 0).astype(x.dtype)),
    "threshold_negative": ('type: "Threshold" threshold_param { threshold: -0.5 }',
                           lambda x: (x > -0.5).astype(x.dtype)),
    "clip": ('type: "Clip" clip_param { min: -1 max: 0.5 }', lambda x: np.clip(x, -1, 0.5)),
    "swish_default": ('type: "Swish"', lambda x: x * np_sigmoid(x)),
    "swish_beta": ('type: "Swish" swish_param { beta: 0.3 }', lambda x: x * np_sigmoid(0.3 * x)),
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_matches_numpy_reference(name):
    text, reference = REFERENCES[name]
    x = rand((2, 3, 4, 5), seed=len(name), low=0.1 if name == "log_default" else -2.0)
    layer = make_layer(text, [x.shape])
    assert_blob_close(forward(layer, x), reference(x.astype(np.float64)).astype(np.float32),
                      rtol=2e-6, atol=1e-6, name=name)


def test_threshold_is_strict():
    layer = make_layer('type: "Threshold" threshold_param { threshold: 0.25 }', [(3,)])
    assert_blob_close(forward(layer, np.array([0.25, 0.2500001, 0.0], np.float32)),
                      np.array([0.0, 1.0, 0.0], np.float32), name="y")


def test_bnll_large_inputs_stay_finite_in_both_directions():
    x = np.array([-100.0, -60.0, 0.0, 60.0, 100.0], np.float32)
    layer = make_layer('type: "BNLL"', [x.shape])
    # Caffe's float formula log(1 + exp(x)), not log1p: 1 + e^-60 rounds to 1, so the far left is exactly 0.
    with np.errstate(over="ignore"):
        caffe = np.where(x > 0, x + np.log(1 + np.exp(-x)), np.log(1 + np.exp(x)))
    assert_blob_close(forward(layer, x), caffe, rtol=1e-6, atol=1e-30, name="y")
    assert forward(layer, x)[1].item() == 0.0
    grad = input_grad(layer, x, np.ones_like(x))
    assert_blob_close(grad, np_sigmoid(x.astype(np.float64)).astype(np.float32), rtol=1e-6, atol=1e-30,
                      name="dx")


def test_log_non_positive_argument_gives_nan_and_minus_inf_like_caffe():
    y = forward(make_layer('type: "Log"', [(2,)]), np.array([0.0, -1.0], np.float32)).numpy()
    assert y[0] == -np.inf and np.isnan(y[1])


# ------------------------------------------------------------------------------------------------ gradient checks
GRADIENT_CASES = {
    # name: (layer text, input range, kink, kink range)
    "absval": ('type: "AbsVal"', (-2, 2), 0.0, 0.01),
    "bnll": ('type: "BNLL"', (-4, 4), 0.0, -1.0),
    "exp": ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', (-2, 2), 0.0, -1.0),
    "exp_default": ('type: "Exp"', (-2, 2), 0.0, -1.0),
    "log": ('type: "Log" log_param { base: 3 scale: 0.5 shift: 1.5 }', (-2, 4), 0.0, -1.0),
    "log_default": ('type: "Log"', (0.5, 3), 0.0, -1.0),
    "clip_low": ('type: "Clip" clip_param { min: -0.6 max: 5 }', (-2, 2), -0.6, 0.01),
    "clip_high": ('type: "Clip" clip_param { min: -5 max: 0.8 }', (-2, 2), 0.8, 0.01),
    "swish": ('type: "Swish" swish_param { beta: 1.5 }', (-3, 3), 0.0, -1.0),
    "swish_negative_beta": ('type: "Swish" swish_param { beta: -0.7 }', (-3, 3), 0.0, -1.0),
}


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_gradient(name):
    text, (low, high), kink, kink_range = GRADIENT_CASES[name]
    x = rand((2, 3, 3, 4), seed=11, low=low, high=high, dtype=np.float64)
    report = check_gradient(make_layer(text, [x.shape]), [x], kink=kink, kink_range=kink_range)
    assert report.checked > 0


def test_absval_gradient_at_zero_is_zero():
    grad = input_grad(make_layer('type: "AbsVal"', [(3,)]), np.array([0.0, -2.0, 3.0], np.float32),
                      np.full(3, 5.0, np.float32))
    assert_blob_close(grad, np.array([0.0, -5.0, 5.0], np.float32), name="dx")


def test_clip_gradient_passes_at_the_bounds_inclusive():
    layer = make_layer('type: "Clip" clip_param { min: -0.5 max: 0.5 }', [(5,)])
    x = np.array([-0.7, -0.5, 0.1, 0.5, 0.7], np.float32)
    assert_blob_close(input_grad(layer, x, np.full(5, 2.0, np.float32)),
                      np.array([0.0, 2.0, 2.0, 2.0, 0.0], np.float32), name="dx")


def test_clip_with_min_above_max_outputs_min_and_no_gradient():
    # Caffe computes max(min, min(x, max)): every output is min; no x satisfies min <= x <= max.
    layer = make_layer('type: "Clip" clip_param { min: 1 max: -1 }', [(3,)])
    x = np.array([-2.0, 0.0, 2.0], np.float32)
    assert_blob_close(forward(layer, x), np.ones(3, np.float32), name="y")
    assert_blob_close(input_grad(layer, x, np.ones(3, np.float32)), np.zeros(3, np.float32), name="dx")


def test_threshold_has_no_backward():
    layer = make_layer('type: "Threshold"', [(2, 3)])
    assert layer.backward_free
    y = layer(torch.tensor(rand((2, 3)), requires_grad=True))
    assert not y.requires_grad


# ------------------------------------------------------------------------------------------ any rank, dtype, meta
ANY_RANK_LAYERS = {name: REFERENCES[name] for name in
                   ["absval", "bnll", "exp_base_3", "log_base_10", "threshold_default", "clip", "swish_beta"]}
SHAPES = {"0d": (), "1d": (7,), "5d": (2, 3, 2, 2, 3)}


@pytest.mark.parametrize("rank", list(SHAPES))
@pytest.mark.parametrize("name", list(ANY_RANK_LAYERS))
def test_any_rank(name, rank):
    shape = SHAPES[rank]
    text, reference = ANY_RANK_LAYERS[name]
    x = rand(shape, seed=12, low=-1.0, high=1.0)
    layer = make_layer(text, [shape])
    assert layer.infer_top_shapes([shape]) == [shape]
    assert_blob_close(forward(layer, x), reference(x.astype(np.float64)).astype(np.float32),
                      rtol=2e-6, atol=1e-6, name=f"{name} on {rank}")


@pytest.mark.parametrize("name", list(ANY_RANK_LAYERS))
def test_float64_stays_float64(name):
    layer = make_layer(ANY_RANK_LAYERS[name][0], [(2, 3)]).double()
    y = forward(layer, rand((2, 3), seed=13, low=-1.0, high=1.0, dtype=np.float64))
    assert y.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(ANY_RANK_LAYERS))
def test_cuda_matches_cpu(name):
    x = rand((2, 3, 4, 5), seed=14, low=-1.0, high=1.0)
    layer = make_layer(ANY_RANK_LAYERS[name][0], [x.shape])
    expected = forward(layer, x)
    got = forward(layer.cuda(), torch.tensor(x).cuda())
    assert got.device.type == "cuda"
    assert_blob_close(got.cpu(), expected.numpy(), rtol=1e-6, atol=1e-6, name=name)


# -------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("text,message", [
    ('type: "Exp" exp_param { base: 0 }', r'Exp layer "exp": base must be strictly positive \(or -1 for e\), got 0'),
    ('type: "Exp" exp_param { base: -2 }', r'Exp layer "exp": base must be strictly positive'),
    ('type: "Log" log_param { base: -0.5 }', r'Log layer "log": base must be strictly positive'),
    ('type: "Clip"', r'Clip layer "clip": clip_param.min and clip_param.max must be given'),
    ('type: "Clip" clip_param { min: 0 }', r'Clip layer "clip": clip_param.max must be given'),
], ids=["exp_base_0", "exp_base_negative", "log_base_negative", "clip_no_bounds", "clip_no_max"])
def test_rejects_bad_parameters(text, message):
    with pytest.raises(LayerError, match=message):
        make_layer(text, [(2, 3)])


@pytest.mark.parametrize("type_name", sorted(set(FIXTURES.values())))
def test_takes_exactly_one_bottom(type_name):
    lp = caffe_pb2.LayerParameter(name="n1", type=type_name)
    layer = layer_class(type_name)(lp, TEST)
    with pytest.raises(LayerError, match=rf'{type_name} layer "n1": takes exactly 1 bottom blob, got 2'):
        layer.check_blob_counts(2, 1)


def test_tops_are_single_tensors():
    layer = make_layer('type: "Swish"', [(2, 2)])
    assert len(as_tuple(forward(layer, rand((2, 2))))) == 1
