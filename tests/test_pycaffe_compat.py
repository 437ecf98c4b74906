"""pycaffe compatibility: every behaviour BVLC Caffe's own python/caffe/test suite checks, asserted on caffelike
through `import caffelike as caffe` (test_draw, test_io, test_layer_type_list, test_net,
test_net_spec, test_nccl; test_python_layer, test_python_layer_with_param_str and test_solver are in
tests/test_pycaffe_compat_python.py, test_coord_map in tests/test_coord_map.py), plus the pycaffe runtime names (Timer, solver count and rank).
scripts/run_bvlc_pycaffe_tests.py, which runs BVLC's suite itself, is tested in tests/test_bvlc_runner.py.  The tests are written here from what BVLC's tests check, in pytest's style."""
from __future__ import annotations

import os
import pathlib
import shutil
import textwrap
import time
from collections import OrderedDict

import numpy as np
import pytest

import caffelike as caffe
from caffelike import layers as L
from caffelike import params as P
from caffelike.coord_map import crop

ROOT = pathlib.Path(__file__).resolve().parent.parent


def write(folder: pathlib.Path, name: str, text: str) -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# ==================================================================================================== test_draw
ZOO_NETS = sorted(p for p in (ROOT / "zoo").rglob("*.prototxt") if "solver" not in p.name)


@pytest.mark.parametrize("path", ZOO_NETS, ids=[str(p.relative_to(ROOT / "zoo")) for p in ZOO_NETS])
def test_draw_every_bundled_net(path):
    from google.protobuf import text_format

    import caffelike.draw

    net = caffe.caffe_pb2.NetParameter()
    text_format.Merge(path.read_text(), net)
    assert caffelike.draw.net_to_dot(net, "LR").startswith("digraph")
    if shutil.which("dot"):  # pycaffe's draw_net renders with Graphviz, as here
        assert caffelike.draw.draw_net(net, "LR")[:4] == b"\x89PNG"


# ====================================================================================================== test_io
def blob_proto(values, **fields):
    blob = caffe.caffe_pb2.BlobProto()
    blob.data.extend(list(np.asarray(values, np.float64).ravel()))
    for key, value in fields.items():
        if key == "dims":
            blob.shape.dim.extend(value)
        else:
            setattr(blob, key, value)
    return blob


def test_io_blobproto_to_array_legacy_and_nd_shapes():
    legacy = blob_proto(np.zeros(100), num=1, channels=1, height=10, width=10)
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 1, 10, 10)
    assert caffe.io.blobproto_to_array(blob_proto(np.zeros(100), dims=[10, 10])).shape == (10, 10)


def test_io_blobproto_to_array_scalar():
    assert caffe.io.blobproto_to_array(blob_proto([123])) == 123


def test_io_blobproto_to_array_without_a_shape_is_a_value_error():
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(blob_proto(np.zeros(100)))


def test_io_array_to_datum_without_a_label_writes_no_label():
    with_label = caffe.io.array_to_datum(np.ones((10, 10, 3)), label=1)
    without = caffe.io.array_to_datum(np.ones((10, 10, 3)))
    assert len(with_label.SerializeToString()) > len(without.SerializeToString())


# ======================================================================================= test_layer_type_list
# BVLC Caffe's registered types (LayerRegistry's std::map keys), in the order pycaffe lists them: byte order.
BVLC_LAYER_TYPES = [
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat", "ContrastiveLoss",
    "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU", "Eltwise", "Embed",
    "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData",
    "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU", "Reduction",
    "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
]


def test_layer_type_list_has_the_standard_types():
    for type_name in ["Data", "Convolution", "InnerProduct"]:
        assert type_name in caffe.layer_type_list()


def test_layer_type_list_is_bvlcs_61_types_in_byte_order():
    """BVLC's 61 types, and caffelike's two extensions that run a PyTorch model file (docs/torch_models.md)."""
    types = caffe.layer_type_list()
    assert types == sorted(types, key=lambda t: t.encode()) and len(BVLC_LAYER_TYPES) == 61
    assert [t for t in types if t not in ("TorchLoss", "TorchModule")] == BVLC_LAYER_TYPES


