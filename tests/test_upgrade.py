"""caffelike.format.upgrade against Caffe's upgrade rules (upgrade_proto.cpp): each old-format net below is upgraded and
compared with the current-format text written by hand from those rules.  V0 nets here; V1 and current-format
nets, and every step's idempotency, in test_upgrade_v1.py."""
from __future__ import annotations

import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

from caffelike.format import upgrade
from caffelike.format.upgrade import upgrade_net


def parse_net(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def assert_upgrades_to(old_text: str, expected_text: str) -> caffe_pb2.NetParameter:
    """Upgrade `old_text`, compare with `expected_text` (as text, for a readable diff, then as messages)."""
    net = parse_net(old_text)
    assert upgrade_net(net, "old.prototxt") is True
    expected = parse_net(expected_text)
    assert text_format.MessageToString(net) == text_format.MessageToString(expected)
    assert net == expected
    return net


# ------------------------------------------------------------------------------------------------------- V0 nets
V0_LENET = """
name: "LeNet"
input: "data"
input_dim: 64 input_dim: 1 input_dim: 28 input_dim: 28
layers {
  layer {
    name: "conv1" type: "conv" num_output: 20 kernelsize: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" }
    blobs_lr: 1 blobs_lr: 2
  }
  bottom: "data" top: "conv1"
}
layers {
  layer { name: "pool1" type: "pool" pool: MAX kernelsize: 2 stride: 2 }
  bottom: "conv1" top: "pool1"
}
layers {
  layer {
    name: "ip1" type: "innerproduct" num_output: 500 biasterm: true
    weight_filler { type: "xavier" }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "pool1" top: "ip1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "ip1" top: "ip1" }
layers { layer { name: "ip2" type: "innerproduct" num_output: 10 biasterm: false } bottom: "ip1" top: "ip2" }
layers { layer { name: "prob" type: "softmax" } bottom: "ip2" top: "prob" }
"""

V0_LENET_UPGRADED = """
name: "LeNet"
layer {
  name: "input" type: "Input" top: "data"
  input_param { shape { dim: 64 dim: 1 dim: 28 dim: 28 } }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param {
    num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" }
  }
}
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layer {
  name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 500 bias_term: true weight_filler { type: "xavier" } }
}
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer {
  name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 bias_term: false }
}
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"""

# ImageNet-like: data layer with transformation fields, padding layers in front of a conv and a pool, LRN, dropout.
V0_CAFFENET = """
name: "CaffeNet"
layers {
  layer {
    name: "data" type: "data" source: "ilsvrc12_train_leveldb" meanfile: "imagenet_mean.binaryproto"
    batchsize: 256 cropsize: 227 mirror: true rand_skip: 10 scale: 0.5
  }
  top: "data" top: "label"
}
layers {
  layer {
    name: "conv1" type: "conv" num_output: 96 kernelsize: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 }
    blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  }
  bottom: "data" top: "conv1"
}
layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }
layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 3 stride: 2 } bottom: "conv1" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 } bottom: "pool1" top: "norm1" }
layers { layer { name: "pad2" type: "padding" pad: 2 } bottom: "norm1" top: "pad2" }
layers { layer { name: "conv2" type: "conv" num_output: 256 group: 2 kernelsize: 5 } bottom: "pad2" top: "conv2" }
layers { layer { name: "pad3" type: "padding" pad: 1 } bottom: "conv2" top: "pad3" }
layers { layer { name: "pool2" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad3" top: "pool2" }
layers { layer { name: "fc6" type: "innerproduct" num_output: 4096 } bottom: "pool2" top: "fc6" }
layers { layer { name: "drop6" type: "dropout" dropout_ratio: 0.4 } bottom: "fc6" top: "fc6" }
layers { layer { name: "flat" type: "flatten" } bottom: "pool2" top: "flat" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "fc6" bottom: "flat" top: "cat" }
layers { layer { name: "loss" type: "softmax_loss" } bottom: "cat" bottom: "label" top: "loss" }
layers { layer { name: "accuracy" type: "accuracy" } bottom: "cat" bottom: "label" top: "accuracy" }
"""

V0_CAFFENET_UPGRADED = """
name: "CaffeNet"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.5 mirror: true crop_size: 227 mean_file: "imagenet_mean.binaryproto" }
  data_param { source: "ilsvrc12_train_leveldb" batch_size: 256 rand_skip: 10 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 96 kernel_size: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 }
  }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer {
  name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 }
}
layer {
  name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 }
}
layer {
  name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE pad: 1 kernel_size: 3 stride: 2 }
}
layer { name: "fc6" type: "InnerProduct" bottom: "pool2" top: "fc6" inner_product_param { num_output: 4096 } }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.4 } }
layer { name: "flat" type: "Flatten" bottom: "pool2" top: "flat" }
layer { name: "cat" type: "Concat" bottom: "fc6" bottom: "flat" top: "cat" concat_param { concat_dim: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cat" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "cat" bottom: "label" top: "accuracy" }
"""

# Every other data-ish V0 type, each with the fields only it may carry.
V0_DATA_LAYERS = """
name: "v0-data"
layers {
  layer {
    name: "images" type: "images" source: "list.txt" batchsize: 8 rand_skip: 3 shuffle_images: true
    new_height: 256 new_width: 320 cropsize: 224 mirror: true meanfile: "mean.binaryproto"
  }
  top: "img" top: "img_label"
}
layers {
  layer {
    name: "windows" type: "window_data" source: "windows.txt" batchsize: 128 det_fg_threshold: 0.6
    det_bg_threshold: 0.4 det_fg_fraction: 0.3 det_context_pad: 16 det_crop_mode: "square" cropsize: 227
  }
  top: "win" top: "win_label"
}
layers { layer { name: "h5" type: "hdf5_data" source: "h5.txt" batchsize: 4 } top: "h5data" top: "h5label" }
layers { layer { name: "cols" type: "im2col" } bottom: "img" top: "cols" }
layers { layer { name: "out" type: "hdf5_output" hdf5_output_param { file_name: "out.h5" } } bottom: "h5data" }
layers { layer { name: "info" type: "infogain_loss" source: "H.binaryproto" } bottom: "cols" bottom: "img_label" }
layers { layer { name: "sig" type: "sigmoid" } bottom: "win" top: "sig" }
layers { layer { name: "th" type: "tanh" } bottom: "sig" top: "th" }
layers { layer { name: "bn" type: "bnll" } bottom: "th" top: "bn" }
layers { layer { name: "sp" type: "split" } bottom: "bn" top: "sp1" top: "sp2" }
layers { layer { name: "eu" type: "euclidean_loss" } bottom: "sp1" bottom: "sp2" }
layers { layer { name: "mlr" type: "multinomial_logistic_loss" } bottom: "cols" bottom: "win_label" }
"""

V0_DATA_LAYERS_UPGRADED = """
name: "v0-data"
layer {
  name: "images" type: "ImageData" top: "img" top: "img_label"
  transform_param { mirror: true crop_size: 224 mean_file: "mean.binaryproto" }
  image_data_param { source: "list.txt" batch_size: 8 rand_skip: 3 shuffle: true new_height: 256 new_width: 320 }
}
layer {
  name: "windows" type: "WindowData" top: "win" top: "win_label"
  transform_param { crop_size: 227 }
  window_data_param {
    source: "windows.txt" batch_size: 128 fg_threshold: 0.6 bg_threshold: 0.4 fg_fraction: 0.3
    context_pad: 16 crop_mode: "square"
  }
}
layer { name: "h5" type: "HDF5Data" top: "h5data" top: "h5label" hdf5_data_param { source: "h5.txt" batch_size: 4 } }
layer { name: "cols" type: "Im2col" bottom: "img" top: "cols" }
layer { name: "out" type: "HDF5Output" bottom: "h5data" hdf5_output_param { file_name: "out.h5" } }
layer {
  name: "info" type: "InfogainLoss" bottom: "cols" bottom: "img_label"
  infogain_loss_param { source: "H.binaryproto" }
}
layer { name: "sig" type: "Sigmoid" bottom: "win" top: "sig" }
layer { name: "th" type: "TanH" bottom: "sig" top: "th" }
layer { name: "bn" type: "BNLL" bottom: "th" top: "bn" }
layer { name: "sp" type: "Split" bottom: "bn" top: "sp1" top: "sp2" }
layer { name: "eu" type: "EuclideanLoss" bottom: "sp1" bottom: "sp2" }
layer { name: "mlr" type: "MultinomialLogisticLoss" bottom: "cols" bottom: "win_label" }
"""


def test_v0_lenet_with_input_dim():
    assert_upgrades_to(V0_LENET, V0_LENET_UPGRADED)


def test_v0_caffenet_folds_padding_and_moves_every_field():
    assert_upgrades_to(V0_CAFFENET, V0_CAFFENET_UPGRADED)


def test_v0_data_layers_and_remaining_types():
    assert_upgrades_to(V0_DATA_LAYERS, V0_DATA_LAYERS_UPGRADED)


def test_v0_padding_layer_on_a_net_input_is_folded():
    assert_upgrades_to(
        """
        input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
        layers { layer { name: "pad" type: "padding" pad: 3 } bottom: "data" top: "padded" }
        layers { layer { name: "conv" type: "conv" num_output: 4 kernelsize: 7 pad: 1 } bottom: "padded" top: "conv" }
        """,
        """
        layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
        layer {
          name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 4 pad: 3 kernel_size: 7 }
        }
        """)


def test_v0_step_alone_gives_v1_layers():
    net = parse_net(V0_CAFFENET)
    upgrade._upgrade_v0(net, "old.prototxt")
    assert [layer.name for layer in net.layers] == [
        "data", "conv1", "relu1", "pool1", "norm1", "conv2", "pool2", "fc6", "drop6", "flat", "cat", "loss",
        "accuracy"]
    assert not any(layer.HasField("layer") for layer in net.layers)
    assert net.layers[5].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(net.layers[5].convolution_param.pad) == [2]


def test_every_v0_field_has_a_rule():
    handled = (set(upgrade._V0_FIELD_HOMES) | set(upgrade._V0_TRANSFORM_FIELDS) | set(upgrade._V0_COPIED_FIELDS)
               | set(upgrade._V0_OTHER_FIELDS))
    assert handled == set(caffe_pb2.V0LayerParameter.DESCRIPTOR.fields_by_name)


V0_TYPE_CASES = [
    ("accuracy", "Accuracy"), ("bnll", "BNLL"), ("concat", "Concat"), ("conv", "Convolution"), ("data", "Data"),
    ("dropout", "Dropout"), ("euclidean_loss", "EuclideanLoss"), ("flatten", "Flatten"), ("hdf5_data", "HDF5Data"),
    ("hdf5_output", "HDF5Output"), ("im2col", "Im2col"), ("images", "ImageData"), ("infogain_loss", "InfogainLoss"),
    ("innerproduct", "InnerProduct"), ("lrn", "LRN"), ("multinomial_logistic_loss", "MultinomialLogisticLoss"),
    ("pool", "Pooling"), ("relu", "ReLU"), ("sigmoid", "Sigmoid"), ("softmax", "Softmax"),
    ("softmax_loss", "SoftmaxWithLoss"), ("split", "Split"), ("tanh", "TanH"), ("window_data", "WindowData"),
]


@pytest.mark.parametrize("v0_type,expected", V0_TYPE_CASES, ids=[c[0] for c in V0_TYPE_CASES])
def test_v0_type_maps_to_current_type(v0_type, expected):
    net = parse_net(f'layers {{ layer {{ name: "x" type: "{v0_type}" }} }}')
    upgrade_net(net)
    assert [layer.type for layer in net.layer] == [expected]
