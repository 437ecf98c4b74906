""".caffemodel reading and writing: byte-for-byte what Caffe writes, bit-exact round trips, legacy formats."""
import json

import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from helpers import FIXTURES

import caffelike as caffe
from caffelike import zoo
from caffelike.format.blobproto import blob_to_array, shape_matches
from caffelike.format.prototxt import parse_net
from caffelike.format.weights import read_caffemodel

# Fixture cases whose weights.caffemodel BVLC Caffe wrote with net.save from exactly the case's net.
SAVED_BY_CAFFE = [
    (kind, p.parent.name) for kind in ("layers", "nets") for p in sorted((FIXTURES / kind).glob("*/weights.caffemodel"))
    if json.loads((p.parent / "case.json").read_text())["weights"] == "weights.caffemodel"
]


@pytest.mark.parametrize("kind,name", SAVED_BY_CAFFE, ids=[f"{k}/{n}" for k, n in SAVED_BY_CAFFE])
def test_saved_caffemodel_is_byte_identical_to_caffes(kind, name, tmp_path):
    folder = FIXTURES / kind / name
    meta = json.loads((folder / "case.json").read_text())
    missing = set(meta["layer_types"]) - set(caffe.layer_type_list())
    if missing:
        pytest.skip(f"layer types not implemented yet: {sorted(missing)}")
    phase = caffe.TEST if meta["phase"] == "TEST" else caffe.TRAIN
    net = caffe.Net(str(folder / "net.prototxt"), phase, weights=str(folder / "weights.caffemodel"),
                    trust_python=True)  # (our own fixture's Python-layer module)
    out = tmp_path / "out.caffemodel"
    net.save(str(out))
    assert out.read_bytes() == (folder / "weights.caffemodel").read_bytes()


LENET = str(FIXTURES / "nets" / "bvlc_lenet" / "net.prototxt")


def test_round_trip_is_bit_exact_and_a_valid_net_parameter(tmp_path):
    caffe.set_random_seed(11)
    a = caffe.Net(LENET, caffe.TEST)
    path = tmp_path / "lenet.caffemodel"
    a.save(str(path))
    parsed = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert parsed.name == "LeNet" and [lp.name for lp in parsed.layer] == a._layer_names
    assert all(lp.phase == caffe.TEST and lp.type for lp in parsed.layer)
    assert [list(b.shape.dim) for b in parsed.layer[1].blobs] == [[20, 1, 5, 5], [20]]
    caffe.set_random_seed(12)
    b = caffe.Net(LENET, caffe.TEST, weights=str(path))
    for layer, blobs in a.params.items():
        for x, y in zip(blobs, b.params[layer]):
            assert x.data.tobytes() == y.data.tobytes()
    again = tmp_path / "again.caffemodel"
    b.save(str(again))
    assert again.read_bytes() == path.read_bytes()


def test_unknown_source_layers_are_ignored_and_missing_ones_keep_their_fill(tmp_path):
    src = caffe_pb2.NetParameter()
    lp = src.layer.add()
    lp.name = "not_in_net"
    net = caffe.Net(LENET, caffe.TEST)
    before = net.params["conv1"][0].data.copy()
    path = tmp_path / "w.caffemodel"
    path.write_bytes(src.SerializeToString())
    net.copy_from(str(path))
    assert np.array_equal(net.params["conv1"][0].data, before)


def _v1_caffemodel(path, w, b):
    """A V1 (`layers`) caffemodel with legacy 4-D blobs, as the BVLC reference models are stored."""
    net = caffe_pb2.NetParameter()
    v1 = net.layers.add()
    v1.name = "ip"
    v1.type = caffe_pb2.V1LayerParameter.INNER_PRODUCT
    for array, dims in ((w, (1, 1) + w.shape), (b, (1, 1, 1) + b.shape)):
        bp = v1.blobs.add()
        bp.num, bp.channels, bp.height, bp.width = dims
        bp.data.extend(array.ravel().tolist())
    path.write_bytes(net.SerializeToString())


def test_v1_caffemodel_with_legacy_4d_blobs_loads_into_a_current_net(tmp_path):
    text = """layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
              layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 } }"""
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.arange(4, dtype=np.float32)
    path = tmp_path / "v1.caffemodel"
    _v1_caffemodel(path, w, b)
    net = caffe.Net(parse_net(text), caffe.TEST, weights=str(path))
    assert np.array_equal(net.params["ip"][0].data, w) and np.array_equal(net.params["ip"][1].data, b)


