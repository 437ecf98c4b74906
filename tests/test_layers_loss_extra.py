"""SigmoidCrossEntropyLoss, HingeLoss, ContrastiveLoss, InfogainLoss, MultinomialLogisticLoss and HDF5Output:
against real Caffe (tests/fixtures/layers), against NumPy transcriptions of Caffe's loops for the options the
fixtures leave out, through the gradient checker, and on their Caffe-specific backward rules and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import Case, as_tuple, assert_blob_close, check_gradient, check_loss_case, make_layer

from caffelike.errors import LayerError
from caffelike.io import array_to_blobproto

LOG_THRESHOLD = float(np.float32(1e-20))


def rand(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).standard_normal(shape) * scale


def labels(shape, classes, seed=0):
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.float64)


def run(layer, *arrays):
    return as_tuple(layer(*[torch.as_tensor(a) for a in arrays]))


def loss_and_grad(layer, x, *rest, weight=3.0):
    """Loss and d(weight·loss)/dx of bottom 0 (float64)."""
    xt = torch.tensor(x, requires_grad=True)
    loss = as_tuple(layer(xt, *[torch.as_tensor(a) for a in rest]))[0]
    loss.backward(torch.tensor(weight, dtype=torch.float64))
    return loss.detach().numpy(), xt.grad.numpy()


def normalizer(mode, n_valid, outer, inner):
    return max(1.0, {"FULL": outer * inner, "VALID": n_valid, "BATCH_SIZE": outer, "NONE": 1}[mode])


# ---------------------------------------------------------------------------------------------- real-Caffe cases
@pytest.mark.parametrize("name", ["sigmoidcrossentropyloss", "hingeloss", "contrastiveloss", "infogainloss",
                                  "multinomiallogisticloss"])
def test_matches_caffe(name, monkeypatch):
    case = Case.load("layers", name)
    if case.meta.get("cwd"):
        monkeypatch.chdir(case.path)
    check_loss_case(case)


# -------------------------------------------------------------------------------------- SigmoidCrossEntropyLoss
def np_sigmoid_ce(x, t, ignore=None, mode="BATCH_SIZE"):
    """Caffe's loop: loss and gradient for a top diff of 1."""
    valid = np.ones(x.shape, bool) if ignore is None else t.astype(int) != ignore
    pos = (x >= 0).astype(x.dtype)
    terms = x * (t - pos) - np.log1p(np.exp(x - 2 * x * pos))
    n = normalizer(mode, valid.sum(), x.shape[0], x[0].size)
    grad = np.where(valid, 1 / (1 + np.exp(-x)) - t, 0.0) / n
    return -terms[valid].sum() / n, grad


SCE_CONFIGS = {
    "default_batch_size": ("", (3, 4), None, "BATCH_SIZE"),
    "valid": ("loss_param { normalization: VALID }", (3, 4), None, "VALID"),
    "full_ignore": ("loss_param { normalization: FULL ignore_label: -1 }", (2, 3, 2), -1, "FULL"),
    "valid_ignore": ("loss_param { normalization: VALID ignore_label: -1 }", (2, 3, 2), -1, "VALID"),
    "none": ("loss_param { normalization: NONE }", (2, 5), None, "NONE"),
    "normalize_true": ("loss_param { normalize: true ignore_label: -1 }", (4, 3), -1, "VALID"),
    "normalize_false": ("loss_param { normalize: false }", (4, 3), None, "BATCH_SIZE"),
}


