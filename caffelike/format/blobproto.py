"""BlobProto, Caffe's serialized array: its shape rules (N-D `shape` or the legacy num/channels/height/width),
reading it into numpy and writing numpy into it.  Two readers live here on purpose: `blob_to_array` is Caffe's
(float32 values, used for weights and mean files), `blobproto_to_array` is pycaffe's `caffe.io` one (float64,
legacy dims first), re-exported by `caffelike.io`.
"""
from __future__ import annotations

import numpy as np

from caffelike.errors import CaffeError, WeightsError, shape_str
from caffelike.proto import caffe_pb2


class BlobShapeError(CaffeError, ValueError):
    """A BlobProto whose values do not fit its shape (a ValueError, as pycaffe's reshape raises)."""


def blob_shape(bp: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """A BlobProto's shape: `shape.dim`, or the legacy num/channels/height/width; with neither, () — a scalar
    (Caffe's Blob::ToProto writes a 0-axis blob, PReLU's shared slope say, with no shape at all)."""
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
    expected = int(np.prod(shape))
    if values.size != expected:
        raise WeightsError(f"{where}: holds {values.size} values but its shape {shape_str(shape)} needs {expected} "
                           "(the file is truncated or corrupt)")
    return values.reshape(shape)


def array_to_blob(array, bp: caffe_pb2.BlobProto | None = None, diff=None) -> caffe_pb2.BlobProto:
    """Fill a BlobProto with `shape` and float `data` (and `diff`), as Caffe's Blob::ToProto writes them."""
    bp = caffe_pb2.BlobProto() if bp is None else bp
    array = np.asarray(array)
    bp.ClearField("shape")
    if array.ndim:  # a scalar gets no shape field at all, as Caffe writes it
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



# ---------------------------------------------------------------------------------- pycaffe's caffe.io names
def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """The data (or diff) of a BlobProto as a float64 array, as pycaffe returns it.  The shape is the legacy
    (num, channels, height, width) when any of those four fields is set, else `shape.dim` (none: a scalar).  A
    count that does not fit raises BlobShapeError, a ValueError as numpy's reshape in pycaffe.  Values stored as
    `double_data`/`double_diff` are read when the float fields are empty (pycaffe ignores them)."""
    values = blob.diff if return_diff else blob.data
    if not len(values):
        values = blob.double_diff if return_diff else blob.double_data
    data = np.array(values, dtype=np.float64)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:  # no shape at all is a scalar, as Caffe writes a 0-axis blob
        shape = tuple(int(d) for d in blob.shape.dim)
    if data.size != int(np.prod(shape)):
        what = "diff" if return_diff else "data"
        hint = " (a BlobProto without shape or num/channels/height/width holds one value)" if not shape else ""
        raise BlobShapeError(f"BlobProto holds {data.size} {what} values but its shape {shape} needs "
                             f"{int(np.prod(shape))}{hint}")
    return data.reshape(shape)


def array_to_blobproto(arr, diff=None) -> caffe_pb2.BlobProto:
    """A BlobProto with `shape.dim` set to the array's shape and its values in `data` (and `diff`)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel().tolist())
    if diff is not None:
        diff = np.asarray(diff)
        if diff.size != arr.size:
            raise CaffeError(f"array_to_blobproto: diff has {diff.size} values, data has {arr.size}")
        blob.diff.extend(diff.astype(np.float64).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """A serialized BlobProtoVector holding one BlobProto per array."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(blobprotovec_str: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    try:
        vec.ParseFromString(blobprotovec_str)
    except Exception as e:  # protobuf's DecodeError
        raise CaffeError(f"the {len(blobprotovec_str)} bytes are not a serialized caffe.BlobProtoVector: {e}") \
            from None
    return [blobproto_to_array(blob) for blob in vec.blobs]
