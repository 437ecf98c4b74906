"""The memory-format policy (caffelike/core/layout.py): with channels_last activations the zoo nets compute what
they compute in NCHW, forward and backward, and pycaffe's blobs look and behave as before (C-ordered, writable,
the writes reaching the net).  Nothing here is timed: bench/opencv_dnn.py measures the speed."""
import math
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from caffelike.core import host_memory, layout
from caffelike.format.prototxt import read_net
from caffelike.net.graph import NetGraph
from caffelike.net.net import Net

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every zoo deploy net that runs forward and backward at batch 1 in about a second or less here (VGG16 takes
# ten; its layers are those of CaffeNet).
DEPLOY_NETS = ["lenet/lenet.prototxt", "cifar10_quick/cifar10_quick.prototxt", "cifar10_full/cifar10_full.prototxt",
               "siamese/mnist_siamese.prototxt", "squeezenet1.1/deploy.prototxt", "caffenet/deploy.prototxt",
               "alexnet/deploy.prototxt", "googlenet/deploy.prototxt", "mobilenet_v1/deploy.prototxt",
               "resnet50/deploy.prototxt"]


@pytest.fixture
def policy():
    """layout.set_channels_last for one test; the environment's setting is back afterwards."""
    yield layout.set_channels_last
    layout.set_channels_last(None)


def seeded(net: NetGraph, seed: int = 5) -> NetGraph:
    """He-scaled weights (so the signal survives deep nets and the comparison means something), small biases,
    and BatchNorm statistics of a trained net."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layer_list:
            if layer.type == "BatchNorm":
                layer.blobs[0].copy_(torch.randn(layer.blobs[0].shape, generator=gen) * 0.1)
                layer.blobs[1].copy_(torch.rand(layer.blobs[1].shape, generator=gen) + 0.5)
                layer.blobs[2].fill_(1.0)
                continue
            for i, p in enumerate(layer.blobs):
                fan_in = p[0].numel() if i == 0 and p.dim() > 1 else 0
                p.copy_(torch.randn(p.shape, generator=gen) * (math.sqrt(2.0 / fan_in) if fan_in else 0.01))
    return net


def deploy(rel: str, batch: int = 1) -> NetGraph:
    param = read_net(str(ROOT / "zoo" / rel))
    for layer in param.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    param.force_backward = True
    return seeded(NetGraph(param, caffe_pb2.TEST, source=str(ROOT / "zoo" / rel)))


def run_torch_path(net: NetGraph, inputs: dict) -> tuple[dict, dict, list]:
    """Outputs, parameter gradients of a fixed random projection of them, and which 4-D blobs came out
    channels_last."""
    for p in net.parameters():
        p.grad = None
    outs = net(**inputs)
    gen = torch.Generator().manual_seed(11)
    sum((v * torch.randn(v.shape, generator=gen)).sum() for v in outs.values()).backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    laid_out = [name for name, blob in net.blobs.items() if layout.is_channels_last(blob.tensor)]
    return {k: v.detach().clone() for k, v in outs.items()}, grads, laid_out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("rel", DEPLOY_NETS)
def test_zoo_net_is_the_same_function_in_either_layout(rel, policy):
    net = deploy(rel)
    gen = torch.Generator().manual_seed(3)
    inputs = {name: torch.randn(net.blobs[name].tensor.shape, generator=gen) for name in net.inputs}
    policy(True)
    outs_cl, grads_cl, cl_blobs = run_torch_path(net, inputs)
    policy(False)
    outs, grads, nchw_blobs = run_torch_path(net, inputs)
    assert cl_blobs and not nchw_blobs  # the policy took effect, and turning it off undoes it
    for name in outs:
        # The convolutions accumulate in another order: float rounding, nothing more.
        assert relative(outs_cl[name], outs[name]) < 1e-5, name
    assert grads_cl.keys() == grads.keys()
    for name in grads:
        # (norm-relative: in a deep net a near tie in a max pooling or a ReLU at 0 may route one element's
        # gradient elsewhere after a rounding difference upstream)
        assert relative(grads_cl[name], grads[name]) < 1e-3, name
        assert grads_cl[name].is_contiguous(), name  # the solver and pycaffe see the parameter's own layout


@pytest.fixture
def lenet():
    def make(force_backward: bool = True) -> Net:
        param = read_net(str(ROOT / "zoo" / "lenet" / "lenet.prototxt"))
        param.layer[0].input_param.shape[0].dim[0] = 4
        param.force_backward = force_backward
        net = Net(param, caffe_pb2.TEST)
        seeded(net)
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((4, 1, 28, 28))
        return net
    return make


def test_pycaffe_blob_of_a_channels_last_tensor_is_a_c_ordered_array(lenet, policy):
    policy(True)
    net = lenet()
    net.forward()
    blob = net.blobs["conv1"]
    assert layout.is_channels_last(blob.tensor)
    data = blob.data
    assert data.shape == (4, 20, 24, 24) and data.flags.c_contiguous and data.flags.writeable
    np.testing.assert_array_equal(data, blob.tensor.detach().numpy())
    assert np.shares_memory(data.reshape(-1), data)  # a view, as on any C-ordered blob
    np.testing.assert_array_equal(np.fromiter(data.flat, np.float32, count=data.size),
                                  blob.tensor.detach().flatten().numpy())
    data.shape = (4, -1)  # in-place reshape is allowed on a C-ordered array, and stays local to that array
    assert blob.data.shape == (4, 20, 24, 24)


def test_writes_into_a_channels_last_blob_reach_the_next_layers(lenet, policy):
    policy(True)
    net = lenet()
    net.forward()
    filled = np.random.default_rng(1).standard_normal((4, 20, 24, 24)).astype(np.float32)
    net.blobs["conv1"].data[...] = filled
    net.blobs["conv1"].data.reshape(-1)[:5] = 7.0  # through a reshaped view too
    net.forward(start="pool1")
    filled.reshape(-1)[:5] = 7.0
    expected = F.max_pool2d(torch.from_numpy(filled), 2, 2, ceil_mode=True)
    np.testing.assert_array_equal(net.blobs["pool1"].data, expected.numpy())


def test_pycaffe_backward_is_the_same_in_either_layout(lenet, policy):
    results = {}
    for enabled in (True, False):
        policy(enabled)
        net = lenet()
        net.forward()
        net.blobs["prob"].diff[...] = np.random.default_rng(2).standard_normal((4, 10))
        assert net.blobs["conv2"].data.any()  # a host copy handed out, written back before backward: harmless
        net.backward()
        results[enabled] = ({n: net.blobs[n].diff.copy() for n in ("data", "conv1", "pool1", "conv2")},
                            {n: [b.diff.copy() for b in blobs] for n, blobs in net.params.items()})
        assert all(b.diff.flags.c_contiguous for blobs in net.params.values() for b in blobs)
    (diffs_cl, params_cl), (diffs, params) = results[True], results[False]
    for name in diffs:
        np.testing.assert_allclose(diffs_cl[name], diffs[name], rtol=1e-4, atol=1e-6 * np.abs(diffs[name]).max())
    for name in params:
        for got, want in zip(params_cl[name], params[name]):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_a_diff_written_into_a_channels_last_blob_reaches_backward(lenet, policy):
    policy(True)
    net = lenet()
    net.forward()
    net.blobs["prob"].diff[...] = 1.0
    net.backward()
    assert layout.is_channels_last(net.blobs["pool1"].diff_tensor)
    net.blobs["pool1"].diff[...] = 0.0  # the host copy, written back before the next pass
    net.clear_param_diffs()
    net.backward(start="pool1")
    assert not net.params["conv1"][0].diff.any()  # the zero gradient of pool1 reached conv1's weights
    assert not net.blobs["data"].diff.any()


def test_environment_variable_and_override(monkeypatch, policy):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for value, on_cpu, on_gpu in (("0", False, False), ("off", False, False), ("1", True, True), ("", True, False),
                                  ("auto", True, False)):
        monkeypatch.setenv(layout.ENV, value)
        policy(None)
        assert (layout.channels_last_enabled(cpu), layout.channels_last_enabled(cuda)) == (on_cpu, on_gpu), value
    policy(True)
    assert layout.channels_last_enabled(cuda)


@pytest.mark.parametrize("shape, view", [((20, 1, 5, 5), True), ((64, 192, 1, 1), True), ((50, 20, 5, 5), False)])
def test_channels_last_weight_is_a_view_where_the_memory_order_allows(shape, view):
    w = torch.randn(shape)
    cl = layout.as_channels_last(w)
    assert torch.equal(cl, w) and (cl.data_ptr() == w.data_ptr()) == view
    x = torch.randn(2, shape[1], 8, 8)
    y = F.conv2d(x, cl)
    assert layout.is_channels_last(y)
    torch.testing.assert_close(y, F.conv2d(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_is_the_same_in_either_layout_and_with_or_without_grad(region):
    from caffelike.layers import layer_class

    param = caffe_pb2.LayerParameter(name="norm", type="LRN")
    param.lrn_param.local_size, param.lrn_param.alpha, param.lrn_param.beta = 5, 0.3, 0.75
    param.lrn_param.norm_region = caffe_pb2.LRNParameter.NormRegion.Value(region)
    lrn = layer_class("LRN")(param, caffe_pb2.TEST)
    x = torch.randn(2, 12, 7, 9) * 3
    with torch.no_grad():
        reference = lrn(x)
        in_place_cl = lrn(x.contiguous(memory_format=torch.channels_last))
        in_place = lrn(x)
    graded = lrn(x.clone().requires_grad_())
    graded_cl = lrn(x.contiguous(memory_format=torch.channels_last).requires_grad_())
    # In place without autograd: the same operations in the same order, the same bits.
    assert torch.equal(in_place, reference) and torch.equal(graded.detach(), reference)
    assert torch.equal(graded_cl.detach(), in_place_cl)
    # Channels_last sums each channel window in another order: float rounding apart.
    torch.testing.assert_close(in_place_cl, reference, rtol=1e-6, atol=0)


def test_keep_freed_memory_honours_its_switch(monkeypatch):
    monkeypatch.setattr(host_memory, "_state", {"done": False, "applied": False})
    monkeypatch.setenv(host_memory.ENV, "0")
    assert host_memory.keep_freed_memory() is False
    monkeypatch.setenv(host_memory.ENV, "1")
    assert host_memory.keep_freed_memory() is False  # decided once per process


def test_an_exported_graph_carries_no_relayout(policy):
    """torch.export (and so ONNX) sees the plain convolution: the runtime that loads the file picks its layouts."""
    policy(True)
    conv = deploy("cifar10_quick/cifar10_quick.prototxt").layer_list[1]
    x = torch.randn(1, 3, 32, 32)
    assert layout.is_channels_last(conv(x))  # (eagerly the policy applies)
    program = torch.export.export(conv, (x,))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert not any("permute" in t or "clone" in t for t in targets), targets
