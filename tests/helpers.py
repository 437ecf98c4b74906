"""The test suite's shared checks: one forward comparison, one gradient check, one fixture-case loader.

Every layer test uses these, so a tolerance or a rule changes in one place.
"""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from caffelike.layers import layer_class
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


# ------------------------------------------------------------------------------------------------ forward comparison
def assert_blob_close(actual, expected, *, rtol: float = 0.0, atol: float = 0.0, name: str = "blob") -> None:
    """Shape first, then dtype family, then values; rtol = atol = 0 means an exact match."""
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert tuple(actual.shape) == tuple(expected.shape), \
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    assert actual.dtype.kind == expected.dtype.kind, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
    if rtol == 0.0 and atol == 0.0:
        np.testing.assert_array_equal(actual, expected, err_msg=f"{name} differs")
    else:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=f"{name} differs")


# ---------------------------------------------------------------------------------------------------- layer building
def make_layer(layer_text: str, bottom_shapes: Sequence[Sequence[int]], phase: int = caffe_pb2.TEST):
    """Build and set up one layer from its prototxt text (the inside or the whole of a `layer { }` block)."""
    text = layer_text.strip()
    if text.startswith("layer"):
        text = text[text.index("{") + 1: text.rindex("}")]
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not lp.name:
        lp.name = lp.type.lower() or "layer"
    layer = layer_class(lp.type)(lp, phase)
    n_tops = len(lp.top) if lp.top else (layer.exact_tops if layer.exact_tops is not None else 1)
    layer.check_blob_counts(len(lp.bottom) or len(bottom_shapes), n_tops)
    layer.setup([tuple(s) for s in bottom_shapes])
    return layer


def rand(shape, seed=0, low=-2.0, high=2.0, dtype=np.float32):
    """Seeded uniform test input."""
    return np.random.default_rng(seed).uniform(low, high, shape).astype(dtype)


def forward(layer, *bottoms):
    """Run a layer on arrays without recording a graph."""
    with torch.no_grad():
        return layer(*(torch.as_tensor(b) for b in bottoms))


def as_tuple(tops):
    return (tops,) if isinstance(tops, torch.Tensor) else tuple(tops)


# ---------------------------------------------------------------------------------------------------- gradient check
@dataclass
class GradientReport:
    checked: int = 0
    skipped_kinks: int = 0
    worst: list = field(default_factory=list)


def check_gradient(layer, bottoms: Sequence, *, seed: int = 1701, step: float = 1e-4, threshold: float = 1e-4,
                   kink: float = 0.0, kink_range: float = -1.0, grad_bottoms: Sequence[int] | None = None,
                   check_params: bool = True, max_elements: int = 400) -> GradientReport:
    """Compare autograd's gradient of a layer with float64 central differences, the way Caffe's
    GradientChecker does: objective = sum over tops of <top, R> with seeded random R; an element passes when
    |computed - estimated| <= threshold * max(|computed|, |estimated|, 1).  Inputs within `kink_range` of
    `kink` (non-differentiable points, e.g. 0 for ReLU) are skipped.  At most `max_elements` seeded-random
    elements per tensor are probed so that big blobs stay quick.

    `grad_bottoms` lists the bottom indices to check (default: every floating bottom); `check_params` also
    checks every blob of the layer with requires_grad.
    """
    gen = torch.Generator().manual_seed(seed)
    layer = layer.double()
    xs = [torch.as_tensor(np.asarray(b)).double().clone() for b in bottoms]
    if grad_bottoms is None:
        grad_bottoms = list(range(len(xs)))
    for i in grad_bottoms:
        xs[i].requires_grad_(True)
    params = [p for p in layer.blobs if p.requires_grad] if check_params else []

    def objective(weights=None) -> torch.Tensor:
        tops = as_tuple(layer(*xs))
        if weights is None:
            weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in tops]
        return sum((t.double() * w).sum() for t, w in zip(tops, weights)), weights

    torch.manual_seed(seed)
    loss, weights = objective()
    targets = [xs[i] for i in grad_bottoms] + params
    computed = torch.autograd.grad(loss, targets, allow_unused=True)
    report = GradientReport()
    for ti, (target, grad) in enumerate(zip(targets, computed)):
        grad = torch.zeros_like(target) if grad is None else grad
        flat = target.data.view(-1)
        n = flat.numel()
        picks = range(n) if n <= max_elements else torch.randperm(n, generator=gen)[:max_elements].tolist()
        for k in picks:
            original = flat[k].item()
            if kink_range > 0 and abs(original - kink) < kink_range:
                report.skipped_kinks += 1
                continue
            with torch.no_grad():
                flat[k] = original + step
                torch.manual_seed(seed)
                plus = objective(weights)[0].item()
                flat[k] = original - step
                torch.manual_seed(seed)
                minus = objective(weights)[0].item()
                flat[k] = original
            estimated = (plus - minus) / (2 * step)
            got = grad.reshape(-1)[k].item()
            scale = max(abs(got), abs(estimated), 1.0)
            assert abs(got - estimated) <= threshold * scale, (
                f"{layer.type} {layer.layer_name!r}: gradient of "
                f"{'bottom %d' % grad_bottoms[ti] if ti < len(grad_bottoms) else 'param %d' % (ti - len(grad_bottoms))}"
                f" at flat index {k}: autograd {got:.8g}, finite difference {estimated:.8g}")
            report.checked += 1
    assert report.checked > 0, "gradient check probed nothing"
    return report


