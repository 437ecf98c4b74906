"""pycaffe's `caffe.Net`, on top of the torch graph.

`Net` IS a `NetGraph` (so a `torch.nn.Module`: `.to()`, `.parameters()`, `.state_dict()` work), with pycaffe's
methods and properties on top.  pycaffe owns the name `forward` (numpy in, numpy out, layer ranges); the torch
way of calling the same graph — tensors in, differentiable tensors out — is `net.run(**tensors)`, or build a
`NetGraph` directly.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from caffelike.core import runtime
from caffelike.core.blob import Blob
from caffelike.errors import CaffeError, shape_str
from caffelike.format.prototxt import read_net
from caffelike.format.weights import (
    copy_trained_layers,
    is_hdf5,
    load_hdf5_weights,
    read_caffemodel,
    save_caffemodel,
    write_hdf5_weights,
)
from caffelike.net.graph import NetGraph
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def _inputs(net) -> dict:
    """top name -> (shape, where it comes from) for the layers without bottoms (data layers, Input)."""
    out = {}
    for layer, plan in zip(net.layer_list, net.plans):
        if plan.bottoms:
            continue
        p = layer.param
        source = next((getattr(p, f).source for f in ("data_param", "image_data_param", "hdf5_data_param",
                                                        "window_data_param") if p.HasField(f)), "")
        where = f"{layer.type} layer '{layer.layer_name}'" + (f" reading {source!r}" if source else "")
        for top in plan.tops:
            out[top] = (tuple(net.blobs[top].tensor.shape), where)
    return out


def _described(shape) -> str:
    if len(shape) == 4:
        return f"{shape_str(shape)} ({shape[2]}x{shape[3]} images)"
    return shape_str(shape)


def _input_difference(net, other, names) -> str:
    """Why two nets' weights differ in shape, when their inputs do: ': its 'data' is ... where ...'."""
    mine, theirs = _inputs(net), _inputs(other)
    parts = []
    for top, (shape, where) in mine.items():
        if top in theirs and theirs[top][0] != shape:
            parts.append(f"{names[0]}'s '{top}' is {_described(shape)}, from {where}, where {names[1]}'s is "
                         f"{_described(theirs[top][0])}, from {theirs[top][1]}")
    return (": " + "; ".join(parts) + " — both must feed inputs of the same size") if parts else ""


class LayerView:
    """pycaffe's view of one layer: `.type`, `.blobs` (Blob objects over its parameters), `.name`."""

    def __init__(self, net: "Net", index: int):
        self._net = net
        self._index = index

    @property
    def module(self):
        return self._net.layer_list[self._index]

    @property
    def type(self) -> str:
        return self.module.type

    @property
    def name(self) -> str:
        return self.module.layer_name

    @property
    def blobs(self) -> list:
        return self._net._param_blobs_of(self._index)

    def __repr__(self) -> str:
        return f"<{self.type} layer {self.name!r}>"


