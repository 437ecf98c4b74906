"""Reading and writing .caffemodel weights: Caffe's CopyTrainedLayersFrom and Net::ToProto.

Weights are copied by layer name (no type check), blob by blob, accepting legacy 4-D BlobProto shapes wherever
Caffe does.  Files are written atomically: a crash never leaves a half-written .caffemodel behind.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import torch
from google.protobuf import message

from caffelike.errors import WeightsError
from caffelike.layers.base import shape_str
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def blob_shape(bp: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """A BlobProto's shape: `shape.dim`, or the legacy num/channels/height/width."""
    if bp.HasField("shape"):
        return tuple(int(d) for d in bp.shape.dim)
    if any(bp.HasField(f) for f in ("num", "channels", "height", "width")):
        return (bp.num, bp.channels, bp.height, bp.width)
    return ()


def blob_to_array(bp: caffe_pb2.BlobProto, diff: bool = False, where: str = "blob") -> np.ndarray:
    """The values of a BlobProto as a numpy array of its shape (float64 when stored as double)."""
    shape = blob_shape(bp)
    if diff:
        values = np.asarray(bp.double_diff if len(bp.double_diff) else bp.diff)
    else:
        values = np.asarray(bp.double_data if len(bp.double_data) else bp.data)
    values = values.astype(np.float64 if values.dtype == np.float64 else np.float32, copy=False)
    expected = int(np.prod(shape)) if shape else values.size
    if values.size != expected:
        raise WeightsError(f"{where}: holds {values.size} values but its shape {shape_str(shape)} needs {expected} "
                           "(the file is truncated or corrupt)")
    return values.reshape(shape) if shape else values


def array_to_blob(array, bp: caffe_pb2.BlobProto | None = None, diff=None) -> caffe_pb2.BlobProto:
    """Fill a BlobProto with `shape` and float `data` (and `diff`), as Caffe's Blob::ToProto writes them."""
    bp = caffe_pb2.BlobProto() if bp is None else bp
    array = np.asarray(array)
    bp.ClearField("shape")
    bp.shape.dim.extend(int(d) for d in array.shape)
    bp.ClearField("data")
    bp.data.extend(array.astype(np.float32).ravel().tolist())
    if diff is not None:
        bp.ClearField("diff")
        bp.diff.extend(np.asarray(diff, np.float32).ravel().tolist())
    return bp


def shape_matches(bp: caffe_pb2.BlobProto, target: tuple[int, ...]) -> bool:
    """Caffe's Blob::ShapeEquals: exact N-D shape, or legacy 4-D dims matching the target's trailing axes."""
    if bp.HasField("shape") or not any(bp.HasField(f) for f in ("num", "channels", "height", "width")):
        return blob_shape(bp) == tuple(target)
    if len(target) > 4:
        return False
    padded = (1,) * (4 - len(target)) + tuple(target)
    return (bp.num, bp.channels, bp.height, bp.width) == padded


def read_caffemodel(path: str) -> caffe_pb2.NetParameter:
    """A binary NetParameter from `path`, upgraded from V0/V1 layers as Caffe does."""
    from caffelike.upgrade import upgrade_net

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
        data = f["data"]
        for name in data:
            lp = net.layer.add()
            lp.name = name
            group = data[name]
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
                target.copy_(torch.from_numpy(np.ascontiguousarray(values)))


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
            bp.shape.dim.extend(int(d) for d in p.shape)
            values = p.detach().cpu()
            if values.dtype == torch.float64:
                bp.double_data.extend(values.reshape(-1).tolist())
            else:
                bp.data.extend(values.float().reshape(-1).tolist())
            if write_diff and p.grad is not None:
                bp.diff.extend(p.grad.detach().cpu().float().reshape(-1).tolist())
    return out


def atomic_write(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_caffemodel(graph, path: str, write_diff: bool = False) -> None:
    atomic_write(path, net_to_proto(graph, write_diff).SerializeToString())
