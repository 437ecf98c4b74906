"""caffelike.format.upgrade for V1 nets (enum layer types, blobs_lr, legacy data fields) and for current-format
nets with input_dim or old BatchNorm params, against Caffe's upgrade rules (upgrade_proto.cpp); then every
upgrade step's predicate and idempotency over the old nets of both files.  The V0 cases are in test_upgrade.py."""
from __future__ import annotations

import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from test_upgrade import (
    V0_CAFFENET,
    V0_DATA_LAYERS,
    V0_LENET,
    V0_LENET_UPGRADED,
    assert_upgrades_to,
    parse_net,
)

from caffelike.format import upgrade
from caffelike.format.upgrade import V1_TYPE_NAMES, net_needs_upgrade, upgrade_net

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
