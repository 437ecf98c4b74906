"""Which layers a net keeps for a given NetState (phase, level, stages): Caffe's FilterNet and StateMeetsRule."""
from __future__ import annotations

from caffelike.errors import PrototxtError
from caffelike.proto import caffe_pb2


def make_state(phase: int, level: int = 0, stages=(), base: caffe_pb2.NetState | None = None) -> caffe_pb2.NetState:
    """The net's state as Caffe's Net constructor builds it: the file's own state, with phase and level
    overwritten and the given stages appended."""
    state = caffe_pb2.NetState()
    if base is not None:
        state.CopyFrom(base)
    state.phase = phase
    state.level = level
    state.stage.extend(stages or ())
    return state


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def layer_included(state: caffe_pb2.NetState, layer) -> bool:
    """Included if no include rule is given and no exclude rule matches, or if any include rule matches."""
    if layer.include and layer.exclude:
        raise PrototxtError(f'layer "{layer.name}": specify either include rules or exclude rules, not both')
    if layer.include:
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def filter_net(net: caffe_pb2.NetParameter, state: caffe_pb2.NetState) -> caffe_pb2.NetParameter:
    """A copy of `net` holding only the layers `state` includes."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        if layer_included(state, layer):
            out.layer.add().CopyFrom(layer)
    return out
