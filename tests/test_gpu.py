"""CUDA paths (skipped where torch sees no CUDA device): same numbers as CPU, host writes reach the device."""
import numpy as np
import pytest
import torch
from helpers import FIXTURES, Case

import caffelike as caffe

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu_mode():
    caffe.set_mode_gpu()
    yield
    caffe.set_mode_cpu()


def test_lenet_on_gpu_matches_caffe(gpu_mode):
    case = Case.load("nets", "bvlc_lenet")
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST,
                    weights=str(FIXTURES / "data" / "lenet_weights.caffemodel"))
    assert net.device.type == "cuda"
    net.blobs["data"].data[...] = case.data("data")  # a host write, pushed before the forward
    out = net.forward()
    np.testing.assert_allclose(out["prob"], case.data("prob"), **case.tolerance)
    net.blobs["prob"].diff[...] = case.output_diff("prob")
    net.backward()
    np.testing.assert_allclose(net.blobs["data"].diff, case.diff("data"), **case.tolerance)
    np.testing.assert_allclose(net.params["conv1"][0].diff, case.param_diff("conv1", 0), **case.tolerance)


def test_param_writes_reach_the_device(gpu_mode):
    case = Case.load("nets", "bvlc_lenet")
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST)
    net.params["ip2"][0].data[...] = 0
    net.params["ip2"][1].data[...] = np.arange(10)
    out = net.forward()
    expected = torch.softmax(torch.arange(10.0), 0).numpy()
    np.testing.assert_allclose(out["prob"][0], expected, rtol=1e-5)


def test_mode_switch_moves_existing_nets():
    case = Case.load("nets", "bvlc_lenet")
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST)
    caffe.set_mode_gpu()
    try:
        net.forward()
        assert net.device.type == "cuda"
    finally:
        caffe.set_mode_cpu()
    net.forward()
    assert net.device.type == "cpu"
