"""Solver upgrades (UpgradeSolverAsNeeded): the solver_type enum to the type string, and inline nets upgraded
like net files."""
from __future__ import annotations

import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from test_upgrade import V0_LENET, V0_LENET_UPGRADED, parse_net
from test_upgrade_v1 import V1_ALEXNET, V1_ALEXNET_UPGRADED, V1_DEPLOY, V1_DEPLOY_UPGRADED

from caffelike.errors import PrototxtError
from caffelike.format.upgrade import upgrade_solver

SOLVER_TYPE_CASES = [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                     ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")]


def parse_solver(text: str) -> caffe_pb2.SolverParameter:
    return text_format.Parse(text, caffe_pb2.SolverParameter())


@pytest.mark.parametrize("enum_name,expected", SOLVER_TYPE_CASES, ids=[c[0] for c in SOLVER_TYPE_CASES])
def test_solver_type_enum_to_string(enum_name, expected):
    solver = parse_solver(f'base_lr: 0.01 solver_type: {enum_name} net: "train.prototxt"')
    assert upgrade_solver(solver, "solver.prototxt") is True
    assert solver == parse_solver(f'base_lr: 0.01 type: "{expected}" net: "train.prototxt"')
    assert not solver.HasField("solver_type")
    assert upgrade_solver(solver) is False


def test_solver_type_both_given():
    same = parse_solver('solver_type: NESTEROV type: "Nesterov"')
    assert upgrade_solver(same) is True
    assert same == parse_solver('type: "Nesterov"')
    with pytest.raises(PrototxtError, match=r'solver\.prototxt: .*solver_type: ADAM and type: "SGD"'):
        upgrade_solver(parse_solver('solver_type: ADAM type: "SGD"'), "solver.prototxt")


def test_solver_already_current():
    solver = parse_solver('type: "Adam" base_lr: 0.001 net: "train.prototxt"')
    assert upgrade_solver(solver) is False


def test_solver_inline_nets_are_upgraded():
    solver = caffe_pb2.SolverParameter(base_lr=0.01)
    solver.train_net_param.CopyFrom(parse_net(V1_ALEXNET))
    solver.test_net_param.add().CopyFrom(parse_net(V0_LENET))
    solver.test_net_param.add().CopyFrom(parse_net(V0_LENET_UPGRADED))
    assert upgrade_solver(solver, "solver.prototxt") is True
    assert solver.train_net_param == parse_net(V1_ALEXNET_UPGRADED)
    assert solver.test_net_param[0] == parse_net(V0_LENET_UPGRADED)
    assert solver.test_net_param[1] == parse_net(V0_LENET_UPGRADED)
    assert not solver.HasField("net_param")

    solver = caffe_pb2.SolverParameter()
    solver.net_param.CopyFrom(parse_net(V1_DEPLOY))
    assert upgrade_solver(solver) is True
    assert solver.net_param == parse_net(V1_DEPLOY_UPGRADED)
    assert upgrade_solver(solver) is False


def test_solver_inline_net_error_names_the_net():
    solver = caffe_pb2.SolverParameter()
    solver.test_net_param.add().CopyFrom(parse_net('layers { name: "n" type: NONE }'))
    with pytest.raises(PrototxtError, match=r"^solver\.prototxt \(test_net_param #0\): "):
        upgrade_solver(solver, "solver.prototxt")
