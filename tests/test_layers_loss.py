"""Accuracy, SoftmaxWithLoss and EuclideanLoss against real Caffe (tests/fixtures/layers), against NumPy
references for the configurations the fixtures leave out, through the gradient checker, and on their edge
cases and error messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from helpers import Case, as_tuple, assert_blob_close, check_gradient, check_loss_case, make_layer

from caffelike.errors import LayerError

FLT_MIN = np.finfo(np.float32).tiny


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def labels(shape, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.float64)


def run(layer, *arrays):
    return as_tuple(layer(*[torch.as_tensor(a) for a in arrays]))


# ---------------------------------------------------------------------------------------------- real-Caffe cases
@pytest.mark.parametrize("name", ["accuracy", "softmaxwithloss", "softmaxwithloss_spatial_ignore",
                                  "euclideanloss"])
def test_matches_caffe(name):
    check_loss_case(Case.load("layers", name))


# ----------------------------------------------------------------------------------------------------- Accuracy
def np_accuracy(x, label, top_k, axis, ignore=None):
    """Caffe's loop, position by position."""
    axis = axis % x.ndim
    classes = x.shape[axis]
    scores = np.moveaxis(x, axis, -1).reshape(-1, classes)   # (outer*inner, C) in (outer, inner) order
    lab = label.reshape(-1).astype(int)
    hits, seen, counted, correct = np.zeros(classes), np.zeros(classes), 0, 0
    for s, l in zip(scores, lab):
        if ignore is not None and l == ignore:
            continue
        seen[l] += 1
        counted += 1
        if (s >= s[l]).sum() - 1 < top_k:
            correct += 1
            hits[l] += 1
    acc = correct / counted if counted else 0.0
    return acc, np.where(seen > 0, hits / np.maximum(seen, 1), 0.0)


ACC_CONFIGS = {
    "top1": ("", (6, 5), 1, 1, None),
    "top3": ("top_k: 3", (6, 5), 3, 1, None),
    "spatial": ("", (2, 4, 3, 2), 1, 1, None),
    "axis-1": ("axis: -1 top_k: 2", (3, 2, 4), 2, -1, None),
    "ignore": ("ignore_label: 1", (8, 3), 1, 1, 1),
}


@pytest.mark.parametrize("params,shape,top_k,axis,ignore", ACC_CONFIGS.values(), ids=ACC_CONFIGS.keys())
def test_accuracy_matches_numpy(params, shape, top_k, axis, ignore):
    layer = make_layer(f'type: "Accuracy" top: "acc" top: "per_class" accuracy_param {{ {params} }}',
                       [shape, (1,)])
    x = rand(*shape, seed=1)
    classes = shape[axis]
    n_labels = x.size // classes
    label = labels((n_labels,), classes, seed=2)
    acc, per_class = run(layer, x, label)
    want_acc, want_per_class = np_accuracy(x, label, top_k, axis, ignore)
    assert_blob_close(acc, np.array(want_acc), rtol=1e-15)
    assert_blob_close(per_class, want_per_class, rtol=1e-15)


def test_accuracy_ties_count_against_the_true_class():
    layer = make_layer('type: "Accuracy" top: "acc" top: "per_class"', [(4, 3), (4,)])
    x = np.array([[1.0, 1.0, 0.0],     # label 0 ties with class 1: wrong
                  [0.0, 2.0, 2.0],     # label 2 ties with class 1: wrong
                  [3.0, 2.0, 1.0],     # label 0 strictly best: right
                  [0.0, 0.0, 0.0]],    # label 1, three-way tie: wrong
                 np.float32)
    acc, per_class = run(layer, x, np.array([0, 2, 0, 1], np.float32))
    assert_blob_close(acc, np.array(0.25, np.float32))
    assert_blob_close(per_class, np.array([0.5, 0.0, 0.0], np.float32))
    top2 = make_layer('type: "Accuracy" accuracy_param { top_k: 2 }', [(4, 3), (4,)])
    assert_blob_close(run(top2, x, np.array([0, 2, 0, 1], np.float32))[0], np.array(0.75, np.float32))


def test_accuracy_everything_ignored_is_zero():
    layer = make_layer('type: "Accuracy" top: "acc" top: "pc" accuracy_param { ignore_label: 7 }', [(3, 2), (3,)])
    acc, per_class = run(layer, rand(3, 2), np.full(3, 7.0))
    assert_blob_close(acc, np.array(0.0))
    assert_blob_close(per_class, np.zeros(2))