@pytest.mark.parametrize("dims,target,ok", [
    ((1, 1, 4, 3), (4, 3), True), ((1, 1, 1, 4), (4,), True), ((2, 3, 4, 5), (2, 3, 4, 5), True),
    ((1, 1, 3, 4), (4, 3), False), ((1, 1, 4, 3), (1, 2, 3, 4, 3), False),
], ids=["ip-weight", "bias", "conv", "transposed", "5-d"])
def test_legacy_shape_matching(dims, target, ok):
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = dims
    assert shape_matches(bp, target) is ok


def test_double_data_is_read_when_present():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2])
    bp.double_data.extend([0.1, 0.2])
    values = blob_to_array(bp)
    assert values.dtype == np.float64 and np.array_equal(values, [0.1, 0.2])


def test_zoo_lenet_weights_load():
    net = read_caffemodel(zoo.path("lenet", "lenet_mnist5k.caffemodel"))
    assert [lp.name for lp in net.layer if lp.blobs] == ["conv1", "conv2", "ip1", "ip2"]


# ------------------------------------------------------------------------------------------ 0-axis parameters
SCALAR_NET = """name: "scalars"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }
layer { name: "prelu" type: "PReLU" bottom: "data" top: "a" prelu_param { channel_shared: true } }
layer { name: "scale" type: "Scale" bottom: "a" top: "b" scale_param { num_axes: 0 bias_term: true } }
layer { name: "bias" type: "Bias" bottom: "b" top: "c" bias_param { num_axes: 0 } }
"""
SCALARS = {"prelu": [0.125], "scale": [1.5, -0.25], "bias": [0.75]}


def caffe_written_scalars() -> bytes:
    """The .caffemodel Caffe's net.save writes for SCALAR_NET: Blob::ToProto gives a 0-axis blob no shape field
    at all, just its one value."""
    out = caffe_pb2.NetParameter(name="scalars")
    for name, kind in (("data", "Input"), ("prelu", "PReLU"), ("scale", "Scale"), ("bias", "Bias")):
        layer = out.layer.add(name=name, type=kind)
        for value in SCALARS.get(name, []):
            layer.blobs.add().data.append(value)
    return out.SerializeToString()


def test_scalar_parameters_load_from_a_caffe_written_caffemodel(tmp_path):
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(caffe_written_scalars())
    net = caffe.Net(parse_net(SCALAR_NET), caffe.TEST, weights=str(weights))
    for name, values in SCALARS.items():
        assert [b.data.shape for b in net.params[name]] == [()] * len(values)
        assert [float(b.data) for b in net.params[name]] == values
    x = np.linspace(-2, 2, 120, dtype=np.float32).reshape(2, 3, 4, 5)
    net.blobs["data"].data[...] = x
    out = net.forward()["c"]
    expected = (np.where(x > 0, x, 0.125 * x) * 1.5 - 0.25) + 0.75
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_scalar_parameters_save_as_caffe_does_and_round_trip(tmp_path):
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(caffe_written_scalars())
    net = caffe.Net(parse_net(SCALAR_NET), caffe.TEST, weights=str(weights))
    saved = tmp_path / "saved.caffemodel"
    net.save(str(saved))
    proto = read_caffemodel(str(saved))
    blobs = [b for layer in proto.layer for b in layer.blobs]
    assert len(blobs) == 4 and not any(b.HasField("shape") for b in blobs)
    again = caffe.Net(parse_net(SCALAR_NET), caffe.TEST, weights=str(saved))
    assert [float(b.data) for b in again.params["scale"]] == SCALARS["scale"]


def test_shapeless_blobproto_is_a_scalar_for_caffe_and_pycaffe():
    one = caffe_pb2.BlobProto(data=[2.5])
    assert blob_to_array(one).shape == () and float(blob_to_array(one)) == 2.5
    assert caffe.io.blobproto_to_array(one).shape == () and caffe.io.blobproto_to_array(one) == 2.5
    hundred = caffe_pb2.BlobProto(data=list(range(100)))
    with pytest.raises(caffe.WeightsError, match=r"holds 100 values but its shape \(\) needs 1"):
        blob_to_array(hundred)  # Caffe's FromProto refuses it too
    with pytest.raises(ValueError, match=r"holds 100 data values .* needs 1 \(a BlobProto without shape"):
        caffe.io.blobproto_to_array(hundred)  # pycaffe's reshape raises ValueError (BVLC's test_io.test_no_shape)


def test_a_weights_path_with_a_nul_byte_is_a_missing_file():
    # Found by tests/test_fuzz.py (a corrupt .solverstate's learned_net): is_hdf5 let open()'s ValueError escape.
    from caffelike.format.weights import is_hdf5

    assert not is_hdf5("lenet\x00.caffemodel")
    net = caffe.Net(zoo.path("lenet", "lenet.prototxt"), caffe.TEST)
    with pytest.raises(caffe.WeightsError, match="Could not open weights file .*no such file"):
        net.copy_from("lenet\x00.caffemodel")
