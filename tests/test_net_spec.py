"""NetSpec (pycaffe's net_spec): BVLC's LeNet written in Python equals the zoo prototxts field for field, and the
keyword rules (ntop, in_place, *param, <type>_param, LayerParameter fallback, assign_proto), naming and errors."""
import sys

import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

import caffelike as caffe
from caffelike import zoo
from caffelike.net_spec import Function, L, NetSpec, NetSpecError, P, assign_proto, param_name_dict, to_proto

LEARNED = dict(param=[dict(lr_mult=1), dict(lr_mult=2)], weight_filler=dict(type="xavier"),
               bias_filler=dict(type="constant"))


def parse(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def zoo_net(name: str) -> caffe_pb2.NetParameter:
    with open(zoo.path("lenet", name)) as f:
        return parse(f.read())


def assert_same_net(built, expected) -> None:
    assert str(built) == str(expected)  # the text first: pytest shows a readable diff
    assert built == expected


def lenet_body(n: NetSpec, data) -> None:
    """conv1 ... ip2 of BVLC's examples/mnist LeNet."""
    n.conv1 = L.Convolution(data, num_output=20, kernel_size=5, stride=1, **LEARNED)
    n.pool1 = L.Pooling(n.conv1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.conv2 = L.Convolution(n.pool1, num_output=50, kernel_size=5, stride=1, **LEARNED)
    n.pool2 = L.Pooling(n.conv2, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.ip1 = L.InnerProduct(n.pool2, num_output=500, **LEARNED)
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.ip2 = L.InnerProduct(n.relu1, num_output=10, **LEARNED)


def mnist_data(source: str, batch_size: int, phase: int):
    return L.Data(name="mnist", include=dict(phase=phase), transform_param=dict(scale=0.00390625),
                  source=source, batch_size=batch_size, backend=P.Data.LMDB, ntop=2)


def lenet_train_test() -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.data, n.label = mnist_data("mnist_train_lmdb", 64, caffe.TRAIN)
    lenet_body(n, n.data)
    n.accuracy = L.Accuracy(n.ip2, n.label, include=dict(phase=caffe.TEST))
    n.loss = L.SoftmaxWithLoss(n.ip2, n.label)
    train = n.to_proto()
    # One NetSpec holds one top per name; the TEST data layer with the same tops comes from a second one.
    t = NetSpec()
    t.data, t.label = mnist_data("mnist_test_lmdb", 100, caffe.TEST)
    net = caffe_pb2.NetParameter(name="LeNet")
    net.layer.extend([train.layer[0], *t.to_proto().layer, *train.layer[1:]])
    return net


def lenet_deploy() -> caffe_pb2.NetParameter:
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[64, 1, 28, 28]))
    lenet_body(n, n.data)
    n.prob = L.Softmax(n.ip2)
    net = n.to_proto()
    net.name = "LeNet"
    return net


# ---------------------------------------------------------------------------------------------- BVLC LeNet
def test_lenet_train_test_equals_the_zoo_prototxt():
    assert_same_net(lenet_train_test(), zoo_net("lenet_train_test.prototxt"))


def test_lenet_deploy_equals_the_zoo_prototxt():
    assert_same_net(lenet_deploy(), zoo_net("lenet.prototxt"))


def test_a_netspec_net_runs_like_the_zoo_file_with_the_zoo_weights():
    weights = zoo.path("lenet", "lenet_mnist5k.caffemodel")
    ours = caffe.Net(lenet_deploy(), caffe.TEST, weights=weights)
    theirs = caffe.Net(zoo.path("lenet", "lenet.prototxt"), caffe.TEST, weights=weights)
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    ours.blobs["data"].data[...] = x
    theirs.blobs["data"].data[...] = x
    a, b = ours.forward()["prob"], theirs.forward()["prob"]
    assert a.shape == (64, 10)
    np.testing.assert_array_equal(a, b)


def test_the_train_test_netspec_net_builds_for_each_phase_with_caffes_filtering():
    net = lenet_train_test()
    # The Data layers' LMDBs are not here: an Input layer with the same tops stands in for the two of them.
    del net.layer[:2]
    net.layer.insert(0, to_proto(*L.Input(name="mnist", shape=[dict(dim=[2, 1, 28, 28]), dict(dim=[2])],
                                          ntop=2)).layer[0])
    net.layer[0].top[:] = ["data", "label"]
    for phase, kept in ((caffe.TRAIN, ["conv1", "loss"]), (caffe.TEST, ["conv1", "accuracy", "loss"])):
        built = caffe.Net(net, phase)
        assert [name for name in built._layer_names if name in ("conv1", "accuracy", "loss")] == kept


# ---------------------------------------------------------------------------------------------- keywords
def test_caffenet_style_in_place_relu_keeps_the_blob_and_takes_the_attribute_name():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 227, 227]))
    n.conv1 = L.Convolution(n.data, kernel_size=11, stride=4, num_output=96)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    expected = parse("""
      layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 227 dim: 227 } } }
      layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
              convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
      layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
      layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
              pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
      layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1"
              lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }""")
    assert_same_net(n.to_proto(), expected)