def test_accuracy_shapes_and_no_gradient():
    layer = make_layer('type: "Accuracy" top: "acc" top: "per_class"', [(2, 4, 3), (2, 3)])
    assert layer.infer_top_shapes([(2, 4, 3), (2, 3)]) == [(), (4,)]
    assert layer.backward_free and not layer.is_loss
    assert not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    x = torch.tensor(rand(2, 4, 3), requires_grad=True)
    tops = layer(x, torch.as_tensor(labels((2, 3), 4)))
    assert not any(t.requires_grad for t in tops)
    single = make_layer('type: "Accuracy"', [(2, 4, 3), (2, 3)])
    assert single.infer_top_shapes([(2, 4, 3), (2, 3)]) == [()]


@pytest.mark.parametrize("params,shapes,label,message", [
    ("", [(4, 3), (3,)], None, r"number of labels must match number of predictions: .*must be 4, got 3"),
    ("top_k: 4", [(4, 3), (4,)], None, r"top_k must be less than or equal to the number of classes: "
                                       r"top_k 4, 3 classes"),
    ("", [(4, 3), (4,)], [0, 1, 3, 0], r"label value 3 is outside \[0, 3\)"),
    ("ignore_label: -1", [(4, 3), (4,)], [0, -1, -2, 0], r"label value -2 is outside \[0, 3\) and is not the "
                                                         r"ignore_label -1"),
], ids=["label_count", "top_k", "label_high", "label_negative"])
def test_accuracy_errors(params, shapes, label, message):
    layer = make_layer(f'type: "Accuracy" accuracy_param {{ {params} }}', shapes)
    lab = np.zeros(shapes[1]) if label is None else np.array(label, np.float64)
    with pytest.raises(LayerError, match='Accuracy layer "accuracy": ' + message):
        run(layer, rand(*shapes[0]), lab)


