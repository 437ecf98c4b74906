"""A V1 net (`layers {}` with enum types, blobs_lr, weight_decay, input/input_dim) runs exactly like its
current-format twin: same blobs, same outputs, same parameter multipliers."""
import numpy as np

import caffelike as caffe
from helpers import FIXTURES, Case

V1_LENET = """name: "LeNet"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 28 input_dim: 28
force_backward: true
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
         weight_decay: 0 inner_product_param { num_output: 500 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2" blobs_lr: 1 blobs_lr: 2
         inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
"""


def test_v1_lenet_matches_the_current_format_fixture(tmp_path):
    case = Case.load("nets", "bvlc_lenet")
    path = tmp_path / "lenet_v1.prototxt"
    path.write_text(V1_LENET)
    weights = str(FIXTURES / "data" / "lenet_weights.caffemodel")
    old = caffe.Net(str(path), caffe.TEST, weights=weights)
    new = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST, weights=weights)
    assert list(old.blobs) == list(new.blobs) and old._layer_names == ["input"] + new._layer_names[1:]
    x = case.data("data")
    a, b = old.forward(data=x)["prob"], new.forward(data=x)["prob"]
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, case.data("prob"), **case.tolerance)
    mults = {(p.layer, p.index): (p.lr_mult, p.decay_mult) for p in old.learnable}
    assert mults[("conv1", 1)] == (2, 1) and mults[("ip1", 1)] == (2, 0)