# ===================================================================================================== test_net
def simple_net_file(folder: pathlib.Path, num_output: int) -> str:
    """BVLC's test_net.py net: DummyData (5x2x3x4 data, 5x1x1x1 labels) -> conv -> ip -> SoftmaxWithLoss."""
    return write(folder, "simple.prototxt", f"""\
        name: 'testnet' force_backward: true
        layer {{ type: 'DummyData' name: 'data' top: 'data' top: 'label'
          dummy_data_param {{ num: 5 channels: 2 height: 3 width: 4
            num: 5 channels: 1 height: 1 width: 1
            data_filler {{ type: 'gaussian' std: 1 }}
            data_filler {{ type: 'constant' }} }} }}
        layer {{ type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
          convolution_param {{ num_output: 11 kernel_size: 2 pad: 3
            weight_filler {{ type: 'gaussian' std: 1 }}
            bias_filler {{ type: 'constant' value: 2 }} }}
            param {{ decay_mult: 1 }} param {{ decay_mult: 0 }} }}
        layer {{ type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip_blob'
          inner_product_param {{ num_output: {num_output}
            weight_filler {{ type: 'gaussian' std: 2.5 }}
            bias_filler {{ type: 'constant' value: -3 }} }} }}
        layer {{ type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip_blob' bottom: 'label' top: 'loss' }}
        """)


NUM_OUTPUT = 13


@pytest.fixture
def net(tmp_path):
    net = caffe.Net(simple_net_file(tmp_path, NUM_OUTPUT), caffe.TRAIN)
    label = net.blobs["label"]
    label.data[...] = np.random.default_rng(0).integers(NUM_OUTPUT, size=label.data.shape)
    return net


def params_equal(a, b) -> bool:
    return all(np.array_equal(a.params[name][i].data, b.params[name][i].data)
               for name in a.params for i in range(len(a.params[name])))


def test_net_blobs_and_params_outlive_the_net(net):
    params = sum((list(p) for p in net.params.values()), [])
    blobs = list(net.blobs.values())
    del net
    total = sum(float(p.data.sum() + p.diff.sum()) for p in params)
    total += sum(float(b.data.sum() + b.diff.sum()) for b in blobs)
    assert np.isfinite(total)


def test_net_layer_dict_follows_layer_names(net):
    assert list(net.layer_dict) == list(net._layer_names) == ["data", "conv", "ip", "loss"]
    for i, name in enumerate(net._layer_names):
        assert net.layer_dict[name].type == net.layers[i].type


def test_net_forward_backward(net):
    assert set(net.forward()) == {"loss"}
    assert net.backward() == {}


def test_net_forward_start_end_runs_only_that_layer(net):
    conv = net.blobs["conv"]
    conv.data[:] = np.random.default_rng(1).uniform(size=conv.data.shape).astype(np.float32)
    out = net.forward(start="ip", end="ip")
    assert "ip_blob" in out
    w, bias = net.params["ip"][0].data, net.params["ip"][1].data
    expected = np.array([w @ conv.data[i].reshape(-1) + bias for i in range(conv.data.shape[0])])
    np.testing.assert_allclose(net.blobs["ip_blob"].data, expected, rtol=1e-3, atol=1e-5)


def test_net_backward_start_end_runs_only_that_layer(net):
    top_diff = np.random.default_rng(2).uniform(size=net.blobs["ip_blob"].data.shape).astype(np.float32)
    net.blobs["ip_blob"].diff[:] = top_diff
    out = net.backward(start="ip", end="ip")
    assert "conv" in out
    w = net.params["ip"][0].data
    conv = net.blobs["conv"]
    expected = np.array([w.T @ top_diff[i] for i in range(conv.data.shape[0])]).reshape(conv.data.shape)
    np.testing.assert_allclose(conv.diff, expected, rtol=1e-3, atol=1e-5)


def test_net_clear_param_diffs_zeroes_the_arrays_in_place(net):
    net.forward()
    net.backward()
    diff = net.params["conv"][0].diff
    assert diff.max() > 0
    net.clear_param_diffs()
    assert (diff == 0).all()


def test_net_inputs_outputs_and_top_bottom_names(net):
    assert net.inputs == [] and net.outputs == ["loss"]
    assert net.top_names == OrderedDict([("data", ["data", "label"]), ("conv", ["conv"]), ("ip", ["ip_blob"]),
                                         ("loss", ["loss"])])
    assert net.bottom_names == OrderedDict([("data", []), ("conv", ["data"]), ("ip", ["conv"]),
                                            ("loss", ["ip_blob", "label"])])


