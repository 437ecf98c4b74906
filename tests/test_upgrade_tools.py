"""Caffe's upgrade_net_proto_text / _binary / upgrade_solver_proto_text as `caffelike` verbs."""
import numpy as np
from caffelike.proto import caffe_pb2
from test_legacy_nets import V1_LENET
from test_weights import _v1_caffemodel

import caffelike as caffe
from caffelike.cli import main
from caffelike.format.prototxt import read_message


def test_upgrade_net_proto_text(tmp_path):
    old, new = tmp_path / "old.prototxt", tmp_path / "new.prototxt"
    old.write_text(V1_LENET)
    assert main(["upgrade_net_proto_text", str(old), str(new)]) == 0
    net = read_message(str(new), caffe_pb2.NetParameter())
    assert not net.layers and [lp.type for lp in net.layer][:3] == ["Input", "Convolution", "Pooling"]
    assert net.layer[1].param[1].lr_mult == 2
    assert caffe.Net(str(new), caffe.TEST).blobs["prob"].shape == [2, 10]


def test_upgrade_net_proto_binary_keeps_legacy_blobs(tmp_path):
    w, b = np.ones((4, 3), np.float32), np.zeros(4, np.float32)
    old, new = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    _v1_caffemodel(old, w, b)
    assert main(["upgrade_net_proto_binary", str(old), str(new)]) == 0
    net = caffe_pb2.NetParameter.FromString(new.read_bytes())
    assert net.layer[0].type == "InnerProduct" and net.layer[0].blobs[0].height == 4


def test_upgrade_solver_proto_text(tmp_path):
    old, new = tmp_path / "solver.prototxt", tmp_path / "new.prototxt"
    old.write_text('net: "x.prototxt" solver_type: NESTEROV base_lr: 0.1')
    assert main(["upgrade_solver_proto_text", str(old), str(new)]) == 0
    solver = read_message(str(new), caffe_pb2.SolverParameter())
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