@pytest.mark.parametrize("params,shape,ignore,mode", SCE_CONFIGS.values(), ids=SCE_CONFIGS.keys())
def test_sigmoid_ce_matches_numpy(params, shape, ignore, mode):
    x = rand(*shape, seed=1, scale=3)
    t = np.random.default_rng(2).uniform(0, 1, shape)   # soft targets
    if ignore is not None:
        t[np.random.default_rng(3).uniform(size=shape) < 0.3] = ignore
    layer = make_layer(f'type: "SigmoidCrossEntropyLoss" {params}', [shape, shape])
    loss, grad = loss_and_grad(layer, x, t)
    want_loss, want_grad = np_sigmoid_ce(x, t, ignore, mode)
    assert_blob_close(loss, np.array(want_loss), rtol=1e-13)
    assert_blob_close(grad, 3.0 * want_grad, rtol=1e-12, atol=1e-15)
    check_gradient(layer, [x, t], grad_bottoms=[0])


def test_sigmoid_ce_is_stable_and_truncates_ignore():
    layer = make_layer('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 1 }', [(1, 3), (1, 3)])
    # 0.7 truncates to 0 (counted), 1.9 to 1 (ignored); |x| = 200 neither overflows nor loses the loss.
    loss, grad = loss_and_grad(layer, np.array([[200.0, -200.0, 5.0]]), np.array([[0.0, 0.7, 1.9]]), weight=1.0)
    assert_blob_close(loss, np.array(200.0 + 140.0), rtol=1e-12)
    assert_blob_close(grad, np.array([[1.0, -0.7, 0.0]]), rtol=1e-12)


def test_sigmoid_ce_errors():
    layer = make_layer('type: "SigmoidCrossEntropyLoss"', [(3, 4), (3, 3)])
    with pytest.raises(LayerError, match=r'SigmoidCrossEntropyLoss layer "sigmoidcrossentropyloss": inputs must '
                                         r'have the same count: bottom 0 \(3, 4\) has 12 values'):
        layer.infer_top_shapes([(3, 4), (3, 3)])
    with pytest.raises(LayerError, match="same first dimension"):
        layer.infer_top_shapes([(3, 4), (4, 3)])


# ---------------------------------------------------------------------------------------------------- HingeLoss
def np_hinge(x, label, l2):
    n = x.shape[0]
    x2 = x.reshape(n, -1)
    s = np.ones_like(x2)
    s[np.arange(n), label.astype(int)] = -1
    m = np.maximum(0, 1 + s * x2)
    loss = (m * m).sum() / n if l2 else m.sum() / n
    grad = 2 * s * m / n if l2 else s * (m > 0) / n
    return loss, grad.reshape(x.shape)


@pytest.mark.parametrize("params,l2", [("", False), ("hinge_loss_param { norm: L1 }", False),
                                       ("hinge_loss_param { norm: L2 }", True)], ids=["default", "L1", "L2"])
@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 2, 2)], ids=["2d", "4d"])
def test_hinge_matches_numpy(params, l2, shape):
    x = rand(*shape, seed=4, scale=1.5)
    x = np.where(np.abs(np.abs(x) - 1) < 0.05, 0.5, x)   # away from the kinks |x| = 1
    label = labels((shape[0],), int(np.prod(shape[1:])), seed=5)
    layer = make_layer(f'type: "HingeLoss" {params}', [shape, label.shape])
    loss, grad = loss_and_grad(layer, x, label)
    want_loss, want_grad = np_hinge(x, label, l2)
    assert_blob_close(loss, np.array(want_loss), rtol=1e-13)
    assert_blob_close(grad, 3.0 * want_grad, rtol=1e-13)
    check_gradient(layer, [x, label], grad_bottoms=[0])


def test_hinge_l1_gradient_is_zero_at_the_kink():
    # 1 + s·x = 0 exactly: Caffe's sign gives 0 there (a clamp's autograd would give s/N).
    layer = make_layer('type: "HingeLoss"', [(1, 2), (1,)])
    _, grad = loss_and_grad(layer, np.array([[-1.0, 1.0]]), np.array([1.0]), weight=1.0)
    assert_blob_close(grad, np.zeros((1, 2)))


