"""The zoo: every net builds in every phase it declares, runs forward and backward on seeded weights, and every
checked blob has the shape Caffe derives (pooling rounding included)."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import caffelike as caffe
from caffelike import zoo
from caffelike.prototxt import read_net

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("zoo_generate", ROOT / "zoo" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def test_generated_prototxts_are_current():
    run = subprocess.run([sys.executable, str(ROOT / "zoo" / "generate.py"), "--check"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("key", list(generate.NETS))
def test_generated_net_shapes_forward_backward(key):
    caffe.set_random_seed(3)
    param = read_net(zoo.path(key, "deploy.prototxt"))
    param.force_backward = True
    net = caffe.Net(param, caffe.TEST)
    rng = np.random.default_rng(2)
    for layer in net.layer_list:
        if layer.type == "BatchNorm":  # stored statistics of a trained net: unit variance, zero mean
            layer.blobs[1].data.fill_(1.0)
            layer.blobs[2].data.fill_(1.0)
            continue
        for blob in net.params.get(layer.layer_name, []):
            if not blob.data.any():  # deploy files give no filler: Caffe's default, constant 0, kills gradients
                blob.data[...] = rng.normal(scale=0.01, size=blob.data.shape)
    _, expected = generate.render(key)
    assert {b: tuple(net.blobs[b].shape) for b in expected} == expected
    net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=net.blobs["data"].shape)
    prob = net.forward()["prob"]
    assert np.isfinite(prob).all() and np.allclose(prob.reshape(1, -1).sum(), 1, atol=1e-4)
    # Seed the gradient below the Softmax: random deep nets saturate it, and a one-hot softmax passes nothing.
    logits = net.bottom_names["prob"][0]
    net.blobs[logits].diff[...] = np.random.default_rng(1).normal(size=net.blobs[logits].shape)
    net.backward(start=net._layer_names[-2])
    assert np.isfinite(net.blobs["data"].diff).all() and np.abs(net.blobs["data"].diff).sum() > 0
    first = next(iter(net.params))
    assert np.abs(net.params[first][0].diff).sum() > 0


def test_lenet_deploy_builds_and_classifies():
    # lenet_train_test and the DIGITS nets are trained end to end by test_cli.py (digits) and test_tutorial.py.
    net = caffe.Net(zoo.path("lenet", "lenet.prototxt"), caffe.TEST,
                    weights=zoo.path("lenet", "lenet_mnist5k.caffemodel"))
    assert net.forward()["prob"].shape == (64, 10)