# ------------------------------------------------------------------------------------------------------ fixture cases
@dataclass
class Case:
    """One case folder of tests/fixtures (real BVLC Caffe output); see tests/fixtures/README.md."""
    path: pathlib.Path
    meta: dict
    arrays: dict

    @staticmethod
    def load(kind: str, name: str) -> Case:
        path = FIXTURES / kind / name
        meta = json.loads((path / "case.json").read_text())
        with np.load(path / "blobs.npz") as npz:
            arrays = {k: npz[k] for k in npz.files}
        return Case(path, meta, arrays)

    @staticmethod
    def key(name: str) -> str:
        return name.replace("/", "%2F")

    def data(self, blob: str) -> np.ndarray:
        return self.arrays["blob_data/" + self.key(blob)]

    def diff(self, blob: str) -> np.ndarray:
        return self.arrays["blob_diff/" + self.key(blob)]

    def output_diff(self, blob: str) -> np.ndarray:
        return self.arrays["output_diff/" + self.key(blob)]

    def param_data(self, layer: str, i: int) -> np.ndarray:
        return self.arrays[f"param_data/{self.key(layer)}/{i}"]

    def param_diff(self, layer: str, i: int) -> np.ndarray:
        return self.arrays[f"param_diff/{self.key(layer)}/{i}"]

    @property
    def tolerance(self) -> dict:
        return dict(self.meta["tolerance"])

    def net_param(self) -> caffe_pb2.NetParameter:
        return text_format.Parse((self.path / "net.prototxt").read_text(), caffe_pb2.NetParameter())

    def stored_weights(self) -> dict[str, list[np.ndarray]]:
        """layer name -> blobs of the case's caffemodel, as written by Caffe before the forward pass."""
        if not self.meta.get("weights"):
            return {}
        net = caffe_pb2.NetParameter.FromString((self.path / self.meta["weights"]).read_bytes())
        out = {}
        for lp in net.layer:
            if lp.blobs:
                out[lp.name] = [np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in lp.blobs]
        return out


def check_loss_case(case: Case) -> None:
    """Replay a one-layer loss (or Accuracy) fixture case: top shapes, forward values, and, seeding each top with
    its loss weight as the net does, the gradients Caffe wrote (`diff_blobs`); other bottoms get none."""
    import torch as _torch

    lp = next(layer for layer in case.net_param().layer if layer.type != "Input")
    shapes = [case.meta["blob_shapes"][b] for b in lp.bottom]
    layer = make_layer(text_format.MessageToString(lp), shapes)
    bottoms = [_torch.from_numpy(case.data(b)).requires_grad_(layer.allow_force_backward(i))
               for i, b in enumerate(lp.bottom)]
    assert layer.infer_top_shapes([tuple(s) for s in shapes]) == [tuple(case.meta["blob_shapes"][t])
                                                                  for t in lp.top]
    tops = as_tuple(layer(*bottoms))
    for top, t in zip(tops, lp.top):
        assert_blob_close(top, case.data(t), **case.tolerance, name=t)
    if not case.meta["backward"]:
        assert not any(t.requires_grad for t in tops)
        return
    _torch.autograd.backward(tops, [_torch.tensor(case.meta["loss_weights"][t]) for t in lp.top])
    for b, x in zip(lp.bottom, bottoms):
        if b in case.meta["diff_blobs"]:
            assert_blob_close(x.grad, case.diff(b), **case.tolerance, name=f"{b} diff")
        else:
            assert x.grad is None, f"{b} must get no gradient"


def lenet_train_solver(batch_size: int, base_lr: float = 0.01):
    """A SGD Solver over zoo/lenet's lenet_train_test.prototxt reading the fixture MNIST LMDB (seeded)."""
    from caffelike import zoo
    from caffelike.format.prototxt import read_net
    from caffelike.train.solver import Solver

    net = read_net(zoo.path("lenet", "lenet_train_test.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = str(FIXTURES / "data" / "mnist_train_lmdb")
            layer.data_param.batch_size = batch_size
    param = caffe_pb2.SolverParameter(base_lr=base_lr, momentum=0.9, weight_decay=5e-4, lr_policy="fixed",
                                      max_iter=4, display=0, snapshot_after_train=False, random_seed=3)
    param.net_param.CopyFrom(net)
    return Solver(param)


# A Python-layer module that leaves a `<module>.imported` file beside itself when it is imported: the consent
# tests check by it that a model folder's code never ran.  Its layer `Ten` multiplies by ten.
MARKED_MODULE = """
import pathlib

import caffe

pathlib.Path(__file__).with_suffix(".imported").write_text("the module ran")


class Ten(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff
"""


# ---------------------------------------------------------------------------------------------------- browser
def chromium_or_skip() -> str:
    """The system Chromium's path; without one the test skips, except in CI (.ci/run sets
    CAFFELIKE_REQUIRE_BROWSER=1 once it has installed Chromium), where a missing browser is a failure."""
    import os
    import shutil

    import pytest

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CAFFELIKE_REQUIRE_BROWSER") == "1":
            pytest.fail("CAFFELIKE_REQUIRE_BROWSER=1 but no chromium is on PATH")
        pytest.skip("Debian's chromium is not installed")
    return path
