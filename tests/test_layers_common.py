"""InnerProduct, Softmax, Eltwise, Concat, Slice, Split, Flatten, Reshape and Silence against real Caffe
(tests/fixtures/layers), against NumPy references for the configurations the fixtures leave out, through
the gradient checker, and on their edge cases and error messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from caffelike.layers import layer_class
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import Case, as_tuple, assert_blob_close, check_gradient, make_layer

from caffelike.errors import LayerError

# Layers that only move values are compared bit for bit; the others with the case's tolerance.
EXACT = {"concat", "slice", "split", "flatten", "reshape", "eltwise_sum", "eltwise_max"}


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run(layer, *arrays):
    return as_tuple(layer(*[torch.as_tensor(a) for a in arrays]))


def case_layer(case: Case):
    """The case's one non-Input layer, built and loaded with the case's stored weights."""
    lp = next(l for l in case.net_param().layer if l.type != "Input")
    shapes = [case.meta["blob_shapes"][b] for b in lp.bottom]
    layer = make_layer(text_format.MessageToString(lp), shapes)
    for blob, value in zip(layer.blobs, case.stored_weights().get(lp.name, [])):
        blob.data.copy_(torch.from_numpy(value))
    return lp, layer


# ---------------------------------------------------------------------------------------------- real-Caffe cases
@pytest.mark.parametrize("name", ["innerproduct", "softmax", "eltwise_sum", "eltwise_prod", "eltwise_max",
                                  "concat", "slice", "split", "flatten", "reshape"])
def test_matches_caffe(name):
    case = Case.load("layers", name)
    tol = {"rtol": 0.0, "atol": 0.0} if name in EXACT else case.tolerance
    lp, layer = case_layer(case)
    bottoms = [torch.from_numpy(case.data(b)).requires_grad_(True) for b in lp.bottom]
    assert layer.infer_top_shapes([tuple(b.shape) for b in bottoms]) == \
        [tuple(case.meta["blob_shapes"][t]) for t in lp.top]
    tops = as_tuple(layer(*bottoms))
    assert len(tops) == len(lp.top)
    for top, name_ in zip(tops, lp.top):
        assert_blob_close(top, case.data(name_), **tol, name=name_)
    torch.autograd.backward(tops, [torch.from_numpy(case.output_diff(t)) for t in lp.top])
    for b, x in zip(lp.bottom, bottoms):
        assert b in case.meta["diff_blobs"]
        assert_blob_close(x.grad, case.diff(b), **tol, name=f"{b} diff")
    for i, blob in enumerate(layer.blobs):
        assert_blob_close(blob.grad, case.param_diff(lp.name, i), **case.tolerance, name=f"{lp.name} param {i} diff")


def test_silence_matches_caffe():
    case = Case.load("layers", "silence")
    lp = next(l for l in case.net_param().layer if l.type == "Silence")
    # Built by hand: Silence has no top, which make_layer cannot express.
    layer = layer_class("Silence")(lp, caffe_pb2.TEST)
    layer.check_blob_counts(2, 0)
    layer.setup([tuple(case.meta["blob_shapes"][b]) for b in lp.bottom])
    bottoms = [torch.from_numpy(case.data(b)).requires_grad_(True) for b in lp.bottom]
    assert layer(*bottoms) == ()
    assert layer.infer_top_shapes([tuple(b.shape) for b in bottoms]) == []
    for b, x in zip(lp.bottom, bottoms):   # nothing flows back: the net reads that as Caffe's zero diff
        assert x.grad is None and not case.diff(b).any()


def test_silence_needs_a_bottom_and_no_top():
    layer = layer_class("Silence")(caffe_pb2.LayerParameter(name="s", type="Silence"), caffe_pb2.TEST)
    with pytest.raises(LayerError, match=r'Silence layer "s": takes at least 1 bottom blob, got 0'):
        layer.check_blob_counts(0, 0)
    with pytest.raises(LayerError, match="takes exactly 0 top blobs, got 1"):
        layer.check_blob_counts(1, 1)


# ------------------------------------------------------------------------------------------------- InnerProduct
IP_CONFIGS = {
    "axis1": ("num_output: 4 weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }", (2, 3, 2)),
    "axis2": ("num_output: 4 axis: 2 weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }",
              (2, 3, 5)),
    "axis-1": ("num_output: 3 axis: -1 weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }",
               (2, 2, 5)),
    "axis0": ("num_output: 2 axis: 0 weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' }",
              (3, 2)),
    "transpose": ("num_output: 4 transpose: true weight_filler { type: 'gaussian' } "
                  "bias_filler { type: 'gaussian' }", (2, 3, 2)),
    "no_bias": ("num_output: 4 bias_term: false weight_filler { type: 'gaussian' }", (3, 5)),
}


def ip_layer(params, shape, seed=3):
    torch.manual_seed(seed)
    return make_layer(f'type: "InnerProduct" inner_product_param {{ {params} }}', [shape])


@pytest.mark.parametrize("params,shape", IP_CONFIGS.values(), ids=IP_CONFIGS.keys())
def test_inner_product_matches_numpy(params, shape):
    layer = ip_layer(params, shape).double()
    p = layer.param.inner_product_param
    axis = p.axis % len(shape)
    x = rand(*shape, seed=1)
    w = layer.blobs[0].detach().numpy()
    x2 = x.reshape(int(np.prod(shape[:axis])), -1)
    y = x2 @ (w if p.transpose else w.T)
    if p.bias_term:
        y = y + layer.blobs[1].detach().numpy()
    assert_blob_close(run(layer, x)[0], y.reshape(*shape[:axis], -1), rtol=1e-12, atol=1e-12)
    assert layer.infer_top_shapes([shape]) == [tuple(shape[:axis]) + (p.num_output,)]


@pytest.mark.parametrize("params,shape", IP_CONFIGS.values(), ids=IP_CONFIGS.keys())
def test_inner_product_gradient(params, shape):
    check_gradient(ip_layer(params, shape), [rand(*shape, seed=2)])


@pytest.mark.parametrize("transpose,bias,shapes", [
    (False, True, [(4, 6), (4,)]), (True, True, [(6, 4), (4,)]), (False, False, [(4, 6)])],
    ids=["plain", "transpose", "no_bias"])
def test_inner_product_blobs_and_fillers(transpose, bias, shapes):
    layer = make_layer(f"""type: "InnerProduct" inner_product_param {{ num_output: 4
        transpose: {str(transpose).lower()} bias_term: {str(bias).lower()}
        weight_filler {{ type: "constant" value: 0.5 }} bias_filler {{ type: "constant" value: -2 }} }}""",
                       [(2, 2, 3)])
    assert [tuple(b.shape) for b in layer.blobs] == shapes
    assert (layer.blobs[0] == 0.5).all()
    if bias:
        assert (layer.blobs[1] == -2).all()


def test_inner_product_default_fillers_are_zero():
    layer = make_layer('type: "InnerProduct" inner_product_param { num_output: 3 }', [(2, 4)])
    assert not layer.blobs[0].any() and not layer.blobs[1].any()


def test_inner_product_reads_replaced_blobs():
    layer = ip_layer(IP_CONFIGS["no_bias"][0], (3, 5)).double()
    layer.blobs[0] = torch.nn.Parameter(torch.ones(4, 5, dtype=torch.float64))   # e.g. a shared weight
    x = rand(3, 5)
    assert_blob_close(run(layer, x)[0], np.repeat(x.sum(1, keepdims=True), 4, axis=1), rtol=1e-12)


def test_inner_product_refuses_another_input_size():
    layer = ip_layer("num_output: 4", (2, 3, 2))
    run(layer, rand(5, 6, dtype=np.float32))   # same K = 6, other batch and axes: fine
    with pytest.raises(LayerError, match=r'InnerProduct layer "innerproduct": Input size incompatible with '
                                         r'inner product parameters: .*K = 8 .*K = 6'):
        run(layer, rand(2, 4, 2, dtype=np.float32))
    with pytest.raises(LayerError, match="K = 8 .*K = 6"):
        layer.infer_top_shapes([(2, 8)])


def test_inner_product_bad_parameters():
    with pytest.raises(LayerError, match="num_output must be set to a positive value, got 0"):
        make_layer('type: "InnerProduct"', [(2, 3)])
    with pytest.raises(LayerError, match="axis 2 is out of range for a bottom with 2 axes"):
        make_layer('type: "InnerProduct" inner_product_param { num_output: 2 axis: 2 }', [(2, 3)])


# ------------------------------------------------------------------------------------------------------ Softmax
def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [0, 1, 2, -1], ids=lambda a: f"axis{a}")
def test_softmax_matches_numpy(axis):
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [(2, 3, 4)])
    x = rand(2, 3, 4, seed=4) * 5
    assert_blob_close(run(layer, x)[0], np_softmax(x, axis), rtol=1e-12, atol=1e-15)


def test_softmax_is_stable_for_large_inputs():
    layer = make_layer('type: "Softmax"', [(1, 3)])
    y = run(layer, np.array([[1000.0, 1000.0, -1000.0]], np.float32))[0]
    assert_blob_close(y, np.array([[0.5, 0.5, 0.0]], np.float32))


@pytest.mark.parametrize("axis", [1, -1], ids=lambda a: f"axis{a}")
def test_softmax_gradient(axis):
    layer = make_layer(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [(2, 3, 4)])
    check_gradient(layer, [rand(2, 3, 4, seed=5)])


def test_softmax_bad_axis():
    layer = make_layer('type: "Softmax" softmax_param { axis: 3 }', [(2, 3)])
    with pytest.raises(LayerError, match='Softmax layer "softmax": axis 3 is out of range for a bottom with 2'):
        layer.infer_top_shapes([(2, 3)])


# ------------------------------------------------------------------------------------------------------ Eltwise
def eltwise(params, n=3, shape=(2, 3, 4)):
    bottoms = "".join(f' bottom: "b{i}"' for i in range(n))
    return make_layer(f'type: "Eltwise"{bottoms} eltwise_param {{ {params} }}', [shape] * n)


@pytest.mark.parametrize("coeff", [[], [1.0, -0.5, 2.0]], ids=["no_coeff", "coeff"])
def test_eltwise_sum_with_coeffs(coeff):
    layer = eltwise("operation: SUM" + "".join(f" coeff: {c}" for c in coeff))
    xs = [rand(2, 3, 4, seed=s) for s in range(3)]
    c = coeff or [1.0] * 3
    assert_blob_close(run(layer, *xs)[0], sum(ci * x for ci, x in zip(c, xs)), rtol=1e-15, atol=1e-15)
    bottoms = [torch.tensor(x, requires_grad=True) for x in xs]
    dy = torch.as_tensor(rand(2, 3, 4, seed=9))
    layer(*bottoms).backward(dy)
    for ci, b in zip(c, bottoms):
        assert_blob_close(b.grad, ci * dy.numpy())
    check_gradient(layer, xs)


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "unstable"])
def test_eltwise_prod_gradient_rules(stable):
    layer = eltwise(f"operation: PROD stable_prod_grad: {str(stable).lower()}")
    xs = [rand(2, 3, 4, seed=s) for s in range(3)]
    xs[0][0, 0, 0] = 0.0   # the rules part ways at a zero bottom
    bottoms = [torch.tensor(x, requires_grad=True) for x in xs]
    y = layer(*bottoms)
    assert_blob_close(y, xs[0] * xs[1] * xs[2], rtol=1e-15)
    dy = rand(2, 3, 4, seed=9)
    y.backward(torch.as_tensor(dy))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, b in enumerate(bottoms):
            others = np.prod([x for j, x in enumerate(xs) if j != i], axis=0)
            expected = others * dy if stable else (y.detach().numpy() / xs[i]) * dy
            assert_blob_close(b.grad, expected, rtol=1e-14, atol=1e-300)
    assert bool(bottoms[0].grad[0, 0, 0].isnan()) != stable   # y/x_0 = 0/0 without the stable rule, as in Caffe


@pytest.mark.parametrize("stable", [True, False], ids=["stable", "unstable"])
def test_eltwise_prod_gradient(stable):
    layer = eltwise(f"operation: PROD stable_prod_grad: {str(stable).lower()}")
    check_gradient(layer, [rand(2, 3, 4, seed=s) for s in range(3)])


def test_eltwise_max_tie_rule():
    layer = eltwise("operation: MAX", n=3, shape=(5,))
    a = np.array([1.0, 2.0, 3.0, 0.0, 5.0])
    b = np.array([1.0, 1.0, 4.0, 0.0, 5.0])
    c = np.array([0.0, 2.0, 4.0, 1.0, 5.0])
    # winners: a/b tie -> b; a; b/c tie -> b (c not strictly greater); c; three-way tie -> b
    winner = np.array([1, 0, 1, 2, 1])
    bottoms = [torch.tensor(v, requires_grad=True) for v in (a, b, c)]
    y = layer(*bottoms)
    assert_blob_close(y, np.maximum(np.maximum(a, b), c))
    y.backward(torch.arange(1.0, 6.0, dtype=torch.float64))
    for i, bot in enumerate(bottoms):
        assert_blob_close(bot.grad, np.where(winner == i, np.arange(1.0, 6.0), 0.0), name=f"bottom {i} diff")


@pytest.mark.parametrize("n", [2, 4], ids=["two", "four"])
def test_eltwise_max_gradient(n):
    layer = eltwise("operation: MAX", n=n)
    check_gradient(layer, [rand(2, 3, 4, seed=s) for s in range(n)])


def test_eltwise_errors():
    with pytest.raises(LayerError, match='Eltwise layer "eltwise": takes at least 2 bottom blobs, got 1'):
        eltwise("operation: SUM", n=1)
    with pytest.raises(LayerError, match="one coefficient per bottom blob: 3 bottoms, got 2 coeff values"):
        eltwise("coeff: 1 coeff: 2")
    with pytest.raises(LayerError, match="coeff is only allowed with operation SUM, got operation PROD"):
        eltwise("operation: PROD coeff: 1 coeff: 2 coeff: 3")
    layer = eltwise("operation: SUM", n=2)
    with pytest.raises(LayerError, match=r"bottom 0 is \(2, 3, 4\), bottom 1 is \(2, 3, 5\)"):
        layer.infer_top_shapes([(2, 3, 4), (2, 3, 5)])


# ------------------------------------------------------------------------------------------------------- Concat
CONCAT_CONFIGS = {
    "axis0": ("axis: 0", 0, [(1, 2, 3), (2, 2, 3)]),
    "axis-1": ("axis: -1", 2, [(2, 2, 1), (2, 2, 3), (2, 2, 2)]),
    "concat_dim2": ("concat_dim: 2", 2, [(2, 2, 1), (2, 2, 3)]),
    "single": ("", 1, [(2, 3)]),
}


@pytest.mark.parametrize("params,axis,shapes", CONCAT_CONFIGS.values(), ids=CONCAT_CONFIGS.keys())
def test_concat_matches_numpy(params, axis, shapes):
    layer = make_layer(f'type: "Concat" concat_param {{ {params} }}', shapes)
    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    assert_blob_close(run(layer, *xs)[0], np.concatenate(xs, axis=axis))
    check_gradient(layer, xs)


def test_concat_errors():
    with pytest.raises(LayerError, match="either axis or concat_dim should be specified, not both"):
        make_layer('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [(2, 3)] * 2).infer_top_shapes(
            [(2, 3)] * 2)
    layer = make_layer('type: "Concat"', [(2, 3)] * 2)
    with pytest.raises(LayerError, match=r'Concat layer "concat": all inputs must have the same shape except at '
                                         r'axis 1: bottom 0 is \(2, 3\), bottom 1 is \(3, 3\)'):
        layer.infer_top_shapes([(2, 3), (3, 3)])
    with pytest.raises(LayerError, match="same number of axes"):
        layer.infer_top_shapes([(2, 3), (2, 3, 1)])
    with pytest.raises(LayerError, match="concat_dim 2 is out of range for a bottom with 2 axes"):
        make_layer('type: "Concat" concat_param { concat_dim: 2 }', [(2, 3)] * 2).infer_top_shapes([(2, 3)] * 2)


# -------------------------------------------------------------------------------------------------------- Slice
def slice_layer(params, n_tops, shape):
    tops = "".join(f' top: "t{i}"' for i in range(n_tops))
    return make_layer(f'type: "Slice"{tops} slice_param {{ {params} }}', [shape])


SLICE_CONFIGS = {
    "points": ("slice_point: 1 slice_point: 4", 3, (2, 6, 2), 1, [1, 4]),
    "axis-1": ("axis: -1 slice_point: 2", 2, (2, 3, 5), 2, [2]),
    "slice_dim0": ("slice_dim: 0", 2, (4, 3), 0, [2]),
    "even": ("axis: 2", 3, (2, 2, 6), 2, [2, 4]),
    "single": ("", 1, (2, 3), 1, []),
    "empty_last": ("slice_point: 3", 2, (2, 3), 1, [3]),   # Caffe accepts a point at the very end
}


@pytest.mark.parametrize("params,n,shape,axis,cuts", SLICE_CONFIGS.values(), ids=SLICE_CONFIGS.keys())
def test_slice_matches_numpy(params, n, shape, axis, cuts):
    layer = slice_layer(params, n, shape)
    x = rand(*shape, seed=7)
    tops = run(layer, x)
    expected = np.split(x, cuts, axis=axis)
    assert len(tops) == n
    for i, (t, e) in enumerate(zip(tops, expected)):
        assert_blob_close(t, e, name=f"top {i}")
    assert layer.infer_top_shapes([shape]) == [e.shape for e in expected]
    if all(e.size for e in expected):
        check_gradient(layer, [x])


@pytest.mark.parametrize("params,n,shape,message", [
    ("slice_point: 2", 3, (2, 6), r"needs #tops - 1 = 2 slice_point values for 3 tops, got 1"),
    ("slice_point: 3 slice_point: 2", 3, (2, 6), r"positive and strictly increasing, got \[3, 2\]"),
    ("slice_point: 0", 2, (2, 6), r"positive and strictly increasing, got \[0\]"),
    ("slice_point: 7", 2, (2, 6), r"slice_point 7 lies beyond axis 1 of size 6"),
    ("", 4, (2, 6), r"the number of tops \(4\) must evenly divide axis 1 of size 6"),
    ("axis: 1 slice_dim: 1", 2, (2, 6), r"either axis or slice_dim should be specified, not both"),
    ("slice_dim: 2", 2, (2, 6), r"slice_dim 2 is out of range for a bottom with 2 axes"),
], ids=["point_count", "decreasing", "zero_point", "beyond", "uneven", "axis_and_slice_dim", "slice_dim_range"])
def test_slice_errors(params, n, shape, message):
    layer = slice_layer(params, n, shape)
    with pytest.raises(LayerError, match='Slice layer "slice": .*' + message):
        layer.infer_top_shapes([shape])


# -------------------------------------------------------------------------------------------------------- Split
def test_split_tops_are_views_whose_gradients_add():
    layer = make_layer('type: "Split" top: "a" top: "b" top: "c"', [(2, 3)])
    assert layer.forbids_in_place
    x = torch.tensor(rand(2, 3), requires_grad=True)
    tops = layer(x)
    assert len(tops) == 3 and all(t._base is x and t is not x for t in tops)
    dys = [rand(2, 3, seed=s) for s in range(3)]
    torch.autograd.backward(tops, [torch.as_tensor(d) for d in dys])
    assert_blob_close(x.grad, dys[0] + dys[1] + dys[2], rtol=1e-15)
    check_gradient(layer, [rand(2, 3)])


# ------------------------------------------------------------------------------------------------------ Flatten
@pytest.mark.parametrize("params,expected", [
    ("", (2, 24)), ("axis: 2", (2, 3, 8)), ("axis: 0 end_axis: 1", (6, 2, 4)),
    ("axis: -3 end_axis: -2", (2, 6, 4)), ("axis: 2 end_axis: 1", (2, 3, 1, 2, 4)),
], ids=["default", "axis2", "axis0_end1", "negative", "empty_range"])
def test_flatten_shapes(params, expected):
    layer = make_layer(f'type: "Flatten" flatten_param {{ {params} }}', [(2, 3, 2, 4)])
    assert layer.forbids_in_place
    x = torch.as_tensor(rand(2, 3, 2, 4))
    y = layer(x)
    assert tuple(y.shape) == expected and y._base is x    # a view, as Caffe shares data
    assert_blob_close(y, x.numpy().reshape(expected))
    check_gradient(layer, [x.numpy()])


def test_flatten_errors():
    layer = make_layer('type: "Flatten" flatten_param { axis: 3 end_axis: 1 }', [(2, 3, 2, 4)])
    with pytest.raises(LayerError, match=r'Flatten layer "flatten": end_axis \(1\) must not lie before axis - 1 '
                                         r'\(2\)'):
        layer.infer_top_shapes([(2, 3, 2, 4)])
    layer = make_layer('type: "Flatten" flatten_param { end_axis: 4 }', [(2, 3)])
    with pytest.raises(LayerError, match="end_axis 4 is out of range for a bottom with 2 axes"):
        layer.infer_top_shapes([(2, 3)])


# ------------------------------------------------------------------------------------------------------ Reshape
@pytest.mark.parametrize("params,expected", [
    ("shape { dim: 0 dim: -1 }", (2, 24)),
    ("shape { dim: 0 dim: 0 dim: -1 dim: 2 }", (2, 3, 4, 2)),
    ("shape { dim: -1 }", (48,)),
    ("axis: 1 num_axes: 1 shape { dim: 3 dim: 1 }", (2, 3, 1, 2, 4)),
    ("axis: -1 shape { dim: 1 dim: 1 }", (2, 3, 2, 4, 1, 1)),
    ("axis: 0 num_axes: 0 shape { dim: 1 }", (1, 2, 3, 2, 4)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 6, 4)),
    ("axis: -2 shape { dim: 0 dim: 1 }", (2, 3, 2, 4, 1)),
], ids=["copy_infer", "copy_two", "all", "middle", "append", "prepend", "merge_two", "copy_at_position"])
def test_reshape_shapes(params, expected):
    layer = make_layer(f'type: "Reshape" reshape_param {{ {params} }}', [(2, 3, 2, 4)])
    assert layer.forbids_in_place
    x = torch.as_tensor(rand(2, 3, 2, 4))
    y = layer(x)
    assert tuple(y.shape) == expected and y._base is x
    assert_blob_close(y, x.numpy().reshape(expected))
    assert layer.infer_top_shapes([(2, 3, 2, 4)]) == [expected]
    check_gradient(layer, [x.numpy()])


@pytest.mark.parametrize("params,message", [
    ("shape { dim: -1 dim: -1 }", r"contains 2 dims of -1; at most one may be given"),
    ("shape { dim: 5 dim: -1 }", r"bottom count \(48\) .* must be divisible by the product of the specified "
                                 r"dimensions \(5\)"),
    ("shape { dim: 2 dim: 5 }", r"output count must match input count: bottom \(2, 3, 2, 4\) \(48\), "
                                r"top \(2, 5\) \(10\)"),
    ("axis: 3 shape { dim: 0 dim: 0 }", r"new shape contains a 0 at position 1, but the bottom .* has no axis 4"),
    ("axis: 5 shape { dim: 1 }", r"axis 5 is out of range for a bottom with 4 axes"),
    ("axis: -6 shape { dim: 1 }", r"axis -6 is out of range for a bottom with 4 axes"),
    ("axis: 2 num_axes: 3 shape { dim: 1 }", r"axis \+ num_axes = 5 is out of range"),
    ("shape { dim: -2 }", r"has a dim below -1 \(-2\)"),
    ("num_axes: -2 shape { dim: 1 }", r"num_axes must be >= 0, or -1 for all, got -2"),
], ids=["two_inferred", "not_divisible", "count", "no_axis_to_copy", "axis_high", "axis_low", "num_axes_high",
        "negative_dim", "num_axes_low"])
def test_reshape_errors(params, message):
    with pytest.raises(LayerError, match='Reshape layer "reshape": .*' + message):
        make_layer(f'type: "Reshape" reshape_param {{ {params} }}', [(2, 3, 2, 4)]).infer_top_shapes(
            [(2, 3, 2, 4)])


# ------------------------------------------------------------------------------------------- shared properties
@pytest.mark.parametrize("text,shapes", [
    ('type: "InnerProduct" inner_product_param { num_output: 3 }', [(2, 4)]),
    ('type: "Softmax"', [(2, 4)]),
    ('type: "Eltwise" bottom: "a" bottom: "b" eltwise_param { operation: PROD }', [(2, 4)] * 2),
    ('type: "Eltwise" bottom: "a" bottom: "b" eltwise_param { operation: MAX }', [(2, 4)] * 2),
    ('type: "Concat" bottom: "a" bottom: "b"', [(2, 4)] * 2),
    ('type: "Slice" top: "a" top: "b"', [(2, 4)]),
    ('type: "Split" top: "a" top: "b"', [(2, 4)]),
    ('type: "Flatten"', [(2, 4, 1)]),
    ('type: "Reshape" reshape_param { shape { dim: -1 } }', [(2, 4)]),
], ids=["InnerProduct", "Softmax", "EltwisePROD", "EltwiseMAX", "Concat", "Slice", "Split", "Flatten", "Reshape"])
def test_float32_and_float64_keep_their_dtype(text, shapes):
    layer = make_layer(text, shapes)
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        tops = as_tuple(layer(*[torch.zeros(s, dtype=dtype) for s in shapes]))
        assert all(t.dtype == dtype for t in tops)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["innerproduct", "eltwise_prod", "eltwise_max", "concat", "slice", "reshape"])
def test_cuda_matches_cpu(name):
    case = Case.load("layers", name)
    lp, layer = case_layer(case)
    results = []
    for device in ("cpu", "cuda"):
        layer = layer.to(device)
        bottoms = [torch.from_numpy(case.data(b)).to(device).requires_grad_(True) for b in lp.bottom]
        tops = as_tuple(layer(*bottoms))
        torch.autograd.backward(tops, [torch.from_numpy(case.output_diff(t)).to(device) for t in lp.top])
        results.append([t.detach().cpu() for t in tops] + [b.grad.cpu() for b in bottoms])
    for cpu, cuda in zip(*results):
        assert_blob_close(cuda, cpu.numpy(), **case.tolerance)