@pytest.mark.parametrize("how", ["legacy-constructor", "weights-keyword", "copy_from"])
def test_net_save_and_read(net, tmp_path, how):
    weights = str(tmp_path / "saved.caffemodel")
    net.save(weights)
    prototxt = simple_net_file(tmp_path, NUM_OUTPUT)
    if how == "legacy-constructor":
        net2 = caffe.Net(prototxt, weights, caffe.TRAIN)
    elif how == "weights-keyword":
        net2 = caffe.Net(prototxt, caffe.TRAIN, weights=weights)
    else:
        net2 = caffe.Net(prototxt, caffe.TRAIN)
        net2.copy_from(weights)
    assert params_equal(net, net2)


@pytest.mark.parametrize("name", ["weights.h5", "no-extension"], ids=["h5-extension", "no-extension"])
def test_net_save_hdf5_and_load_hdf5(net, tmp_path, name):
    path = str(tmp_path / name)
    net.save_hdf5(path)
    net2 = caffe.Net(simple_net_file(tmp_path, NUM_OUTPUT), caffe.TRAIN)
    assert not params_equal(net, net2)
    net2.load_hdf5(path)
    assert params_equal(net, net2)
    net3 = caffe.Net(simple_net_file(tmp_path, NUM_OUTPUT), caffe.TRAIN)
    net3.copy_from(path)  # copy_from knows an HDF5 file by its signature, as Caffe reads .h5 weights
    assert params_equal(net, net3)
    assert sorted(os.listdir(tmp_path)) == sorted([name, "simple.prototxt"])  # written atomically: no leftovers