def test_ntop_2_returns_a_tuple_of_tops_named_by_the_netspec():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 6]))
    tops = L.Slice(n.data, slice_point=[2], ntop=2)
    assert isinstance(tops, tuple) and len(tops) == 2
    n.a, n.b = tops
    n.loss = L.EuclideanLoss(n.a, n.b)
    layer = n.to_proto().layer[1]
    assert (layer.name, list(layer.top), list(layer.slice_param.slice_point)) == ("a", ["a", "b"], [2])


def test_unnamed_layers_and_tops_are_auto_named_per_type():
    data = L.Input(shape=dict(dim=[2, 6]))
    left, right = L.Slice(data, ntop=2)
    net = to_proto(L.ReLU(L.ReLU(left)), L.Silence(right, ntop=0))
    assert [(lay.name, list(lay.bottom), list(lay.top)) for lay in net.layer] == [
        ("Input1", [], ["Input1"]),
        ("Slice1", ["Input1"], ["Slice1", "Slice2"]),
        ("ReLU1", ["Slice1"], ["ReLU1"]),
        ("ReLU2", ["ReLU1"], ["ReLU2"]),
        ("Silence1", ["Slice2"], []),
    ]


def test_ntop_0_returns_the_function_which_a_netspec_can_name():
    n = NetSpec()
    n.data = L.DummyData(shape=dict(dim=[2]))
    silence = L.Silence(n.data, ntop=0)
    assert isinstance(silence, Function)
    n.quiet = silence
    layer = n.to_proto().layer[1]
    assert (layer.name, layer.type, list(layer.bottom), list(layer.top)) == ("quiet", "Silence", ["data"], [])


def test_top_to_proto_collects_only_what_the_top_needs():
    a = L.Input(shape=dict(dim=[1]))
    b = L.AbsVal(a)
    L.Power(b, power=2)  # not needed for b
    assert [lay.type for lay in b.to_proto().layer] == ["Input", "AbsVal"]


def test_a_top_used_twice_is_one_layer():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.sum = L.Eltwise(n.data, n.data, operation=P.Eltwise.SUM)
    net = n.to_proto()
    assert [lay.name for lay in net.layer] == ["data", "sum"]
    assert list(net.layer[1].bottom) == ["data", "data"]


def test_enum_params_resolve_to_the_schema_values():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX == 0
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE == 1
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB == 1
    assert P.Eltwise.PROD == caffe_pb2.EltwiseParameter.PROD
    # Enum fields take the value's name too.
    layer = to_proto(L.Pooling(L.Input(shape=dict(dim=[1, 1, 4, 4])), pool="AVE", kernel_size=2)).layer[1]
    assert layer.pooling_param.pool == caffe_pb2.PoolingParameter.AVE


@pytest.mark.parametrize("kwargs, expected", [
    (dict(include=dict(phase=caffe.TEST)), 'include { phase: TEST }'),
    (dict(include=[dict(phase=caffe.TRAIN), dict(stage=["deploy"], min_level=1)]),
     'include { phase: TRAIN } include { min_level: 1 stage: "deploy" }'),
    (dict(exclude=dict(stage="deploy")), 'exclude { stage: "deploy" }'),
    (dict(loss_weight=0.5), 'loss_weight: 0.5'),
    (dict(propagate_down=[True, False]), 'propagate_down: true propagate_down: false'),
    (dict(loss_param=dict(ignore_label=255, normalization=P.Loss.VALID)),
     'loss_param { ignore_label: 255 normalization: VALID }'),
    (dict(axis=1), 'softmax_param { axis: 1 }'),
], ids=["include-dict", "include-list", "exclude-stage", "loss_weight-scalar-to-repeated", "propagate_down",
        "loss_param", "shared-softmax-axis"])
def test_layer_parameter_fields_and_rules(kwargs, expected):
    layer = to_proto(L.Softmax(L.Input(shape=dict(dim=[1, 3])), **kwargs)).layer[1]
    want = caffe_pb2.LayerParameter(name="Softmax1", type="Softmax", bottom=["Input1"], top=["Softmax1"])
    text_format.Merge(expected, want)
    assert layer == want, str(layer)


def test_keywords_go_to_the_types_own_param_before_the_layer():
    layer = to_proto(L.Python(L.Input(shape=dict(dim=[1])), module="m", layer="Blank", param_str="{}")).layer[1]
    assert (layer.python_param.module, layer.python_param.layer, layer.python_param.param_str) == \
        ("m", "Blank", "{}")
    assert not layer.param  # param_str ends in "param" but belongs to python_param: pycaffe's rule


def test_name_keyword_overrides_the_attribute_name():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]), name="input")
    layer = n.to_proto().layer[0]
    assert (layer.name, list(layer.top)) == ("input", ["data"])


def test_deconvolution_keywords_land_in_convolution_param():
    layer = to_proto(L.Deconvolution(L.Input(shape=dict(dim=[1, 1, 4, 4])), num_output=3, kernel_size=2,
                                     stride=2)).layer[1]
    assert (layer.convolution_param.num_output, list(layer.convolution_param.kernel_size)) == (3, [2])


