"""pycaffe's Blob: a named array with `data` and `diff`, seen from Python as writable numpy arrays.

On CPU the numpy arrays share memory with the torch tensors, so `blob.data[...] = x` writes straight into the
net.  On CUDA a host copy is handed out instead and remembered; the net copies every such host array back to the
device before its next forward, backward or update — Caffe's synced-memory behaviour, without copying blobs nobody
touched.  A channels_last CPU tensor (core/layout.py) is treated the same way: pycaffe code expects a C-ordered
array (`data.reshape(-1)` a view, `data.shape = ...` allowed), so it gets a C-ordered copy, written back before the
next pass.  The write-back goes through `.data`, as Caffe's backward reads whatever its blobs hold: a top that
autograd saved for the backward pass takes the user's values without tripping autograd's in-place check.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from caffelike.core.layout import is_channels_last


class HostSync:
    """The blobs whose host copies were handed out since the last push to the device (one per net)."""

    def __init__(self):
        self.pending: dict[int, "Blob"] = {}

    def push(self) -> None:
        for blob in self.pending.values():
            blob._push_host()
        self.pending.clear()


class LegacyShape:
    """pycaffe's num/channels/height/width (Caffe's LegacyShape): 1 for a missing axis, an error past 4 axes."""

    def _legacy(self, index: int) -> int:
        shape = list(self.shape)
        if len(shape) > 4:
            raise ValueError(f"blob {getattr(self, 'name', '')!r} has {len(shape)} axes; num/channels/height/width "
                             "need at most 4")
        return shape[index] if index < len(shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


def _read_only(array: np.ndarray) -> np.ndarray:
    """A float32 copy of a bfloat16 blob (from a bf16 autocast pass; numpy has no bfloat16), locked so that a
    write, which could not reach the blob, fails instead of vanishing."""
    array.flags.writeable = False
    return array


class Blob(LegacyShape):
    """An activation blob.  `tensor` is the latest value (it may carry autograd history); `diff_tensor` the
    gradient Caffe keeps beside it."""

    def __init__(self, name: str, tensor: torch.Tensor, sync: HostSync | None = None):
        self.name = name
        self._tensor = tensor
        self._diff: torch.Tensor | None = None
        self._sync = sync if sync is not None else HostSync()
        self._host_data: np.ndarray | None = None
        self._host_diff: np.ndarray | None = None

    # ------------------------------------------------------------------------------------------------ tensor access
    @property
    def tensor(self) -> torch.Tensor:
        return self._tensor

    def set_tensor(self, t: torch.Tensor) -> None:
        if self._diff is not None and tuple(self._diff.shape) != tuple(t.shape):
            self._diff = None
        self._tensor = t
        self._host_data = None

    @property
    def diff_tensor(self) -> torch.Tensor:
        t = self._tensor
        if self._diff is None or self._diff.device != t.device or self._diff.dtype != t.dtype:
            self._diff = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        return self._diff

    def set_diff(self, d: torch.Tensor) -> None:
        self._diff = d
        self._host_diff = None

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Move or convert the tensors (what nn.Module.to/double/cuda do to parameters)."""
        self.set_tensor(fn(self._tensor.detach()))
        if self._diff is not None:
            self._diff = fn(self._diff)

    # ------------------------------------------------------------------------------------------------- pycaffe API
    @property
    def data(self) -> np.ndarray:
        t = self.tensor.detach()
        if t.dtype == torch.bfloat16:
            return _read_only(t.float().cpu().numpy())
        if t.device.type == "cpu" and not is_channels_last(t):
            return t.numpy()
        if self._host_data is None:
            self._host_data = t.to("cpu", memory_format=torch.contiguous_format).numpy()
            self._sync.pending[id(self)] = self
        return self._host_data.view()  # a new array object each time, as t.numpy() gives: `.shape = ` stays local

    @property
    def diff(self) -> np.ndarray:
        d = self.diff_tensor
        if d.dtype == torch.bfloat16:
            return _read_only(d.detach().float().cpu().numpy())
        if d.device.type == "cpu" and not is_channels_last(d):
            return d.detach().numpy()
        if self._host_diff is None:
            self._host_diff = d.detach().to("cpu", memory_format=torch.contiguous_format).numpy()
            self._sync.pending[id(self)] = self
        return self._host_diff.view()  # a new array object each time, as t.numpy() gives: `.shape = ` stays local

    def _push_host(self) -> None:
        if self._host_data is not None:
            with torch.no_grad():  # (through .data: see the module docstring)
                self.tensor.data.copy_(torch.from_numpy(self._host_data))
            self._host_data = None
        if self._host_diff is not None:
            with torch.no_grad():
                self.diff_tensor.copy_(torch.from_numpy(self._host_diff))
            self._host_diff = None

    @property
    def shape(self) -> list[int]:
        return list(self.tensor.shape)

    @property
    def count(self) -> int:
        return int(self.tensor.numel())

    def reshape(self, *dims: int) -> None:
        """Give the blob a new shape (contents become zeros, as in a fresh Caffe allocation)."""
        dims = tuple(int(d) for d in dims)
        if any(d < 0 for d in dims):
            raise ValueError(f"blob {self.name!r}: negative dimension in {dims}")
        t = self.tensor
        self.set_tensor(torch.zeros(dims, dtype=t.dtype, device=t.device))
        self._diff = None

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self.shape})"


class ParamBlob(Blob):
    """A learnable blob: `data` is the nn.Parameter itself and `diff` its `.grad`, which Caffe accumulates."""

    def __init__(self, name: str, layer: nn.Module, index: int, sync: HostSync | None = None):
        self._layer = layer
        self._index = index
        super().__init__(name, layer.blobs[index], sync)

    @property
    def param(self) -> nn.Parameter:
        return self._layer.blobs[self._index]

    @property
    def tensor(self) -> torch.Tensor:
        return self.param

    def set_tensor(self, t: torch.Tensor) -> None:
        with torch.no_grad():
            self.param.data = t.detach()
        self.param.grad = None
        self._host_data = None

    @property
    def diff_tensor(self) -> torch.Tensor:
        p = self.param
        if p.grad is None or p.grad.shape != p.shape:
            p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format).detach()
        return p.grad

    def set_diff(self, d: torch.Tensor) -> None:
        self.param.grad = d
        self._host_diff = None

    def apply(self, fn) -> None:  # the Parameter moves with its module
        self._host_data = self._host_diff = None

    def reshape(self, *dims: int) -> None:
        p = self.param
        self.set_tensor(torch.zeros(tuple(int(d) for d in dims), dtype=p.dtype, device=p.device))