@pytest.mark.parametrize("shapes,label,message", [
    ([(3, 4), (3, 2)], None, r"needs one label per sample: bottom 0 \(3, 4\) has 3 samples, bottom 1 \(3, 2\) "
                             r"holds 6 values"),
    ([(2, 4), (2,)], [0, 4], r"label value 4 is outside \[0, 4\)"),
], ids=["label_count", "label_range"])
def test_hinge_errors(shapes, label, message):
    layer = make_layer('type: "HingeLoss"', shapes)
    lab = np.zeros(shapes[1]) if label is None else np.array(label, np.float64)
    with pytest.raises(LayerError, match='HingeLoss layer "hingeloss": ' + message):
        run(layer, rand(*shapes[0]), lab)


# ---------------------------------------------------------------------------------------------- ContrastiveLoss
def np_contrastive(a, b, y, margin, legacy):
    """Caffe's forward and backward loops (gradients for a top diff of 1), the +1e-4 included."""
    n = a.shape[0]
    d = (a - b).reshape(n, -1)
    dist_sq = (d * d).sum(1)
    loss, grad = 0.0, np.zeros_like(d)
    for i in range(n):
        if int(y[i]):
            loss += dist_sq[i]
            grad[i] = d[i] / n
        elif legacy:
            loss += max(margin - dist_sq[i], 0)
            grad[i] = -d[i] / n if margin - dist_sq[i] > 0 else 0
        else:
            dist = np.sqrt(dist_sq[i])
            loss += max(margin - dist, 0) ** 2
            grad[i] = -(margin - dist) / (dist + 1e-4) * d[i] / n if margin - dist > 0 else 0
    return loss / n / 2, grad.reshape(a.shape), -grad.reshape(b.shape)


@pytest.mark.parametrize("params,margin,legacy,shape", [
    ("", 1.0, False, (8, 3)),
    ("contrastive_loss_param { margin: 2.5 }", 2.5, False, (8, 3, 1, 1)),
    ("contrastive_loss_param { legacy_version: true }", 1.0, True, (8, 3)),
    ("contrastive_loss_param { margin: 3 legacy_version: true }", 3.0, True, (8, 2, 1, 1)),
], ids=["default", "margin", "legacy", "legacy_margin"])
def test_contrastive_matches_numpy(params, margin, legacy, shape):
    a, b = rand(*shape, seed=6, scale=0.7), rand(*shape, seed=7, scale=0.7)
    y = np.array([1, 0, 0, 1, 0, 0.6, 0, 2.0])      # 0.6 casts to 0: dissimilar; 2 -> similar
    layer = make_layer(f'type: "ContrastiveLoss" {params}', [shape, shape, (8,)])
    at, bt, yt = (torch.tensor(v, requires_grad=True) for v in (a, b, y))
    loss = layer(at, bt, yt)
    loss.backward(torch.tensor(2.0, dtype=torch.float64))
    want_loss, want_da, want_db = np_contrastive(a, b, y, margin, legacy)
    assert_blob_close(loss, np.array(want_loss), rtol=1e-13)
    assert_blob_close(at.grad, 2 * want_da, rtol=1e-12, atol=1e-16)
    assert_blob_close(bt.grad, 2 * want_db, rtol=1e-12, atol=1e-16)
    assert yt.grad is None
    # Caffe's +1e-4 moves the gradient by about 1e-4/d relative to the true derivative.
    check_gradient(layer, [a, b, y], grad_bottoms=[0, 1], threshold=1e-4 if legacy else 2e-3)


def test_contrastive_flags_and_errors():
    layer = make_layer('type: "ContrastiveLoss"', [(4, 3), (4, 3), (4,)])
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1) and not layer.allow_force_backward(2)
    prefix = 'ContrastiveLoss layer "contrastiveloss": '
    with pytest.raises(LayerError, match=prefix + r"a and b must have the same channels"):
        layer.infer_top_shapes([(4, 3), (4, 2), (4,)])
    with pytest.raises(LayerError, match=prefix + r"bottom 0 must be \(N, C\) or \(N, C, 1, 1\), got \(4, 3, 2, 1\)"):
        layer.infer_top_shapes([(4, 3, 2), (4, 3, 2), (4,)])
    with pytest.raises(LayerError, match=prefix + r"the similarity bottom 2 must hold one value per pair"):
        layer.infer_top_shapes([(4, 3), (4, 3), (4, 2)])