def test_param_name_dict_maps_message_stems_to_field_stems():
    names = param_name_dict()
    assert names["Convolution"] == "convolution"
    assert names["InnerProduct"] == "inner_product"
    assert names["Transformation"] == "transform"
    assert names["HDF5Data"] == "hdf5_data"
    assert "Deconvolution" not in names  # pycaffe's own table; the layer-type aliases live beside it


@pytest.mark.parametrize("field, value, text", [
    ("kernel_size", 3, "kernel_size: 3"),
    ("kernel_size", [3, 5], "kernel_size: 3 kernel_size: 5"),
    ("weight_filler", dict(type="gaussian", std=0.5), 'weight_filler { type: "gaussian" std: 0.5 }'),
    ("bias_filler", caffe_pb2.FillerParameter(type="constant", value=1), 'bias_filler { type: "constant" value: 1 }'),
    ("num_output", 7, "num_output: 7"),
], ids=["scalar-on-repeated", "list", "dict-message", "message-copied", "scalar"])
def test_assign_proto(field, value, text):
    msg = caffe_pb2.ConvolutionParameter()
    assign_proto(msg, field, value)
    assert msg == text_format.Parse(text, caffe_pb2.ConvolutionParameter())


def test_assign_proto_list_of_dicts_fills_repeated_messages():
    msg = caffe_pb2.InputParameter()
    assign_proto(msg, "shape", [dict(dim=[1, 2]), dict(dim=3)])
    assert [list(s.dim) for s in msg.shape] == [[1, 2], [3]]


def test_an_empty_dict_marks_a_message_present():
    layer = to_proto(L.ReLU(L.Input(shape=dict(dim=[1])), relu_param=dict())).layer[1]
    assert layer.HasField("relu_param")


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("make, message", [
    (lambda x: L.Convolution(x, kernal_size=3),
     r"L\.Convolution\(\.\.\.\): no field 'kernal_size' in convolution_param \(ConvolutionParameter\) or in "
     r"LayerParameter; did you mean 'kernel_size'"),
    (lambda x: L.Convolution(x, num_output=2.5),
     r"convolution_param\.num_output takes a non-negative integer"),
    (lambda x: L.Convolution(x, weight_filler=dict(tpye="xavier")),
     r"convolution_param\.weight_filler: FillerParameter has no field 'tpye'; did you mean 'type'"),
    (lambda x: L.Convolution(x, weight_filler="xavier"),
     r"weight_filler is a FillerParameter message: give it a dict"),
    (lambda x: L.Convolution(x, num_output=[1, 2]), r"num_output holds one value, not a list"),
    (lambda x: L.Pooling(x, pool="MAXX"), r"pool takes a PoolMethod value \(MAX, AVE, STOCHASTIC\)"),
    (lambda x: L.Custom(x, alpha=1), r"no field 'alpha' in LayerParameter \(caffe.proto has no CustomParameter"),
    (lambda x: L.ReLU(x, tranform_param=dict(scale=1)), r"LayerParameter has no field 'tranform_param'; did you "
                                                         r"mean 'transform_param'"),
    (lambda x: L.ReLU(x, ntop=-1), r"ntop must be a non-negative integer"),
    (lambda x: L.ReLU(in_place=True), r"in_place=True needs a bottom"),
], ids=["misspelt-field", "wrong-type", "nested-field", "string-for-message", "list-for-scalar", "bad-enum-name",
        "type-without-param", "misspelt-param", "negative-ntop", "in-place-without-bottom"])
def test_bad_keywords_fail_at_the_call_with_a_clear_message(make, message):
    x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    with pytest.raises(NetSpecError, match=message):
        make(x)


def test_a_multi_top_tuple_is_not_a_bottom():
    with pytest.raises(TypeError) as info:
        L.ReLU(L.Slice(L.Input(shape=dict(dim=[2])), ntop=2))
    assert str(info.value) == "ReLU input 0 is not a Top (type is <class 'tuple'>)"  # pycaffe's wording
    if sys.version_info >= (3, 11):  # the hint rides along as an exception note
        assert "pass one of them" in "".join(info.value.__notes__)


def test_a_multi_top_tuple_cannot_be_one_netspec_attribute():
    n = NetSpec()
    with pytest.raises(NetSpecError, match=r"NetSpec\.data: got a tuple of 2 tops; unpack"):
        n.data = L.Data(ntop=2)


def test_unknown_netspec_attribute_and_enum_names():
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1]))
    with pytest.raises(AttributeError, match=r"NetSpec has no top 'dat'; did you mean 'data'"):
        n.dat
    with pytest.raises(AttributeError, match=r"PoolingParameter has no enum value 'MAXX' \(PoolMethod: MAX, AVE"):
        P.Pooling.MAXX
    with pytest.raises(AttributeError, match=r"no message PolingParameter; did you mean 'Pooling'"):
        P.Poling.MAX
    assert not hasattr(L, "__wrapped__")  # dunder lookups are not layer types
