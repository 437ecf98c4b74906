"""caffelike.format.upgrade against Caffe's upgrade rules (upgrade_proto.cpp): each old-format net below is upgraded and
compared with the current-format text written by hand from those rules."""
from __future__ import annotations

import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

from caffelike.format import upgrade
from caffelike.format.upgrade import V1_TYPE_NAMES, net_needs_upgrade, upgrade_net


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


# ------------------------------------------------------------------------------------------------------- V1 nets
V1_ALEXNET = """
name: "AlexNetV1"
layers {
  name: "data" type: DATA top: "data" top: "label"
  data_param {
    source: "train_lmdb" backend: LMDB batch_size: 32
    mean_file: "mean.binaryproto" crop_size: 227 mirror: true scale: 0.00390625
  }
  include { phase: TRAIN }
}
layers {
  name: "data" type: IMAGE_DATA top: "data" top: "label"
  image_data_param { source: "val.txt" batch_size: 10 new_height: 256 new_width: 256 crop_size: 227 }
  include { phase: TEST }
}
layers {
  name: "windows" type: WINDOW_DATA top: "win" top: "win_label"
  window_data_param { source: "w.txt" batch_size: 4 mirror: false fg_threshold: 0.7 }
  transform_param { mean_value: 104 }
  include { phase: TRAIN }
}
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "conv1_w" param: "conv1_b"
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } }
}
layers {
  name: "conv1_twin" type: CONVOLUTION bottom: "data" top: "conv1_twin"
  param: "conv1_w" param: "conv1_b" blob_share_mode: PERMISSIVE
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layers { name: "norm1" type: LRN bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layers {
  name: "pool1" type: POOLING bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" blobs_lr: 1 inner_product_param { num_output: 1000 } }
layers { name: "drop" type: DROPOUT bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layers {
  name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss"
  loss_weight: 1 loss_param { ignore_label: -1 }
}
layers {
  name: "acc" type: ACCURACY bottom: "fc" bottom: "label" top: "acc"
  accuracy_param { top_k: 5 }
  include { phase: TEST }
}
layers { name: "silence" type: SILENCE bottom: "conv1_twin" exclude { stage: "deploy" } }
"""

V1_ALEXNET_UPGRADED = """
name: "AlexNetV1"
layer {
  name: "data" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { scale: 0.00390625 mirror: true crop_size: 227 mean_file: "mean.binaryproto" }
  data_param { source: "train_lmdb" batch_size: 32 backend: LMDB }
}
layer {
  name: "data" type: "ImageData" top: "data" top: "label"
  include { phase: TEST }
  transform_param { crop_size: 227 }
  image_data_param { source: "val.txt" batch_size: 10 new_height: 256 new_width: 256 }
}
layer {
  name: "windows" type: "WindowData" top: "win" top: "win_label"
  include { phase: TRAIN }
  transform_param { mirror: false mean_value: 104 }
  window_data_param { source: "w.txt" batch_size: 4 fg_threshold: 0.7 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { name: "conv1_w" lr_mult: 1 decay_mult: 1 } param { name: "conv1_b" lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 weight_filler { type: "gaussian" std: 0.01 } }
}
layer {
  name: "conv1_twin" type: "Convolution" bottom: "data" top: "conv1_twin"
  param { name: "conv1_w" share_mode: PERMISSIVE } param { name: "conv1_b" }
  convolution_param { num_output: 96 kernel_size: 11 stride: 4 }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }
layer {
  name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer {
  name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  param { lr_mult: 1 }
  inner_product_param { num_output: 1000 }
}
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layer {
  name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  loss_weight: 1 loss_param { ignore_label: -1 }
}
layer {
  name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc"
  include { phase: TEST }
  accuracy_param { top_k: 5 }
}
layer { name: "silence" type: "Silence" bottom: "conv1_twin" exclude { stage: "deploy" } }
"""

# A V1 deploy net with two inputs given by input_shape.
V1_DEPLOY = """
name: "deploy"
input: "data"
input_shape { dim: 10 dim: 3 dim: 227 dim: 227 }
input: "rois"
input_shape { dim: 5 dim: 5 }
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" convolution_param { num_output: 8 kernel_size: 3 } }
layers { name: "prob" type: SOFTMAX bottom: "conv" top: "prob" }
layers { name: "sil" type: SILENCE bottom: "rois" }
"""

V1_DEPLOY_UPGRADED = """
name: "deploy"
layer {
  name: "input" type: "Input" top: "data" top: "rois"
  input_param { shape { dim: 10 dim: 3 dim: 227 dim: 227 } shape { dim: 5 dim: 5 } }
}
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" }
layer { name: "sil" type: "Silence" bottom: "rois" }
"""


