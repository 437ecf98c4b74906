"""What a NetGraph decides at Init for each layer and learnable parameter, and the pieces it builds them with: the
module key a layer is stored under and a top blob's first tensor."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from caffelike.core.memory import allocation_problem
from caffelike.errors import shape_str
from caffelike.layers.base import Layer


@dataclass
class LearnableParam:
    """A parameter the solver updates (an owner, never a sharer), with Caffe's multipliers."""
    layer: str
    index: int
    param: nn.Parameter
    lr_mult: float
    decay_mult: float
    name: str = ""


@dataclass
class LayerPlan:
    """What the net decided about one layer at Init."""
    bottoms: list[str]
    tops: list[str]
    need_backward: bool = False
    bottom_need_backward: list[bool] = field(default_factory=list)
    param_propagate_down: list[bool] = field(default_factory=list)
    loss_weights: list[float] = field(default_factory=list)



def first_tensor(layer: Layer, top: str, shape) -> torch.Tensor:
    """A top blob's first tensor, refusing a negative dimension and naming the layer when memory runs out."""
    shape = tuple(int(d) for d in shape)
    problem = allocation_problem(shape)
    if problem:
        layer.fail(f'top "{top}" of shape {shape_str(shape)} {problem}')
    try:
        return torch.zeros(shape)
    except (RuntimeError, MemoryError) as e:
        layer.fail(f'cannot allocate top "{top}" of shape {shape_str(shape)} ({math.prod(shape) * 4:,} bytes as '
                   f"float32): {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def module_key(name: str, taken: set[str], modules: nn.ModuleDict) -> str:
    """nn.Module names may not contain '.' nor be an attribute of nn.ModuleDict (`double`, `train`, `keys`...);
    any string is a Caffe layer name.  Keep them readable and unique."""
    key = name.replace(".", "_") or "layer"
    if hasattr(modules, key):
        key = f"layer_{key}"
    base, k = key, 1
    while key in taken:
        key, k = f"{base}_{k}", k + 1
    taken.add(key)
    return key