# ---------------------------------------------------------------------------------------------- SoftmaxWithLoss
def np_softmax_loss(x, label, axis=1, ignore=None, mode="VALID"):
    """Loss, gradient (for a top diff of 1) and probabilities, following Caffe's formulas."""
    axis = axis % x.ndim
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    prob = e / e.sum(axis=axis, keepdims=True)
    p = np.moveaxis(prob, axis, -1).reshape(-1, x.shape[axis])
    lab = label.reshape(-1).astype(int)
    valid = np.ones(lab.shape, bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    rows = np.arange(len(lab))
    loss = -np.log(np.maximum(p[rows, safe], FLT_MIN))[valid].sum()
    outer = int(np.prod(x.shape[:axis]))
    normalizer = max(1.0, {"FULL": len(lab), "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode])
    grad = p.copy()
    grad[rows[valid], safe[valid]] -= 1
    grad[~valid] = 0
    grad = np.moveaxis(grad.reshape(*np.moveaxis(prob, axis, -1).shape), -1, axis) / normalizer
    return loss / normalizer, grad, prob


SWL_CONFIGS = {
    "valid_default": ("", (4, 5), 1, None, "VALID"),
    "full_ignore": ("loss_param { ignore_label: 2 normalization: FULL }", (2, 3, 2, 2), 1, 2, "FULL"),
    "valid_ignore": ("loss_param { ignore_label: 2 normalization: VALID }", (2, 3, 2, 2), 1, 2, "VALID"),
    "batch_size": ("loss_param { normalization: BATCH_SIZE }", (2, 3, 2, 2), 1, None, "BATCH_SIZE"),
    "none": ("loss_param { normalization: NONE }", (2, 3, 2, 2), 1, None, "NONE"),
    "normalize_true": ("loss_param { ignore_label: 0 normalize: true }", (2, 3, 4), 1, 0, "VALID"),
    "normalize_false": ("loss_param { ignore_label: 0 normalize: false }", (2, 3, 4), 1, 0, "BATCH_SIZE"),
    "normalization_wins": ("loss_param { normalize: false normalization: FULL }", (2, 3, 4), 1, None, "FULL"),
    "axis-1": ("softmax_param { axis: -1 }", (2, 3, 4), -1, None, "VALID"),
    "axis2": ("softmax_param { axis: 2 } loss_param { ignore_label: 1 }", (2, 3, 4), 2, 1, "VALID"),
}


def swl_case(shape, axis, seed=3):
    x = rand(*shape, seed=seed) * 2
    axis = axis % len(shape)
    label_shape = shape[:axis] + shape[axis + 1:]
    return x, labels(label_shape, shape[axis], seed=seed + 1)


@pytest.mark.parametrize("params,shape,axis,ignore,mode", SWL_CONFIGS.values(), ids=SWL_CONFIGS.keys())
def test_softmax_loss_matches_numpy(params, shape, axis, ignore, mode):
    x, label = swl_case(shape, axis)
    layer = make_layer(f'type: "SoftmaxWithLoss" top: "loss" top: "prob" {params}', [shape, label.shape])
    want_loss, want_grad, want_prob = np_softmax_loss(x, label, axis, ignore, mode)
    xt = torch.tensor(x, requires_grad=True)
    loss, prob = layer(xt, torch.as_tensor(label))
    assert_blob_close(loss, np.array(want_loss), rtol=1e-13)
    assert_blob_close(prob, want_prob, rtol=1e-13, atol=1e-16)
    assert not prob.requires_grad      # Caffe's backward never reads the probability top's diff
    loss.backward(torch.tensor(3.0, dtype=torch.float64))
    assert_blob_close(xt.grad, 3.0 * want_grad, rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("params,shape,axis,ignore,mode", SWL_CONFIGS.values(), ids=SWL_CONFIGS.keys())
def test_softmax_loss_gradient(params, shape, axis, ignore, mode):
    x, label = swl_case(shape, axis, seed=5)
    layer = make_layer(f'type: "SoftmaxWithLoss" {params}', [shape, label.shape])
    check_gradient(layer, [x, label], grad_bottoms=[0])


def test_softmax_loss_clamp_keeps_caffe_gradient():
    # p(label) underflows to 0 in float32: the log is clamped at FLT_MIN, yet the gradient stays p - 1.
    layer = make_layer('type: "SoftmaxWithLoss"', [(1, 3), (1,)])
    x = torch.tensor([[0.0, -200.0, 1.0]], requires_grad=True)
    loss = layer(x, torch.tensor([1.0]))
    assert_blob_close(loss, np.array(-np.log(FLT_MIN), np.float32), rtol=1e-6)
    loss.backward()
    p = torch.softmax(x.detach(), 1).numpy()
    assert p[0, 1] == 0.0
    assert_blob_close(x.grad, p - np.array([[0.0, 1.0, 0.0]], np.float32), rtol=1e-6)


def test_softmax_loss_labels_truncate_like_a_cast_to_int():
    layer = make_layer('type: "SoftmaxWithLoss"', [(2, 3), (2,)])
    x = rand(2, 3)
    assert_blob_close(run(layer, x, np.array([2.7, 0.2]))[0], run(layer, x, np.array([2.0, 0.0]))[0])


def test_softmax_loss_everything_ignored():
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 4 }', [(3, 2), (3,)])
    x = torch.tensor(rand(3, 2), requires_grad=True)
    loss = layer(x, torch.full((3,), 4.0, dtype=torch.float64))
    loss.backward()
    assert float(loss.detach()) == 0.0 and not x.grad.any()   # normalizer clamped to 1, no 0/0


def test_softmax_loss_shapes_and_flags():
    layer = make_layer('type: "SoftmaxWithLoss" top: "loss" top: "prob"', [(2, 3, 4), (2, 4)])
    assert layer.is_loss and not layer.backward_free
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    assert layer.infer_top_shapes([(2, 3, 4), (2, 1, 4)]) == [(), (2, 3, 4)]
    x = torch.tensor(rand(2, 3, 4), requires_grad=True)
    label = torch.as_tensor(labels((2, 4), 3)).requires_grad_(True)
    layer(x, label)[0].backward()
    assert label.grad is None


@pytest.mark.parametrize("shapes,label,message", [
    ([(4, 3), (3,)], None, r"the data and label should have the same first dimension: bottom 0 is \(4, 3\), "
                           r"bottom 1 is \(3\)"),
    ([(2, 3, 2), (2, 3)], None, r"number of labels must match number of predictions: .*must be 4, got 6"),
    ([(4, 3), (4,)], [0, 1, 3, 0], r"label value 3 is outside \[0, 3\)$"),
    ([(4, 3), (4,)], [0, -1, 1, 0], r"label value -1 is outside \[0, 3\)$"),
], ids=["first_dim", "label_count", "label_high", "label_negative"])
def test_softmax_loss_errors(shapes, label, message):
    layer = make_layer('type: "SoftmaxWithLoss"', shapes)
    lab = np.zeros(shapes[1]) if label is None else np.array(label, np.float64)
    with pytest.raises(LayerError, match='SoftmaxWithLoss layer "softmaxwithloss": ' + message):
        run(layer, rand(*shapes[0]), lab)


def test_softmax_loss_ignored_label_may_be_out_of_range():
    layer = make_layer('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }', [(2, 3), (2,)])
    x = rand(2, 3)
    want, _, _ = np_softmax_loss(x, np.array([1.0, 255.0]), ignore=255)
    assert_blob_close(run(layer, x, np.array([1.0, 255.0]))[0], np.array(want), rtol=1e-13)


# ------------------------------------------------------------------------------------------------ EuclideanLoss
@pytest.mark.parametrize("shape_a,shape_b", [((3, 4), (3, 4)), ((2, 3, 2), (2, 6)), ((5,), (5, 1, 1))],
                         ids=["same", "reshaped", "one_axis"])
def test_euclidean_loss_matches_numpy(shape_a, shape_b):
    layer = make_layer('type: "EuclideanLoss"', [shape_a, shape_b])
    a, b = rand(*shape_a, seed=1), rand(*shape_b, seed=2)
    d = a - b.reshape(shape_a)
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = layer(at, bt)
    assert loss.shape == ()
    assert_blob_close(loss, np.array((d ** 2).sum() / shape_a[0] / 2), rtol=1e-14)
    loss.backward(torch.tensor(0.5, dtype=torch.float64))
    assert_blob_close(at.grad, 0.5 * d / shape_a[0], rtol=1e-14)
    assert_blob_close(bt.grad, (-0.5 * d / shape_a[0]).reshape(shape_b), rtol=1e-14)
    check_gradient(layer, [a, b])


def test_euclidean_loss_both_bottoms_take_force_backward():
    layer = make_layer('type: "EuclideanLoss"', [(3, 4), (3, 4)])
    assert layer.is_loss and layer.allow_force_backward(0) and layer.allow_force_backward(1)


@pytest.mark.parametrize("shapes,message", [
    ([(3, 4), (3, 5)], r"inputs must have the same dimension: count\(1\) of bottom 0 \(3, 4\) is 4, "
                       r"of bottom 1 \(3, 5\) is 5"),
    ([(3, 4), (4, 3)], r"the data and label should have the same first dimension: bottom 0 is \(3, 4\), "
                       r"bottom 1 is \(4, 3\)"),
], ids=["count", "first_dim"])
def test_euclidean_loss_errors(shapes, message):
    layer = make_layer('type: "EuclideanLoss"', shapes)
    with pytest.raises(LayerError, match='EuclideanLoss layer "euclideanloss": ' + message):
        layer.infer_top_shapes(shapes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["softmaxwithloss_spatial_ignore", "euclideanloss", "accuracy"])
def test_cuda_matches_caffe(name):
    case = Case.load("layers", name)
    lp = next(l for l in case.net_param().layer if l.type != "Input")
    layer = make_layer(text_format.MessageToString(lp), [case.meta["blob_shapes"][b] for b in lp.bottom]).cuda()
    bottoms = [torch.from_numpy(case.data(b)).cuda().requires_grad_(b in case.meta["diff_blobs"])
               for b in lp.bottom]
    tops = as_tuple(layer(*bottoms))
    for top, t in zip(tops, lp.top):
        assert top.device.type == "cuda"
        assert_blob_close(top, case.data(t), **case.tolerance, name=t)
    if case.meta["backward"]:
        torch.autograd.backward(tops, [torch.tensor(case.meta["loss_weights"][t], device="cuda") for t in lp.top])
        for b, x in zip(lp.bottom, bottoms):
            if b in case.meta["diff_blobs"]:
                assert_blob_close(x.grad, case.diff(b), **case.tolerance, name=f"{b} diff")