class Net(NetGraph):
    """caffe.Net(network_file, phase, level=0, stages=None, weights=None), or the legacy
    caffe.Net(network_file, pretrained_param_file, phase).  `network_file` may also be a NetParameter.
    `trust_python=True` (or CAFFELIKE_TRUST_MODEL_DIR=1) lets Python layers import modules from the prototxt's
    folder and the working directory, which BVLC Caffe never searched; sys.path/PYTHONPATH needs no consent."""

    def __init__(self, network_file, *args, level: int = 0, stages=None, weights: str | None = None,
                 phase: int | None = None, trust_python: bool = False):
        args = list(args)
        if args and isinstance(args[0], (str, os.PathLike)):  # legacy (file, weights, phase)
            weights = os.fspath(args.pop(0))
            log.warning("DEPRECATION WARNING - deprecated use of Python interface; use "
                        "caffe.Net(network_file, phase, weights=...) instead")
        if args:
            phase = args.pop(0)
        if args:
            raise TypeError(f"Net() got {len(args)} unexpected positional argument(s)")
        if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
            raise TypeError("Net() needs a phase: caffe.TRAIN or caffe.TEST")
        if isinstance(network_file, caffe_pb2.NetParameter):
            param, source = network_file, network_file.name or "<NetParameter>"
        else:
            source = os.fspath(network_file)
            if not os.path.isfile(source):
                raise CaffeError(f"Could not open file {source}")
            param = read_net(source)
        super().__init__(param, phase, level, stages or (), source, trust_python=trust_python)
        if weights is not None:
            self.copy_from(weights)
        self._params_cache = None
        self._mode_seen = None
        self._ensure_device()

    # --------------------------------------------------------------------------------------------------- device
    def _ensure_device(self) -> None:
        """Follow the global mode (caffe.set_mode_gpu/cpu) when it changes, as Caffe nets do at each pass; an
        explicit `net.to(device)` holds until the next set_mode_*/set_device call."""
        if self._mode_seen != runtime.mode_version():
            self._mode_seen = runtime.mode_version()
            want = runtime.current_device()
            if self.device != want:
                self.to(want)

    # ---------------------------------------------------------------------------------------------- properties
    @property
    def params(self) -> "OrderedDict[str, list]":
        if self._params_cache is None:
            self._params_cache = self.param_blobs()
        return self._params_cache

    def _param_blobs_of(self, index: int) -> list:
        from caffelike.core.blob import ParamBlob

        layer = self.layer_list[index]
        return [ParamBlob(f"{layer.layer_name}[{i}]", layer, i, self.sync) for i in range(len(layer.blobs))]

    @property
    def layers(self) -> list[LayerView]:
        return [LayerView(self, i) for i in range(len(self.layer_list))]

    @property
    def layer_dict(self) -> "OrderedDict[str, LayerView]":
        return OrderedDict((v.name, v) for v in self.layers)

    @property
    def _layer_names(self) -> list[str]:
        return [layer.layer_name for layer in self.layer_list]

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def _blobs(self) -> list[Blob]:
        return list(self.blobs.values())

    @property
    def _inputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        names = list(self.blobs)
        return [names.index(n) for n in self.outputs]

    @property
    def top_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((layer.layer_name, list(plan.tops)) for layer, plan in zip(self.layer_list, self.plans))

    @property
    def bottom_names(self) -> "OrderedDict[str, list[str]]":
        return OrderedDict((layer.layer_name, list(plan.bottoms))
                           for layer, plan in zip(self.layer_list, self.plans))

    # --------------------------------------------------------------------------------------------- pycaffe calls
    def _range(self, start, end, default_start: int, default_end: int) -> tuple[int, int]:
        s = default_start if start is None else self.layer_index(start)
        e = default_end if end is None else self.layer_index(end)
        return s, e

    def _set_arrays(self, arrays: dict, attr: str, allowed: list[str], what: str) -> None:
        if set(arrays) != set(allowed):
            raise CaffeError(f"{what} arguments {sorted(arrays)} do not match the net's {what.split()[0]}s "
                             f"{sorted(allowed)}")
        for name, value in arrays.items():
            blob = self.blobs[name]
            value = np.asarray(value)
            target = tuple(blob.shape)
            if value.ndim != len(target) or value.shape[0] != target[0]:
                raise CaffeError(f"{what.split()[0]} blob '{name}' has shape {shape_str(target)} "
                                 f"({len(target)} axes); got an array of shape {shape_str(value.shape)}. "
                                 f"Reshape the blob first: net.blobs['{name}'].reshape(...)")
            try:
                getattr(blob, attr)[...] = value
            except ValueError as e:
                raise CaffeError(f"{what.split()[0]} blob '{name}' has shape {shape_str(target)}; cannot take an "
                                 f"array of shape {shape_str(value.shape)}: {e}") from None

    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Run layers start..end (names; inclusive) and return {blob: data} for the outputs (or the tops of
        `end`) plus `blobs`.  Keyword arguments, if any, must name exactly the net's inputs."""
        self._ensure_device()
        s, e = self._range(start, end, 0, len(self.layer_list) - 1)
        wanted = set(self.top_names[self._layer_names[e]] if end is not None else self.outputs) | set(blobs or [])
        if kwargs:
            self._set_arrays(kwargs, "data", self.inputs, "input blob")
        self.run_forward(s, e)
        return {name: self.blobs[name].data for name in wanted}

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """Run backward from layer `start` down to `end` and return {blob: diff} for the inputs (or the bottoms
        of `end`) plus `diffs`.  Keyword arguments, if any, set the diffs of exactly the net's outputs."""
        self._ensure_device()
        s, e = self._range(start, end, len(self.layer_list) - 1, 0)
        wanted = set(self.bottom_names[self._layer_names[e]] if end is not None else self.inputs) | set(diffs or [])
        if kwargs:
            self._set_arrays(kwargs, "diff", self.outputs, "output diff")
        self.run_backward(s, e)
        return {name: self.blobs[name].diff for name in wanted}

    def set_input_arrays(self, data, labels) -> None:
        """pycaffe's set_input_arrays: hand arrays to the net's first layer, which must be MemoryData."""
        first = self.layer_list[0] if self.layer_list else None
        if first is None or first.type != "MemoryData":
            raise CaffeError("set_input_arrays needs a net whose first layer is MemoryData, got "
                             f"{first.type if first is not None else 'an empty net'}")
        first.reset(data, labels)

    def after_backward(self, callback) -> None:
        """pycaffe's Net.after_backward(nccl): BVLC's layer-wise gradient reduction, asked of a caffe.NCCL.
        caffelike's NCCL reduces the gradients in buckets once backward is done (its on_gradients_ready, which
        solver.add_callback(nccl) calls), so this only tells it the request was made."""
        if not callable(getattr(callback, "net_after_backward", None)):
            raise TypeError(f"after_backward takes a caffe.NCCL, got {type(callback).__name__}")
        callback.net_after_backward(self)

    def run(self, **inputs: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The torch way: tensors in, the net's output tensors out, differentiable end to end."""
        return NetGraph.forward(self, **inputs)

    from caffelike.net.batching import _batch, forward_all, forward_backward_all  # pycaffe attaches these to Net

    def _forward(self, start: int, end: int) -> float:
        return self.run_forward(start, end)

    def _backward(self, start: int, end: int) -> None:
        self.run_backward(start, end)

    # ------------------------------------------------------------------------------------------------ weights
    def copy_from(self, path: str) -> None:
        """Caffe's CopyTrainedLayersFrom: a binary .caffemodel, or HDF5 weights (told by the file's signature)."""
        path = os.fspath(path)
        self.sync.push()
        if is_hdf5(path):
            load_hdf5_weights(self, path)
        else:
            copy_trained_layers(self, read_caffemodel(path), path)

    def save(self, path: str) -> None:
        self.sync.push()
        save_caffemodel(self, os.fspath(path))

    def save_hdf5(self, path: str) -> None:
        """pycaffe's save_hdf5 (Net::ToHDF5): the weights as Caffe's HDF5 layout, group "data" with one group per
        layer holding datasets "0", "1", ...; written atomically.  Needs h5py."""
        self.sync.push()
        write_hdf5_weights(self, os.fspath(path))

    def load_hdf5(self, path: str) -> None:
        """pycaffe's load_hdf5 (CopyTrainedLayersFromHDF5): copy HDF5 weights into the layers of the same name."""
        self.sync.push()
        load_hdf5_weights(self, os.fspath(path))

    def share_with(self, other: "Net", names: tuple[str, str] = ("this net", "the source net")) -> None:
        """Caffe's ShareTrainedLayersWith: this net's layers use `other`'s parameter blobs, by layer name.
        `names` say what the two nets are in an error ("the test net", "the train net")."""
        theirs = {}
        for layer in other.layer_list:
            theirs.setdefault(layer.layer_name, layer)
        for layer in self.layer_list:
            src = theirs.get(layer.layer_name)
            if src is None or not len(src.blobs):
                continue
            if len(src.blobs) != len(layer.blobs):
                raise CaffeError(f"share_with: layer '{layer.layer_name}' has {len(layer.blobs)} blobs here and "
                                 f"{len(src.blobs)} in the source net")
            for i, p in enumerate(src.blobs):
                if tuple(p.shape) != tuple(layer.blobs[i].shape):
                    raise CaffeError(f"layer '{layer.layer_name}' blob {i} has shape {shape_str(layer.blobs[i].shape)} "
                                     f"in {names[0]} and {shape_str(p.shape)} in {names[1]}, so they cannot share "
                                     f"weights{_input_difference(self, other, names)}")
                layer.blobs[i] = p
        for entry in self.learnable:
            entry.param = self.layer_list[self.layer_index(entry.layer)].blobs[entry.index]
        self._params_cache = None
