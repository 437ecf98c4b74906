"""Reading and writing .caffemodel weights: Caffe's CopyTrainedLayersFrom and Net::ToProto.

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
from caffelike.format.files import atomic_write
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


def save_caffemodel(graph, path: str, write_diff: bool = False) -> None:
    atomic_write(path, net_to_proto(graph, write_diff).SerializeToString())