# ------------------------------------------------------------------------------------------------- InfogainLoss
def np_infogain(x, label, h, axis=1, ignore=None, mode="VALID"):
    """Caffe's loops: loss, gradient (top diff 1) and probabilities."""
    axis = axis % x.ndim
    c = x.shape[axis]
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    prob = e / e.sum(axis=axis, keepdims=True)
    p = np.moveaxis(prob, axis, -1).reshape(-1, c)
    lab = label.reshape(-1).astype(int)
    h = h.reshape(c, c)
    loss, grad, counted = 0.0, np.zeros_like(p), 0
    for i, l in enumerate(lab):
        if ignore is not None and l == ignore:
            continue
        loss -= (h[l] * np.log(np.maximum(p[i], LOG_THRESHOLD))).sum()
        grad[i] = p[i] * h[l].sum() - h[l]
        counted += 1
    outer = int(np.prod(x.shape[:axis]))
    n = normalizer(mode, counted, outer, len(lab) // outer)
    grad = np.moveaxis(grad.reshape(np.moveaxis(prob, axis, -1).shape), -1, axis) / n
    return loss / n, grad, prob


IG_CONFIGS = {
    "valid": ("", (4, 3), 1, None, "VALID"),
    "spatial_ignore": ("loss_param { ignore_label: 2 }", (2, 3, 2, 2), 1, 2, "VALID"),
    "full_ignore": ("loss_param { ignore_label: 0 normalization: FULL }", (2, 3, 4), 1, 0, "FULL"),
    "batch_size": ("loss_param { normalization: BATCH_SIZE }", (2, 3, 2, 2), 1, None, "BATCH_SIZE"),
    "none": ("loss_param { normalization: NONE }", (3, 4), 1, None, "NONE"),
    "axis-1": ("infogain_loss_param { axis: -1 }", (2, 3, 4), -1, None, "VALID"),
}


def infogain_case(shape, axis, seed=8):
    axis = axis % len(shape)
    c = shape[axis]
    x = rand(*shape, seed=seed, scale=2)
    label = labels(shape[:axis] + shape[axis + 1:], c, seed=seed + 1)
    h = np.eye(c) + np.random.default_rng(seed + 2).uniform(0, 0.3, (c, c))
    return x, label, h


@pytest.mark.parametrize("params,shape,axis,ignore,mode", IG_CONFIGS.values(), ids=IG_CONFIGS.keys())
def test_infogain_matches_numpy(params, shape, axis, ignore, mode):
    x, label, h = infogain_case(shape, axis)
    layer = make_layer(f'type: "InfogainLoss" top: "loss" top: "prob" {params}', [shape, label.shape, h.shape])
    assert layer.infer_top_shapes([shape, label.shape, h.shape]) == [(), shape]
    xt, ht = torch.tensor(x, requires_grad=True), torch.tensor(h, requires_grad=True)
    loss, prob = layer(xt, torch.as_tensor(label), ht)
    want_loss, want_grad, want_prob = np_infogain(x, label, h, axis, ignore, mode)
    assert_blob_close(loss, np.array(want_loss), rtol=1e-13)
    assert_blob_close(prob, want_prob, rtol=1e-13, atol=1e-16)
    assert not prob.requires_grad
    loss.backward(torch.tensor(3.0, dtype=torch.float64))
    assert_blob_close(xt.grad, 3.0 * want_grad, rtol=1e-12, atol=1e-15)
    assert ht.grad is None
    # The probability top has no gradient (Caffe ignores its diff), so check the loss-only form.
    single = make_layer(f'type: "InfogainLoss" {params}', [shape, label.shape, h.shape])
    check_gradient(single, [x, label, h], grad_bottoms=[0])


def test_infogain_reads_h_relative_to_the_working_directory(tmp_path, monkeypatch):
    x, label, h = infogain_case((3, 4), 1, seed=11)
    blob = array_to_blobproto(h.reshape(1, 1, 4, 4).astype(np.float32))
    (tmp_path / "H.binaryproto").write_bytes(blob.SerializeToString())
    monkeypatch.chdir(tmp_path)
    layer = make_layer('type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }', [(3, 4), (3,)])
    loss, grad = loss_and_grad(layer, x, label)
    want_loss, want_grad, _ = np_infogain(x, label, h.astype(np.float32).astype(np.float64))
    assert_blob_close(loss, np.array(want_loss), rtol=1e-13)
    assert_blob_close(grad, 3.0 * want_grad, rtol=1e-12)
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(2)  # Caffe's LossLayer rule
    assert "label" in layer.gradient_refusal(1, 3) and "infogain" in layer.gradient_refusal(2, 3)


def test_infogain_gradient_ignores_the_clamp():
    # p of class 1 underflows below 1e-20: the loss uses the clamp, the gradient Caffe's unclamped formula.
    h = np.array([[0.0, 1.0], [0.0, 1.0]])
    layer = make_layer('type: "InfogainLoss"', [(1, 2), (1,), (2, 2)])
    loss, grad = loss_and_grad(layer, np.array([[0.0, -100.0]]), np.array([0.0]), h, weight=1.0)
    assert_blob_close(loss, np.array(-np.log(LOG_THRESHOLD)), rtol=1e-12)
    p1 = np.exp(-100.0) / (1 + np.exp(-100.0))
    assert_blob_close(grad, np.array([[1 - p1, p1 - 1]]), rtol=1e-12)


@pytest.mark.parametrize("text,shapes,message", [
    ('loss_param { normalize: true }', [(3, 4), (3,), (4, 4)], r"loss_param.normalize is deprecated"),
    ('', [(3, 4), (3,)], r"Infogain matrix source must be specified"),
    ('infogain_loss_param { source: "no/such/H.binaryproto" }', [(3, 4), (3,)],
     r"cannot read the infogain matrix 'no/such/H.binaryproto' \(.*relative paths are resolved against the "
     r"working directory"),
], ids=["normalize", "no_source", "missing_file"])
def test_infogain_setup_errors(text, shapes, message):
    with pytest.raises(LayerError, match='InfogainLoss layer "infogainloss": ' + message):
        make_layer(f'type: "InfogainLoss" {text}', shapes)


def test_infogain_h_size_error():
    layer = make_layer('type: "InfogainLoss"', [(3, 4), (3,), (3, 3)])
    with pytest.raises(LayerError, match=r"the infogain matrix H \(bottom 2\) has 9 values; 4 classes along axis 1 "
                                         r"need 4x4 = 16"):
        layer.infer_top_shapes([(3, 4), (3,), (3, 3)])


# -------------------------------------------------------------------------------------- MultinomialLogisticLoss
def test_multinomial_matches_numpy():
    p = np.random.default_rng(12).uniform(0.05, 1, (5, 2, 3))
    label = labels((5, 1, 1, 1), 6, seed=13)
    layer = make_layer('type: "MultinomialLogisticLoss"', [p.shape, label.shape])
    loss, grad = loss_and_grad(layer, p, label)
    rows, lab = np.arange(5), label.reshape(-1).astype(int)
    p2 = p.reshape(5, 6)
    want_grad = np.zeros_like(p2)
    want_grad[rows, lab] = -1 / (5 * p2[rows, lab])
    assert_blob_close(loss, np.array(-np.log(p2[rows, lab]).sum() / 5), rtol=1e-13)
    assert_blob_close(grad, 3.0 * want_grad.reshape(p.shape), rtol=1e-13)
    check_gradient(layer, [p, label], grad_bottoms=[0])


def test_multinomial_clamp_keeps_caffe_gradient():
    layer = make_layer('type: "MultinomialLogisticLoss"', [(2, 2), (2,)])
    loss, grad = loss_and_grad(layer, np.array([[0.0, 1.0], [0.5, 0.5]]), np.array([0.0, 1.0]), weight=1.0)
    assert_blob_close(loss, np.array((-np.log(LOG_THRESHOLD) - np.log(0.5)) / 2), rtol=1e-13)
    assert_blob_close(grad, np.array([[-0.5 / LOG_THRESHOLD, 0.0], [0.0, -1.0]]), rtol=1e-13)


@pytest.mark.parametrize("shapes,label,message", [
    ([(3, 4), (3, 2)], None, r"the label bottom 1 must be \(N,\) or \(N, 1, 1, 1\), got \(3, 2\)"),
    ([(2, 4), (2,)], [0, -1], r"label value -1 is outside \[0, 4\)"),
], ids=["label_shape", "label_range"])
def test_multinomial_errors(shapes, label, message):
    layer = make_layer('type: "MultinomialLogisticLoss"', shapes)
    lab = np.zeros(shapes[1]) if label is None else np.array(label, np.float64)
    with pytest.raises(LayerError, match='MultinomialLogisticLoss layer "multinomiallogisticloss": ' + message):
        run(layer, rand(*shapes[0]), lab)


# ---------------------------------------------------------------------------------------------------- HDF5Output
def test_hdf5_output_round_trip(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.h5").write_bytes(b"old contents")
    text = 'type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param { file_name: "out.h5" }'
    layer = make_layer(text, [(3, 2, 4), (3,)])
    with h5py.File("out.h5", "r") as f:      # truncated to an empty HDF5 file at setup
        assert list(f.keys()) == []
    assert layer.infer_top_shapes([(3, 2, 4), (3,)]) == []
    with h5py.File("out.h5", "r") as f:      # shape inference on meta tensors writes nothing
        assert list(f.keys()) == []
    data = torch.tensor(rand(3, 2, 4, seed=14), dtype=torch.float32, requires_grad=True)
    label = torch.tensor([2.0, 0.0, 1.0])
    assert layer(data, label) == ()
    with h5py.File("out.h5", "r") as f:
        assert sorted(f.keys()) == ["data", "label"]
        assert_blob_close(f["data"][()], data.detach().numpy().reshape(3, 2, 4, 1))
        assert_blob_close(f["label"][()], label.numpy().reshape(3, 1, 1, 1))
    assert layer.backward_free and not layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(LayerError, match=r'HDF5Output layer "hdf5output": a second forward would write'):
        layer(data, label)
    with h5py.File("out.h5", "r") as f:      # the first batch stays
        assert_blob_close(f["label"][()], label.numpy().reshape(3, 1, 1, 1))


def test_hdf5_output_errors(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    prefix = 'HDF5Output layer "hdf5output": '
    with pytest.raises(LayerError, match=prefix + "hdf5_output_param.file_name must be given"):
        make_layer('type: "HDF5Output"', [(2, 3), (2,)])
    with pytest.raises(LayerError, match=prefix + "Failed to open HDF5 file 'no/such/dir/out.h5' for writing"):
        make_layer('type: "HDF5Output" hdf5_output_param { file_name: "no/such/dir/out.h5" }', [(2, 3), (2,)])
    layer = make_layer('type: "HDF5Output" hdf5_output_param { file_name: "o.h5" }', [(2, 3), (2,)])
    with pytest.raises(LayerError, match=prefix + r"data and label must have the same first axis"):
        layer.infer_top_shapes([(2, 3), (3,)])
    with pytest.raises(LayerError, match=prefix + r"the data bottom 0 \(2, 1, 1, 1, 1\) must have 1 to 4 axes"):
        layer.infer_top_shapes([(2, 1, 1, 1, 1), (2,)])
