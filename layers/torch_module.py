"""Layers that run a user's `torch.nn.Module` inside a Caffe net: TorchModule (the model) and TorchLoss (its loss).

They are how a DIGITS-style model file (`caffelike.digits.torch_model`) is trained by the ordinary Solver: the
module's parameters are the layer's learnable blobs, so the update rules, lr policies, weight decay, clipping,
snapshots and test nets treat them exactly as a prototxt's parameters.

A net names the module by a key in `python_param.param_str` that `bind()` returned in this process; a prototxt
read from a file can therefore never make one of these layers run code (an unbound key is an error).  The same
bound object is used by every net built with the key (the solver's train and test nets share the module; the
layer puts it in train mode in the TRAIN phase and eval mode in TEST before each forward).
"""
from __future__ import annotations

import itertools
import weakref

import torch
from caffelike.layers.base import Layer, register, shape_str
from caffelike.proto import caffe_pb2

_BOUND: weakref.WeakValueDictionary[str, object] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


def bind(obj, name: str = "module") -> str:
    """Make `obj` (an nn.Module for TorchModule, a LossSpec for TorchLoss) available to nets under a fresh key,
    for as long as something else keeps it alive; returns the key to put in python_param.param_str."""
    key = f"{name}#{next(_KEYS)}"
    _BOUND[key] = obj
    return key


def _bound(layer: Layer, kind: type):
    key = layer.param.python_param.param_str
    obj = _BOUND.get(key)
    if obj is None:
        layer.fail(f"python_param.param_str {key!r} names no bound {kind.__name__} (this layer type runs only "
                   "objects handed to caffelike.layers.torch_module.bind in this process, never a prototxt's)")
    if not isinstance(obj, kind):
        layer.fail(f"key {key!r} is bound to a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def output_shape(module: torch.nn.Module, input_shape) -> tuple[int, ...]:
    """The shape of `module`'s output for an input of `input_shape`, computed on meta tensors (nothing is run
    on real data, no running statistics move).  A module that cannot run on meta tensors (it reads values)
    is run once on zeros, on a copy in eval mode.  Raises what the module raises."""
    swapped = {n: torch.empty_like(t, device="meta") for n, t in
               itertools.chain(module.named_parameters(), module.named_buffers())}
    x = torch.empty(tuple(input_shape), device="meta")
    try:
        with torch.no_grad():
            out = torch.func.functional_call(module, swapped, (x,))
    except (NotImplementedError, RuntimeError):
        import copy

        probe = copy.deepcopy(module).eval()
        device = next(itertools.chain(probe.parameters(), probe.buffers()), torch.zeros(0)).device
        with torch.no_grad():
            out = probe(torch.zeros(tuple(input_shape), device=device))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the module returned a {type(out).__name__}, not a tensor")
    return tuple(out.shape)


@register("TorchModule")
class TorchModule(Layer):
    """y = module(x) for a bound `torch.nn.Module` (caffelike's extension; see caffelike.digits.torch_model).

    bottom: 1 blob, the module's input.  top: 1 blob, its output (one tensor).  python_param.param_str: the
    key from `bind(module)`.  The module's parameters are this layer's blobs, in `named_parameters()` order;
    `param { lr_mult decay_mult }` apply to them by position.  Buffers (BatchNorm statistics) stay the
    module's own: a .caffemodel does not hold them, a state_dict snapshot does.
    """
    exact_bottoms = exact_tops = 1

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.module = _bound(self, torch.nn.Module)
        self.blobs = torch.nn.ParameterList(list(self.module.parameters()))
        self.blob_names = [n for n, _ in self.module.named_parameters()]

    def infer_top_shapes(self, bottom_shapes):
        try:
            return [output_shape(self.module, bottom_shapes[0])]
        except Exception as e:
            self.fail(f"the module cannot run on a bottom of shape {shape_str(bottom_shapes[0])}: "
                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def forward(self, x):
        training = self.phase == caffe_pb2.TRAIN
        if self.module.training != training:
            self.module.train(training)
        y = self.module(x)
        if not isinstance(y, torch.Tensor):
            self.fail(f"the module returned a {type(y).__name__}; TorchModule needs one tensor")
        return y


class LossSpec:
    """What TorchLoss computes: `loss(output, target)` with target = `label_hook(input, label)` when a hook is
    given, else the label (as int64 class indices when `class_labels`)."""

    def __init__(self, loss, label_hook=None, class_labels: bool = True):
        self.loss = loss
        self.label_hook = label_hook
        self.class_labels = class_labels


@register("TorchLoss")
class TorchLoss(Layer):
    """L = loss(output, target), a bound LossSpec's callable (caffelike's extension; see
    caffelike.digits.torch_model).  target = label_hook(input, label) when the spec has a hook (bottom 2 is
    then the net's input), else the label, cast to int64 class indices for classification.

    bottom 0: the model's output.  bottom 1: the label.  bottom 2 (with a label_hook): the input.  top: the
    0-axis loss (a default loss_weight of 1, like Caffe's loss layers).  python_param.param_str: the key from
    `bind(spec)`.  No gradient flows to the label or the input.
    """
    min_bottoms = 2
    max_bottoms = 3
    exact_tops = 1
    is_loss = True
    no_gradient_to = {1: "the label", 2: "the input"}

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.spec = _bound(self, LossSpec)
        if isinstance(self.spec.loss, torch.nn.Module):
            self.loss_module = self.spec.loss  # follows net.to(device) and double()

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index == 0

    def infer_top_shapes(self, bottom_shapes):
        return [()]

    def forward(self, output, label, x=None):
        if self.spec.label_hook is not None:
            if x is None:
                self.fail("has a label_hook but no bottom 2 (the input) to give it")
            target = self.spec.label_hook(x.detach(), label.detach())
        elif self.spec.class_labels:
            target = label.detach().long()
        else:
            target = label.detach()
        loss = self.spec.loss(output, target)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            what = type(loss).__name__ if not isinstance(loss, torch.Tensor) else f"shape {shape_str(loss.shape)}"
            self.fail(f"the loss returned {what}; it must return one number (a reduced loss)")
        return loss.reshape(())