def test_v1_alexnet_with_data_upgrade_and_shared_params():
    assert_upgrades_to(V1_ALEXNET, V1_ALEXNET_UPGRADED)


def test_v1_deploy_with_input_shape():
    assert_upgrades_to(V1_DEPLOY, V1_DEPLOY_UPGRADED)


def test_data_step_alone_keeps_v1_layers():
    net = parse_net(V1_ALEXNET)
    assert upgrade.needs_data_upgrade(net)
    upgrade._upgrade_data(net, "old.prototxt")
    assert not upgrade.needs_data_upgrade(net)
    assert net.layers[0].data_param == text_format.Parse(
        'source: "train_lmdb" backend: LMDB batch_size: 32', caffe_pb2.DataParameter())
    assert net.layers[0].transform_param.crop_size == 227


def test_param_specs_as_many_as_the_longest_list():
    net = parse_net('layers { name: "ip" type: INNER_PRODUCT weight_decay: 1 weight_decay: 0 weight_decay: 3 '
                    'blobs_lr: 5 param: "a" param: "b" }')
    upgrade_net(net)
    assert net.layer[0].param == [
        caffe_pb2.ParamSpec(name="a", lr_mult=5, decay_mult=1),
        caffe_pb2.ParamSpec(name="b", decay_mult=0),
        caffe_pb2.ParamSpec(decay_mult=3)]


def test_every_v1_sub_param_is_copied():
    v1 = caffe_pb2.V1LayerParameter(name="all", type=caffe_pb2.V1LayerParameter.CONVOLUTION)
    sub_params = [f.name for f in v1.DESCRIPTOR.fields if f.name.endswith("_param")]
    assert len(sub_params) == 30
    for name in sub_params:
        getattr(v1, name).SetInParent()  # present but empty, as `foo_param { }` in a prototxt
    net = caffe_pb2.NetParameter()
    net.layers.append(v1)
    upgrade_net(net)
    assert sorted(f.name for f, _ in net.layer[0].ListFields() if f.name.endswith("_param")) == sorted(sub_params)


# The V1 enum -> type-string table of upgrade_proto.cpp, written out independently of the module's own table.
V1_TYPE_CASES = [
    ("ABSVAL", "AbsVal"), ("ACCURACY", "Accuracy"), ("ARGMAX", "ArgMax"), ("BNLL", "BNLL"), ("CONCAT", "Concat"),
    ("CONTRASTIVE_LOSS", "ContrastiveLoss"), ("CONVOLUTION", "Convolution"), ("DECONVOLUTION", "Deconvolution"),
    ("DATA", "Data"), ("DROPOUT", "Dropout"), ("DUMMY_DATA", "DummyData"), ("EUCLIDEAN_LOSS", "EuclideanLoss"),
    ("ELTWISE", "Eltwise"), ("EXP", "Exp"), ("FLATTEN", "Flatten"), ("HDF5_DATA", "HDF5Data"),
    ("HDF5_OUTPUT", "HDF5Output"), ("HINGE_LOSS", "HingeLoss"), ("IM2COL", "Im2col"), ("IMAGE_DATA", "ImageData"),
    ("INFOGAIN_LOSS", "InfogainLoss"), ("INNER_PRODUCT", "InnerProduct"), ("LRN", "LRN"),
    ("MEMORY_DATA", "MemoryData"), ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"), ("MVN", "MVN"),
    ("POOLING", "Pooling"), ("POWER", "Power"), ("RELU", "ReLU"), ("SIGMOID", "Sigmoid"),
    ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"), ("SILENCE", "Silence"), ("SOFTMAX", "Softmax"),
    ("SOFTMAX_LOSS", "SoftmaxWithLoss"), ("SPLIT", "Split"), ("SLICE", "Slice"), ("TANH", "TanH"),
    ("WINDOW_DATA", "WindowData"), ("THRESHOLD", "Threshold"),
]


@pytest.mark.parametrize("enum_name,expected", V1_TYPE_CASES, ids=[c[0] for c in V1_TYPE_CASES])
def test_v1_enum_maps_to_type(enum_name, expected):
    value = caffe_pb2.V1LayerParameter.LayerType.Value(enum_name)
    assert V1_TYPE_NAMES[value] == expected
    net = parse_net(f'layers {{ name: "x" type: {enum_name} }}')
    upgrade_net(net)
    assert net.layer[0].type == expected


def test_v1_table_covers_every_enum_but_none():
    all_values = set(caffe_pb2.V1LayerParameter.LayerType.values())
    assert set(V1_TYPE_NAMES) == all_values - {caffe_pb2.V1LayerParameter.NONE}
    assert len(V1_TYPE_CASES) == len(all_values) - 1


