"""DIGITS' generic (regression) datasets: inputs and label vectors as two LMDBs side by side, built from
.npy/.npz arrays.  The folder, staging and writing are the image-classification datasets' own
(caffelike.digits.dataset); `create_generic_dataset` is the entry point.  From images and a label file instead:
caffelike.digits.generic_images.
"""
from __future__ import annotations

import json
import logging
import os
import random

import numpy as np

from caffelike.data.datum import array_to_datum
from caffelike.data.dbwriter import DatasetError, LmdbWriter
from caffelike.digits.dataset import (
    _check_destination,
    _StagedFolder,
    _write_bytes,
    _write_text,
    round_half_away,
)
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

GENERIC_FORMAT = "digits-generic"


def _load_array(value, what: str, npz_key: str | None = None) -> tuple[np.ndarray, str]:
    """An array given as itself or as a .npy/.npz path (an .npz is read at `npz_key`, or its only array)."""
    if not isinstance(value, (str, os.PathLike)):
        return np.asarray(value), "array"
    path = os.fspath(value)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read {what} as a .npy/.npz array ({e})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            key = npz_key if npz_key in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise DatasetError(f"{path}: holds {', '.join(names) or 'no arrays'}; {what} must be the array "
                                   f"named {npz_key!r} (or the file's only array)")
            return loaded[key], f"{path}:{key}"
    return loaded, path


def _generic_inputs(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]  # N x H x W: one channel
    if arr.ndim != 4 or 0 in arr.shape:
        raise DatasetError(f"{where}: inputs must be N x C x H x W or N x H x W, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise DatasetError(f"{where}: inputs must be numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    return arr


def _generic_labels(arr: np.ndarray, n: int, where: str) -> np.ndarray:
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or not arr.shape[1]:
        raise DatasetError(f"{where}: labels must be an N x K array of numbers, got shape {arr.shape} "
                           f"({arr.dtype})")
    if arr.shape[0] != n:
        raise DatasetError(f"{where}: {arr.shape[0]} label rows for {n} inputs")
    return arr.astype(np.float32)


def split_rows(n: int, val_percent: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of n rows: one seeded shuffle, the first round(n * val_percent / 100)
    (DIGITS' rounding, at least one when asked for and n > 1) for validation, the rest for training."""
    if not 0 <= val_percent < 100:
        raise DatasetError(f"the validation percentage must be 0 to under 100, got {val_percent}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = round_half_away(n * val_percent / 100)
    if val_percent and not n_val and n > 1:
        n_val = 1
    if n_val >= n:
        raise DatasetError(f"{n} rows leave no training data with {val_percent}% for validation")
    idx = np.asarray(order, dtype=np.int64)
    return idx[n_val:], idx[:n_val]


def create_generic_dataset(out: str, inputs, labels=None, *, val_inputs=None, val_labels=None,
                           val_percent: float = 25, seed: int = 0, overwrite: bool = False,
                           progress=None) -> dict:
    """Build a DIGITS "generic" (regression) dataset folder at `out` and return its summary (also saved as
    dataset.json, format "digits-generic"): train_db/ and val_db/ (the inputs: uint8 Datums for uint8 arrays,
    float_data Datums otherwise, C x H x W), train_labels_db/ and val_labels_db/ (the label vectors as float
    Datums K x 1 x 1, record i beside input record i, keys '%08d'), and mean.binaryproto (the training inputs'
    float mean, 1 x C x H x W, unrounded and in the arrays' channel order).

    inputs: an N x C x H x W or N x H x W array, or a .npy/.npz path (an .npz read at 'inputs', and its
        'labels', 'val_inputs', 'val_labels' used where those are not given).  labels: N x K (or N) numbers.
    val_inputs/val_labels: a validation set; without one, `val_percent` of the rows (shuffled with `seed`)."""

    npz = None
    if isinstance(inputs, (str, os.PathLike)) and os.fspath(inputs).endswith(".npz"):
        npz = os.fspath(inputs)
    x, x_where = _load_array(inputs, "the inputs", "inputs")
    if labels is None:
        if npz is None:
            raise DatasetError("a generic dataset needs labels (an N x K array or .npy file)")
        labels = npz
    y, y_where = _load_array(labels, "the labels", "labels")
    if npz is not None and val_inputs is None:
        with np.load(npz, allow_pickle=False) as f:
            if "val_inputs" in f.files:
                val_inputs, val_labels = npz, val_labels if val_labels is not None else npz
    x = _generic_inputs(x, x_where)
    y = _generic_labels(y, len(x), y_where)
    if val_inputs is not None:
        if val_labels is None:
            raise DatasetError("val_inputs need val_labels")
        vx, vx_where = _load_array(val_inputs, "the validation inputs", "val_inputs")
        vy, vy_where = _load_array(val_labels, "the validation labels", "val_labels")
        vx = _generic_inputs(vx, vx_where)
        vy = _generic_labels(vy, len(vx), vy_where)
        if vx.shape[1:] != x.shape[1:] or vy.shape[1] != y.shape[1]:
            raise DatasetError(f"validation inputs {vx.shape[1:]} / labels {vy.shape[1:]} do not match the "
                               f"training ones {x.shape[1:]} / {y.shape[1:]}")
        if vx.dtype != x.dtype:
            vx = vx.astype(np.float32)
            x = x.astype(np.float32)
        splits = {"train": (x, y), "val": (vx, vy)}
        val_percent = None
    else:
        train_idx, val_idx = split_rows(len(x), val_percent, seed)
        splits = {"train": (x[train_idx], y[train_idx])}
        if len(val_idx):
            splits["val"] = (x[val_idx], y[val_idx])
    out = os.path.abspath(os.fspath(out))
    _check_destination(out, overwrite)
    channels, height, width = (int(d) for d in x.shape[1:])
    summary = {
        "format": GENERIC_FORMAT,
        "created_by": "caffelike",
        "source": {"inputs": x_where, "labels": y_where},
        "generic": True,
        "channels": channels, "height": height, "width": width,
        "input_dtype": "uint8" if x.dtype == np.uint8 else "float32",
        "label_dim": int(y.shape[1]), "backend": "lmdb",
        "val_percent": val_percent, "seed": seed,
        "counts": {s: len(v[0]) for s, v in splits.items()},
        "files": {"mean": "mean.binaryproto", **{f"{s}_db": f"{s}_db" for s in splits},
                  **{f"{s}_labels_db": f"{s}_labels_db" for s in splits}},
    }
    total, written = sum(len(v[0]) for v in splits.values()), [0]
    with _StagedFolder(out, overwrite) as tmp:
        for split, (xs, ys) in splits.items():
            for kind, rows in (("db", xs), ("labels_db", ys.reshape(len(ys), -1, 1, 1))):
                with LmdbWriter(os.path.join(tmp, f"{split}_{kind}")) as db:
                    for i, row in enumerate(rows):
                        db.put(f"{i:08d}".encode(), array_to_datum(row, 0))
                        if kind == "db":
                            written[0] += 1
                            if progress is not None:
                                progress(written[0], total)
                log.info("%s_%s: %d records", split, kind, db.count)
        mean = splits["train"][0].astype(np.float64).mean(axis=0)
        blob = caffe_pb2.BlobProto(num=1, channels=channels, height=height, width=width)
        blob.data.extend(mean.astype(np.float32).ravel().tolist())
        _write_bytes(os.path.join(tmp, "mean.binaryproto"), blob.SerializeToString())
        _write_text(os.path.join(tmp, "dataset.json"), json.dumps(summary, indent=2) + "\n")
    log.info("Generic dataset written to %s", out)
    return dict(summary, path=out)
