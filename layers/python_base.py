"""What a `type: "Python"` layer's user code sees: pycaffe's `caffe.Layer` base class, Blob proxies with numpy
`data`/`diff`, and `BlobVec.add_blob` for learnable blobs.

User files written for pycaffe (`import caffe`, `class MyLayer(caffe.Layer)` with setup/reshape/forward/
backward over `bottom[i].data`, `top[i].diff`, ...) run unchanged: `caffe` resolves to caffelike when no other
`caffe` is importable (see `alias_caffe`).
"""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import torch
from torch import nn

from caffelike.core.blob import LegacyShape


class HostBlob(LegacyShape):
    """A bottom or top as pycaffe shows it to a Python layer: numpy `data` and `diff` on the host."""

    def __init__(self, shape=(), data: np.ndarray | None = None, diff: np.ndarray | None = None):
        self._data = np.zeros(tuple(shape), np.float32) if data is None else data
        self._diff = diff

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None or self._diff.shape != self._data.shape:
            self._diff = np.zeros_like(self._data)
        return self._diff

    @property
    def shape(self) -> list[int]:
        return list(self._data.shape)

    @property
    def count(self) -> int:
        return int(self._data.size)

    def reshape(self, *dims: int) -> None:
        dims = tuple(int(d) for d in dims)
        if dims != self._data.shape:
            self._data = np.zeros(dims, self._data.dtype)
            self._diff = None


class BlobVec(list):
    """`layer.blobs`: the learnable blobs of a Python layer.  `add_blob(*shape)` appends a zero-filled blob that
    the solver trains, caffemodels save and load by layer name, and share_with shares."""

    def __init__(self, owner=None):
        super().__init__()
        self._owner = owner  # the torch-side PythonLayer, once the user object is attached to one

    def add_blob(self, *shape: int) -> None:
        if self._owner is None:
            raise RuntimeError("add_blob can only be called on a layer built by a net (in setup)")
        self._owner.new_param_blob(tuple(int(d) for d in shape))


class Layer:
    """pycaffe's caffe.Layer: subclass it and define setup, reshape, forward and backward.

    Before `setup(bottom, top)` the net sets `self.param_str` (python_param.param_str) and `self.phase`
    (caffe.TRAIN or caffe.TEST).  `reshape` runs before every `forward`; `backward(top, propagate_down,
    bottom)` runs only when the net needs it.  `self.blobs.add_blob(*shape)` adds a learnable blob.
    """

    def __init__(self, param=None):
        self.param_str = ""
        self.phase = 1
        self.blobs = BlobVec()
        self.type = "Python"

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} does not define forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        pass


class TorchLayer(nn.Module):
    """A Python layer written for torch (caffelike's extension): `forward(*bottoms)` takes and returns device
    tensors and its backward comes from autograd, so nothing is copied to the host.  It is used from the same
    prototxt syntax (`type: "Python" python_param { module layer param_str }`).

    Override `setup(self, bottom_shapes)` to create learnable blobs with `self.add_blob(shape, init)` (they are
    trained, saved and shared like any layer's blobs), and `forward(self, *bottoms)`; `self.param_str` and
    `self.phase` are set before setup.  `reshape` is not needed: top shapes follow from forward.
    """

    def __init__(self):
        super().__init__()
        self.param_str = ""
        self.phase = 1
        self.blobs = nn.ParameterList()

    def setup(self, bottom_shapes) -> None:
        pass

    def add_blob(self, shape, init: float | torch.Tensor = 0.0) -> nn.Parameter:
        data = init.detach().clone().float() if isinstance(init, torch.Tensor) else torch.full(tuple(shape), init)
        p = nn.Parameter(data.reshape(tuple(shape)))
        self.blobs.append(p)
        return p

    def forward(self, *bottoms):
        raise NotImplementedError(f"{type(self).__name__} does not define forward(*bottoms)")


def alias_caffe() -> None:
    """Make `import caffe` give caffelike when no other `caffe` package is importable, so pycaffe layer files
    run unchanged.  A real pycaffe, if installed, is left alone."""
    if "caffe" in sys.modules:
        return
    if importlib.util.find_spec("caffe") is not None:
        return
    sys.modules["caffe"] = sys.modules["caffelike"]  # loaded already: it is this module's parent package