def test_binary_v1_caffemodel_keeps_legacy_blobs():
    model = caffe_pb2.NetParameter(name="CaffeNet", input=["data"])  # old caffemodels name inputs without shapes
    conv = model.layers.add(name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION, bottom=["data"],
                            top=["conv1"], blobs_lr=[1, 2], weight_decay=[1, 0])
    conv.convolution_param.num_output = 2
    conv.blobs.add(num=2, channels=3, height=2, width=2, data=[0.5 * i - 3 for i in range(24)])
    conv.blobs.add(num=1, channels=1, height=1, width=2, data=[0.25, -0.75])
    ip = model.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["conv1"], top=["fc"])
    ip.blobs.add(num=1, channels=1, height=3, width=4, data=[float(i) for i in range(12)],
                 diff=[1.0] * 12)
    original = caffe_pb2.NetParameter.FromString(model.SerializeToString())

    net = caffe_pb2.NetParameter.FromString(model.SerializeToString())
    assert upgrade_net(net, "bvlc_reference_caffenet.caffemodel") is True
    assert not net.input and not net.layers
    assert [layer.name for layer in net.layer] == ["conv1", "fc"]  # no Input layer for shapeless inputs
    assert list(net.layer[0].blobs) == list(original.layers[0].blobs)
    assert list(net.layer[1].blobs) == list(original.layers[1].blobs)
    blob = net.layer[0].blobs[0]
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 2, 2)
    assert not blob.HasField("shape")
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(1, 1), (2, 0)]


# -------------------------------------------------------------------------------------- current-format upgrades
CURRENT_WITH_INPUTS_AND_BATCHNORM = """
name: "bn-net"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
input: "label"
input_dim: 2 input_dim: 1 input_dim: 1 input_dim: 1
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 1 } }
layer {
  name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 } param { name: "bn_bias_correction" }
  batch_norm_param { use_global_stats: false }
}
layer { name: "bn_noparams" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "bn_twoparams" type: "BatchNorm" bottom: "conv" top: "conv" param { lr_mult: 1 } param { lr_mult: 1 } }
layer { name: "sil" type: "Silence" bottom: "conv" bottom: "label" }
"""

CURRENT_WITH_INPUTS_AND_BATCHNORM_UPGRADED = """
name: "bn-net"
layer {
  name: "input" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } shape { dim: 2 dim: 1 dim: 1 dim: 1 } }
}
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 1 } }
layer {
  name: "bn" type: "BatchNorm" bottom: "conv" top: "conv"
  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  param { name: "bn_bias_correction" lr_mult: 0 decay_mult: 0 }
  batch_norm_param { use_global_stats: false }
}
layer { name: "bn_noparams" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "bn_twoparams" type: "BatchNorm" bottom: "conv" top: "conv" param { lr_mult: 1 } param { lr_mult: 1 } }
layer { name: "sil" type: "Silence" bottom: "conv" bottom: "label" }
"""


def test_current_net_with_input_dim_and_batchnorm():
    assert_upgrades_to(CURRENT_WITH_INPUTS_AND_BATCHNORM, CURRENT_WITH_INPUTS_AND_BATCHNORM_UPGRADED)


def test_inputs_without_shapes_are_dropped():
    assert_upgrades_to('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }',
                       'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')


def test_current_net_is_left_alone():
    net = parse_net(V0_LENET_UPGRADED)
    before = net.SerializeToString()
    assert not net_needs_upgrade(net)
    assert upgrade_net(net) is False
    assert net.SerializeToString() == before


ALL_OLD_NETS = {"v0_lenet": V0_LENET, "v0_caffenet": V0_CAFFENET, "v0_data": V0_DATA_LAYERS,
                "v1_alexnet": V1_ALEXNET, "v1_deploy": V1_DEPLOY, "current_bn": CURRENT_WITH_INPUTS_AND_BATCHNORM}


@pytest.mark.parametrize("text", ALL_OLD_NETS.values(), ids=ALL_OLD_NETS.keys())
def test_upgrade_is_idempotent(text):
    net = parse_net(text)
    assert net_needs_upgrade(net)
    assert upgrade_net(net) is True
    once = net.SerializeToString()
    assert not net_needs_upgrade(net)
    assert upgrade_net(net) is False
    assert net.SerializeToString() == once


@pytest.mark.parametrize("predicate,text", [
    (upgrade.needs_v0_upgrade, V0_LENET),
    (upgrade.needs_data_upgrade, V1_ALEXNET),
    (upgrade.needs_v1_upgrade, V1_DEPLOY),
    (upgrade.needs_input_upgrade, V1_DEPLOY),
    (upgrade.needs_batchnorm_upgrade, CURRENT_WITH_INPUTS_AND_BATCHNORM),
], ids=["v0", "data", "v1", "input", "batchnorm"])
def test_step_predicates(predicate, text):
    assert predicate(parse_net(text))
    assert not predicate(parse_net(V0_LENET_UPGRADED))
