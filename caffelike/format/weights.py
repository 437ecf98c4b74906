"""Reading and writing .caffemodel weights: Caffe's CopyTrainedLayersFrom and Net::ToProto, and its HDF5 weights
(Net::ToHDF5 and CopyTrainedLayersFromHDF5, pycaffe's save_hdf5/load_hdf5).

Weights are copied by layer name (no type check), blob by blob, accepting legacy 4-D BlobProto shapes wherever
Caffe does.  Files are written atomically: a crash never leaves a half-written .caffemodel behind.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from google.protobuf import message

from caffelike.errors import WeightsError, shape_str
from caffelike.format.blobproto import array_to_blob, blob_shape, blob_to_array, shape_matches
from caffelike.format.files import atomic_write, atomic_write_with
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_caffemodel(path: str) -> caffe_pb2.NetParameter:
    """A binary NetParameter from `path`, upgraded from V0/V1 layers as Caffe does."""
    from caffelike.format.upgrade import upgrade_net

    if not os.path.isfile(path):
        raise WeightsError(f"Could not open weights file {path!r}: no such file")
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(HDF5_SIGNATURE):
        return _read_hdf5_weights(path)
    if not data:
        raise WeightsError(f"weights file {path!r} is empty")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except message.DecodeError as e:
        raise WeightsError(f"weights file {path!r} is not a valid .caffemodel (truncated or corrupt: {e})") from None
    if not net.layer and not net.layers:
        raise WeightsError(f"weights file {path!r} holds no layers: not a .caffemodel")
    upgrade_net(net, path)
    for lp in net.layer:  # validate every blob's size now, so a truncation is reported with its file
        for i, bp in enumerate(lp.blobs):
            blob_to_array(bp, where=f"{path}: layer '{lp.name}' blob {i}")
    return net


def _read_hdf5_weights(path: str) -> caffe_pb2.NetParameter:
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{path!r} is an HDF5 caffemodel; reading it needs the h5py package "
                           "(pip install h5py)") from None
    net = caffe_pb2.NetParameter()
    with h5py.File(path, "r") as f:
        for name, group in _layer_groups(h5py, f["data"]):
            lp = net.layer.add()
            lp.name = name
            for i in range(len(group)):
                if str(i) in group:
                    array_to_blob(np.asarray(group[str(i)]), lp.blobs.add())
    return net


def copy_trained_layers(graph, source: caffe_pb2.NetParameter, where: str = "<weights>") -> None:
    """Copy blobs from `source` into the net's layers of the same name (the first one), like Caffe."""
    targets = {}
    for layer in graph.layer_list:
        targets.setdefault(layer.layer_name, layer)
    for lp in source.layer:
        layer = targets.get(lp.name)
        if layer is None:
            log.info("Ignoring source layer %s", lp.name)
            continue
        if len(layer.blobs) != len(lp.blobs):
            raise WeightsError(f"{where}: Incompatible number of blobs for layer '{lp.name}': the file has "
                               f"{len(lp.blobs)}, the net's {layer.type} layer has {len(layer.blobs)}")
        for i, bp in enumerate(lp.blobs):
            target = layer.blobs[i]
            if not shape_matches(bp, tuple(target.shape)):
                raise WeightsError(
                    f"{where}: Cannot copy param {i} weights from layer '{lp.name}'; shape mismatch. Source param "
                    f"shape is {shape_str(blob_shape(bp))}; target param shape is {shape_str(target.shape)}. To "
                    "learn this layer's parameters from scratch rather than copying from a saved net, rename the "
                    "layer.")
            values = blob_to_array(bp, where=f"{where}: layer '{lp.name}' blob {i}").reshape(tuple(target.shape))
            with torch.no_grad():
                target.copy_(torch.as_tensor(values))  # (np.ascontiguousarray would make a scalar 1-D)


def net_to_proto(graph, write_diff: bool = False) -> caffe_pb2.NetParameter:
    """Caffe's Net::ToProto: the name, then every layer's parameters as the net holds them, with its blobs."""
    out = caffe_pb2.NetParameter()
    out.name = graph.name
    for layer in graph.layer_list:
        lp = out.layer.add()
        lp.CopyFrom(layer.param)
        lp.ClearField("blobs")
        for p in layer.blobs:
            bp = lp.blobs.add()
            if p.dim():  # Blob::ToProto gives a 0-axis blob no shape field at all
                bp.shape.dim.extend(int(d) for d in p.shape)
            values = p.detach().cpu()
            if values.dtype == torch.float64:
                bp.double_data.extend(values.reshape(-1).tolist())
            else:
                bp.data.extend(values.float().reshape(-1).tolist())
            if write_diff and p.grad is not None:
                bp.diff.extend(p.grad.detach().cpu().float().reshape(-1).tolist())
    return out


def save_caffemodel(graph, path: str, write_diff: bool = False) -> None:
    atomic_write(path, net_to_proto(graph, write_diff).SerializeToString())


