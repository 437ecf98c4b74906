"""The memory format of 4-D activations: torch's default NCHW, or channels_last (NHWC in memory, same logical
shape).

Why it matters: on CPU, torch's pooling kernels run about 10x faster on channels_last tensors than on NCHW ones
(a (64, 20, 24, 24) max pooling: 0.56 ms against 4.5 ms), and oneDNN's convolutions 1.1-1.5x faster.  oneDNN
(and cuDNN) give a convolution a channels_last output when its input OR its weight is channels_last, and
pooling, ReLU, LRN, Concat, Eltwise keep the format of their input; so it is enough for a Convolution whose input
is not channels_last yet to run with a channels_last version of its weight (a view where the memory order is the
same, else a copy of the weight, far smaller than the activation) and every layer after it follows, with no
activation copied.  The numbers are those of the same kernels on another memory order: equal up to float
rounding in the convolutions (their accumulation order differs), bitwise elsewhere.

The policy (read at every Convolution forward, so it can be switched between passes):
    CAFFELIKE_CHANNELS_LAST=1     on for every device
    CAFFELIKE_CHANNELS_LAST=0     off: every activation stays NCHW (as before)
    unset or "auto"               on for CPU tensors only (not yet measured on a GPU)
`set_channels_last(True | False | None)` overrides the environment in-process (None: back to the variable).

pycaffe never sees the difference: `net.blobs[name].data` of a channels_last blob is a C-contiguous array with
the blob's logical shape (core/blob.py hands out a host copy and writes it back before the next pass, as on CUDA).
"""
from __future__ import annotations

import os

import torch

ENV = "CAFFELIKE_CHANNELS_LAST"
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def _from_environment() -> bool | None:
    value = os.environ.get(ENV, "").strip().lower()
    if value in _OFF:
        return False
    if value in _ON:
        return True
    return None  # "auto" (or unset): decided per device


# One mutable cell, read by Convolution.forward; a plain dict so that torch.compile guards on its value.
_SETTING: dict[str, bool | None] = {"channels_last": _from_environment()}


def set_channels_last(enabled: bool | None) -> None:
    """Force the policy on (True) or off (False) in this process, or return to CAFFELIKE_CHANNELS_LAST (None)."""
    _SETTING["channels_last"] = _from_environment() if enabled is None else bool(enabled)


def channels_last_enabled(device: torch.device | str = "cpu") -> bool:
    """Whether 4-D activations on `device` should be channels_last."""
    setting = _SETTING["channels_last"]
    if setting is None:
        return torch.device(device).type == "cpu"
    return setting


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor laid out channels_last and only that (a tensor with C == 1 or H * W == 1 is both NCHW and
    channels_last in memory; kernels then treat it as NCHW unless its strides say otherwise)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def as_channels_last(t: torch.Tensor) -> torch.Tensor:
    """`t` (4-D) with channels_last strides that the kernels recognise: a view when NCHW and NHWC order the memory
    alike (C == 1, or a 1x1 kernel), a copy otherwise.  Plain differentiable ops; the gradient that comes back
    through the copy may be channels_last (AccumulateGrad, and NetGraph.run_backward, store a parameter's
    gradient in the parameter's own layout)."""
    n, c, h, w = t.shape
    if c == 1 and t.is_contiguous():
        return t.reshape(n, h, w, 1).permute(0, 3, 1, 2)
    if h * w == 1 and t.is_contiguous():
        return t.reshape(n, 1, 1, c).permute(0, 3, 1, 2)
    return t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def conv_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight a 2-D convolution of `x` should use under the policy: channels_last when the policy is on for
    x's device and x is not channels_last already (then the output comes out channels_last); unchanged else, and
    while a graph is being exported."""
    setting = _SETTING["channels_last"]  # (channels_last_enabled, inlined: torch.compile traces this per layer)
    if not setting and (setting is not None or x.device.type != "cpu"):
        return weight
    if x.dim() != 4 or weight.dim() != 4 or is_channels_last(x) or _exporting():
        return weight
    return as_channels_last(weight)


def _exporting() -> bool:
    """An exported graph (torch.export, ONNX, TorchScript) should not carry the weight's relayout as ops of its
    own: the runtime that loads it picks its layouts."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()