def test_net_save_hdf5_writes_caffes_layout(net, tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "w.h5"
    net.save_hdf5(str(path))
    with h5py.File(path, "r") as f:
        assert list(f) == ["data"]
        assert sorted(f["data"]) == ["conv", "data", "ip", "loss"]
        assert sorted(f["data"]["conv"]) == ["0", "1"] and len(f["data"]["loss"]) == 0
        assert f["data"]["conv"]["0"].shape == (11, 2, 2, 2) and f["data"]["conv"]["0"].dtype == np.float32
        np.testing.assert_array_equal(f["data"]["ip"]["1"][()], net.params["ip"][1].data)


SHARED_NET = """\
    layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 } } }
    layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1' param { name: 'w' } param { name: 'b' }
      inner_product_param { num_output: 3 weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } } }
    layer { name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2' param { name: 'w' } param { name: 'b' }
      inner_product_param { num_output: 3 } }
    """


def test_net_hdf5_weights_store_a_shared_blob_once_and_load_it_back(tmp_path):
    h5py = pytest.importorskip("h5py")
    prototxt = write(tmp_path, "shared.prototxt", SHARED_NET)
    net = caffe.Net(prototxt, caffe.TEST)
    net.save_hdf5(str(tmp_path / "w.h5"))
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert sorted(f["data"]["ip1"]) == ["0", "1"] and len(f["data"]["ip2"]) == 0
    other = caffe.Net(prototxt, caffe.TEST)
    other.load_hdf5(str(tmp_path / "w.h5"))
    assert params_equal(net, other)
    assert np.array_equal(other.params["ip2"][0].data, net.params["ip1"][0].data)


def test_net_load_hdf5_ignores_unknown_layers_and_refuses_mismatches(net, tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f.create_group("data").create_group("nonexistent").create_dataset("0", data=np.zeros(3, np.float32))
    before = [p.data.copy() for p in net.params["conv"]]
    net.load_hdf5(str(path))
    assert all(np.array_equal(a, p.data) for a, p in zip(before, net.params["conv"]))
    with h5py.File(path, "w") as f:
        f.create_group("data").create_group("conv").create_dataset("0", data=np.zeros((11, 2), np.float32))
    with pytest.raises(caffe.WeightsError, match=r"layer 'conv'; shape mismatch. Source param shape is \(11, 2\)"):
        net.load_hdf5(str(path))
    with h5py.File(path, "w") as f:
        group = f.create_group("data").create_group("conv")
        for i in range(3):
            group.create_dataset(str(i), data=np.zeros(1, np.float32))
    with pytest.raises(caffe.WeightsError, match="Incompatible number of blobs for layer 'conv'"):
        net.load_hdf5(str(path))


@pytest.mark.parametrize("level, expected", [(0, ["NoLevel", "Level0Only", "Level>=0"]),
                                             (1, ["NoLevel", "Level1Only", "Level>=0", "Level>=1"])],
                         ids=["level-0", "level-1"])
def test_net_levels(tmp_path, level, expected):
    layers = "".join(
        f"layer {{ name: '{name}' type: 'InnerProduct' bottom: 'data' top: '{name}' {rule} "
        "inner_product_param { num_output: 1 } }\n"
        for name, rule in [("NoLevel", ""), ("Level0Only", "include { min_level: 0 max_level: 0 }"),
                           ("Level1Only", "include { min_level: 1 max_level: 1 }"),
                           ("Level>=0", "include { min_level: 0 }"), ("Level>=1", "include { min_level: 1 }")])
    path = write(tmp_path, "levels.prototxt", "layer { name: 'data' type: 'DummyData' top: 'data' "
                 "dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }\n" + layers)
    net = caffe.Net(path, caffe.TEST, level=level)
    assert [b for b in net.blobs if "data" not in b] == expected


@pytest.mark.parametrize("stages, expected", [(["A"], ["A", "AorB"]), (["B"], ["B", "AorB"]),
                                              (["A", "B"], ["A", "B", "AorB", "AandB"])],
                         ids=["stage-A", "stage-B", "stages-A-and-B"])
def test_net_stages(tmp_path, stages, expected):
    layers = "".join(
        f"layer {{ name: '{name}' type: 'InnerProduct' bottom: 'data' top: '{name}' {rule} "
        "inner_product_param { num_output: 1 } }\n"
        for name, rule in [("A", "include { stage: 'A' }"), ("B", "include { stage: 'B' }"),
                           ("AorB", "include { stage: 'A' } include { stage: 'B' }"),
                           ("AandB", "include { stage: 'A' stage: 'B' }")])
    path = write(tmp_path, "stages.prototxt", "layer { name: 'data' type: 'DummyData' top: 'data' "
                 "dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } }\n" + layers)
    net = caffe.Net(path, caffe.TEST, stages=stages)
    assert [b for b in net.blobs if "data" not in b] == expected


ALL_IN_ONE = """\
    layer { name: 'train_data' type: 'DummyData' top: 'data' top: 'label'
      dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
      include { phase: TRAIN stage: 'train' } }
    layer { name: 'val_data' type: 'DummyData' top: 'data' top: 'label'
      dummy_data_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } }
      include { phase: TEST stage: 'val' } }
    layer { name: 'deploy_data' type: 'Input' top: 'data'
      input_param { shape { dim: 1 dim: 1 dim: 10 dim: 10 } } include { phase: TEST stage: 'deploy' } }
    layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 2 } }
    layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss'
      include: { phase: TRAIN stage: 'train' } include: { phase: TEST stage: 'val' } }
    layer { name: 'pred' type: 'Softmax' bottom: 'ip' top: 'pred' include: { phase: TEST stage: 'deploy' } }
    """


@pytest.mark.parametrize("phase, stage, outputs", [(caffe.TRAIN, "train", ["loss"]), (caffe.TEST, "val", ["loss"]),
                                                   (caffe.TEST, "deploy", ["pred"])],
                         ids=["train", "val", "deploy"])
def test_net_all_in_one_prototxt(tmp_path, phase, stage, outputs):
    net = caffe.Net(write(tmp_path, "all.prototxt", ALL_IN_ONE), phase, stages=[stage])
    assert list(net.blobs["data"].shape) == [1, 1, 10, 10] and net.outputs == outputs


def test_net_memory_data_set_input_arrays(tmp_path):
    path = write(tmp_path, "memory.prototxt", """\
        layer { name: 'data' type: 'MemoryData' top: 'data' top: 'label'
          memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
        layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 1 } }
        """)
    net = caffe.Net(path, caffe.TEST)
    data = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    labels = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)
    net.set_input_arrays(data, labels)
    for batch in range(2):
        net.forward()
        np.testing.assert_array_equal(net.blobs["data"].data, data[2 * batch: 2 * batch + 2])
        np.testing.assert_array_equal(net.blobs["label"].data.ravel(), labels[2 * batch: 2 * batch + 2].ravel())


# ================================================================================================ test_net_spec
def lenet(batch_size, named=True):
    """BVLC's LeNet in NetSpec, with every layer named after its attribute or (named=False) auto-named."""
    data, label = L.DummyData(shape=[dict(dim=[batch_size, 1, 28, 28]), dict(dim=[batch_size, 1, 1, 1])],
                              transform_param=dict(scale=1. / 255), ntop=2)
    conv1 = L.Convolution(data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    pool1 = L.Pooling(conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    conv2 = L.Convolution(pool1, kernel_size=5, num_output=50, weight_filler=dict(type="xavier"))
    pool2 = L.Pooling(conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    ip1 = L.InnerProduct(pool2, num_output=500, weight_filler=dict(type="xavier"))
    relu1 = L.ReLU(ip1, in_place=True)
    ip2 = L.InnerProduct(relu1, num_output=10, weight_filler=dict(type="xavier"))
    loss = L.SoftmaxWithLoss(ip2, label)
    if not named:
        return loss.to_proto()
    n = caffe.NetSpec()
    n.data, n.label, n.conv1, n.pool1, n.conv2, n.pool2 = data, label, conv1, pool1, conv2, pool2
    n.ip1, n.relu1, n.ip2, n.loss = ip1, relu1, ip2, loss
    return n.to_proto()


def load_net(tmp_path, net_proto):
    return caffe.Net(write(tmp_path, "spec.prototxt", str(net_proto)), caffe.TEST)


@pytest.mark.parametrize("named", [True, False], ids=["named", "anonymous"])
def test_net_spec_lenet(tmp_path, named):
    net_proto = lenet(50, named)
    assert net_proto.layer[6].bottom == net_proto.layer[6].top  # the ReLU is in place
    assert len(load_net(tmp_path, net_proto).layers) == 9


def test_net_spec_zero_top_layers(tmp_path):
    n = caffe.NetSpec()
    n.data, n.data2 = L.DummyData(shape=dict(dim=3), ntop=2)
    n.silence_data = L.Silence(n.data, ntop=0)
    n.silence_data2 = L.Silence(n.data2, ntop=0)
    assert len(load_net(tmp_path, n.to_proto()).forward()) == 0


def test_net_spec_type_error_has_pycaffes_wording():
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError) as info:
        L.Silence(data, ntop=0)
    assert str(info.value) == "Silence input 0 is not a Top (type is <class 'tuple'>)"  # what scripts match on
    L.Silence(*data, ntop=0)


# ==================================================================================================== test_nccl
def test_nccl_runs_on_torch_distributed():
    # caffe.NCCL is backed by a torch.distributed process group (tests/test_distributed.py trains with it).
    assert caffe.has_nccl() is True
    assert caffe.NCCL.new_uid().startswith(b"tcp://127.0.0.1:")  # bytes, as BVLC's test_nccl.py wants
    with pytest.raises(caffe.CaffeError, match="must come from caffe.NCCL.new_uid"):
        caffe.NCCL(None, "uid")


def test_solver_count_rank_and_multiprocess(monkeypatch):
    from caffelike.core import runtime

    monkeypatch.setitem(runtime._solvers, "count", 1)
    monkeypatch.setitem(runtime._solvers, "rank", 0)
    monkeypatch.setitem(runtime._solvers, "multiprocess", False)
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(2)
    caffe.set_solver_rank(1)
    caffe.set_multiprocess(True)
    assert (caffe.solver_count(), caffe.solver_rank(), runtime.multiprocess()) == (2, 1, True)
    with pytest.raises(ValueError, match="at least 1"):
        caffe.set_solver_count(0)
    with pytest.raises(TypeError, match="takes an integer"):
        caffe.set_solver_rank(0.5)


def test_timer_measures_milliseconds_like_caffes():
    timer = caffe.Timer()
    assert timer.ms == 0.0  # never started
    timer.start()
    time.sleep(0.02)
    timer.stop()
    first = timer.ms
    assert 15 <= first < 2000
    time.sleep(0.01)
    assert timer.ms == first  # stopped: reading does not move it
    timer.start()
    assert timer.ms < first  # reading a running timer stops it


def test_pycaffe_names_are_exported():
    for name in ["coord_map", "has_nccl", "NCCL", "Timer", "solver_count", "set_solver_count", "solver_rank",
                 "set_solver_rank", "set_multiprocess", "layer_type_list"]:
        assert name in caffe.__all__ and hasattr(caffe, name)
    assert caffe.coord_map.crop is crop