# ------------------------------------------------------------------------------------------- HDF5 weights
# Caffe's HDF5 layout (Net::ToHDF5 / CopyTrainedLayersFromHDF5): a group "data" with one group per layer name
# holding datasets "0", "1", ... (the layer's blobs in order), and with write_diff a group "diff" laid out alike.
# A layer name with "/" (Inception's "inception_3a/1x1") is a nested group, which the reader walks back.
def _h5py(path: str):
    try:
        import h5py
    except ImportError:
        raise WeightsError(f"{path!r}: HDF5 weights need the h5py package (pip install h5py)") from None
    return h5py


def is_hdf5(path: str) -> bool:
    """True when `path` is an HDF5 file (by its signature, whatever its extension)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
    except (OSError, ValueError):  # ValueError: a NUL byte in the path, which no file can have
        return False


def _owns(graph) -> dict[tuple[int, int], bool]:
    """(id(layer), blob index) -> whether that layer owns the blob (a blob shared by name is the same Parameter
    object in every layer that uses it; its owner is the first)."""
    seen: set[int] = set()
    out = {}
    for layer in graph.layer_list:
        for i, p in enumerate(layer.blobs):
            out[(id(layer), i)] = id(p) not in seen
            seen.add(id(p))
    return out


def _host_array(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return t.numpy() if t.dtype == torch.float64 else t.float().numpy()


def write_hdf5_weights(graph, path: str, write_diff: bool = False) -> None:
    """Caffe's Net::ToHDF5, written atomically: every layer gets its group; a shared blob's data is written once,
    by its owner, its diff (with write_diff) by every layer that uses it."""
    h5py = _h5py(path)
    owns = _owns(graph)

    def fill(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for layer in graph.layer_list:
                groups = [(data, True)] + ([(diff, False)] if diff is not None else [])
                for root, is_data in groups:
                    group = root.require_group(layer.layer_name)
                    for i, p in enumerate(layer.blobs):
                        if is_data and not owns[(id(layer), i)]:
                            continue
                        if str(i) in group:
                            raise WeightsError(f"{path}: two layers are named '{layer.layer_name}'; HDF5 weights "
                                               "are stored by layer name, so their blobs would collide")
                        values = p if is_data else (p.grad if p.grad is not None else torch.zeros_like(p))
                        group.create_dataset(str(i), data=_host_array(values))

    atomic_write_with(path, fill, suffix=".h5")


def _layer_groups(h5py, data) -> list[tuple[str, object]]:
    """(layer name, group) for every group under "data" that holds blobs or nothing at all, by its path."""
    out = []

    def visit(name, item):
        if isinstance(item, h5py.Group):
            members = list(item.values())
            if not members or any(isinstance(m, h5py.Dataset) for m in members):
                out.append((name, item))

    data.visititems(visit)
    return out


def load_hdf5_weights(graph, path: str) -> None:
    """Caffe's CopyTrainedLayersFromHDF5: copy each layer group's datasets into the net's layer of that name (the
    last one, as Caffe's name index keeps it); unknown layers are ignored; a blob missing from the file is an
    error unless the net shares it from another layer; shapes must match exactly."""
    h5py = _h5py(path)
    if not os.path.isfile(path):
        raise WeightsError(f"Could not open weights file {path!r}: no such file")
    targets = {layer.layer_name: layer for layer in graph.layer_list}
    owns = _owns(graph)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path!r} is not a readable HDF5 weights file ({e})") from None
    with f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise WeightsError(f"{path!r} has no 'data' group: not Caffe HDF5 weights (Net.save_hdf5 writes them)")
        for name, group in _layer_groups(h5py, f["data"]):
            layer = targets.get(name)
            if layer is None:
                log.info("Ignoring source layer %s", name)
                continue
            stored = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
            if len(stored) > len(layer.blobs):
                raise WeightsError(f"{path}: Incompatible number of blobs for layer '{name}': the file has "
                                   f"{len(stored)}, the net's {layer.type} layer has {len(layer.blobs)}")
            for i, target in enumerate(layer.blobs):
                if str(i) not in group:
                    if not owns[(id(layer), i)]:
                        continue  # shared in this net: the owner's blob is loaded
                    raise WeightsError(f"{path}: Incompatible number of blobs for layer '{name}': blob {i} of the "
                                       f"net's {layer.type} layer is not in the file (it has {sorted(stored)})")
                values = np.asarray(group[str(i)])
                if tuple(values.shape) != tuple(target.shape):
                    raise WeightsError(
                        f"{path}: Cannot copy param {i} weights from layer '{name}'; shape mismatch. Source param "
                        f"shape is {shape_str(values.shape)}; target param shape is {shape_str(target.shape)}. To "
                        "learn this layer's parameters from scratch rather than copying from a saved net, rename "
                        "the layer.")
                with torch.no_grad():
                    target.copy_(torch.as_tensor(values))
