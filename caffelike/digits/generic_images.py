"""DIGITS' generic (regression) datasets made from images and a label file: each line of the file names an image
and its label values.  The images go through the image-classification datasets' own loading, resizing and
Datum encoding (caffelike.digits.dataset); the label vectors, keys, folder layout and dataset.json are the array
path's (caffelike.digits.generic_dataset).  `create_generic_image_dataset` is the entry point.

The label file (DIGITS has no fixed text format for regression labels; this is caffelike's):
- text (any name but *.csv): `path v1 v2 ...` separated by whitespace; blank lines and lines starting with '#'
  are skipped; the path holds no whitespace (use CSV for such paths);
- CSV (*.csv): `path,v1,v2,...` with CSV quoting; a first row whose values are all non-numbers is a header,
  its names kept as dataset.json's label_names;
- every entry has as many values as the first; relative paths are taken from `root`, else from the label
  file's own folder.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from typing import NamedTuple

import numpy as np

from caffelike.data.datum import array_to_datum
from caffelike.data.dbwriter import DatasetError, LmdbWriter
from caffelike.digits.dataset import (
    ENCODINGS,
    IMAGE_TYPES,
    RESIZE_MODES,
    _check_destination,
    _datum,
    _StagedFolder,
    _write_bytes,
    _write_text,
    mean_blob,
    parse_size,
    resize_image,
)
from caffelike.digits.generic_dataset import GENERIC_FORMAT, split_rows
from caffelike.digits.sources import load_image

log = logging.getLogger("caffelike")


class Entry(NamedTuple):
    """One image of a label file: where it was listed (`file:line`), its resolved path and its label values."""

    where: str
    path: str
    values: tuple[float, ...]


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: label value {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: label value {text!r} is not a finite number")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _rows(path: str, text: str):
    """(line number, fields) of each entry line of a label file, in the file's format."""
    if path.lower().endswith(".csv"):
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            for row in reader:
                fields = [f.strip() for f in row]
                if any(fields):
                    yield reader.line_num, fields
        except csv.Error as e:
            raise DatasetError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None
        return
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped.split()


def read_label_file(path: str, root: str | None = None, label_dim: int | None = None,
                    like: str | None = None) -> tuple[list[Entry], list[str] | None]:
    """The entries of a label file and the names its CSV header gives the values (None without one).  Every
    entry must have `label_dim` values (`like` names where that count comes from), else as many as the first.
    Errors name the file and line."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except OSError as e:
        raise DatasetError(f"cannot read the label file {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from None
    base = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(path)))
    entries, names, first = [], None, like
    for number, fields in _rows(path, text):
        where = f"{path}:{number}"
        image, values = fields[0], fields[1:]
        if not entries and names is None and path.lower().endswith(".csv") and values \
                and not any(_is_number(v) for v in values):
            names, first = values, f"the header ({where})"
            if label_dim is not None and len(names) != label_dim:
                raise DatasetError(f"{where}: the header names {len(names)} label values, {like} has {label_dim}")
            label_dim = len(names)
            continue
        if not image:
            raise DatasetError(f"{where}: no image path before the label values")
        if not values:
            raise DatasetError(f"{where}: the image path {image!r} has no label values after it")
        if label_dim is None:
            label_dim, first = len(values), f"the first entry ({where})"
        elif len(values) != label_dim:
            raise DatasetError(f"{where}: {len(values)} label values, {first} has {label_dim}")
        entries.append(Entry(where, os.path.join(base, image), tuple(_number(v, where) for v in values)))
    if not entries:
        raise DatasetError(f"{path}: no entries (each line: an image path, then its label values)")
    for entry in entries:  # before any image is decoded: a typo in the list costs no time
        if not os.path.isfile(entry.path):
            what = "is not a file" if os.path.exists(entry.path) else "not found"
            raise DatasetError(f"{entry.where}: image {entry.path!r} {what}")
    return entries, names


def _image(entry: Entry):
    try:
        return load_image(entry.path)
    except DatasetError as e:
        raise DatasetError(f"{entry.where}: {e}") from None


def create_generic_image_dataset(out: str, label_file: str, *, root: str | None = None,
                                 val_label_file: str | None = None, size=None, image_type: str | None = None,
                                 resize_mode: str = "squash", encoding: str = "png", val_percent: float = 25,
                                 seed: int = 0, overwrite: bool = False, progress=None) -> dict:
    """Build a DIGITS generic dataset folder at `out` from the images a label file lists and their label
    vectors; returns its summary (also dataset.json, format "digits-generic").

    train_db/val_db hold the images as the classification datasets store them (L or RGB, resized by
    `resize_mode`, PNG/JPEG-encoded or raw Datums, colour in Caffe's BGR order), train_labels_db/val_labels_db
    the label vectors (float Datums K x 1 x 1, key '%08d' beside the image's), mean.binaryproto the training
    images' mean rounded to uint8 (BGR), as DIGITS' create_generic_db.

    root: the folder relative image paths start from (default: the label file's folder).  val_label_file: a
    validation label file; without one `val_percent` of the entries (seeded shuffle) are held out.
    size: 'HxW' or (height, width); by default the first listed image's.  image_type: grayscale or color
    (default color)."""
    if image_type is None:
        image_type = "color"
    if str(image_type).lower() not in IMAGE_TYPES:
        raise DatasetError(f"unknown image type {image_type!r}; choose grayscale or color")
    channels = IMAGE_TYPES[str(image_type).lower()]
    encoding = {"jpeg": "jpg"}.get(str(encoding).lower(), str(encoding).lower())
    if encoding not in ENCODINGS:
        raise DatasetError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if resize_mode not in RESIZE_MODES:
        raise DatasetError(f"unknown resize mode {resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    label_file = os.path.abspath(os.fspath(label_file))
    root = os.path.abspath(os.fspath(root)) if root is not None else None
    if root is not None and not os.path.isdir(root):
        raise DatasetError(f"image folder {root!r} does not exist or is not a folder")
    entries, names = read_label_file(label_file, root)
    label_dim = len(entries[0].values)
    if val_label_file is not None:
        val_label_file = os.path.abspath(os.fspath(val_label_file))
        val_entries, _ = read_label_file(val_label_file, root, label_dim, f"{label_file}")
        splits = {"train": entries, "val": val_entries}
        val_percent = None
    else:
        train_idx, val_idx = split_rows(len(entries), val_percent, seed)
        splits = {"train": [entries[i] for i in train_idx]}
        if len(val_idx):
            splits["val"] = [entries[i] for i in val_idx]
    if size is None:
        width, height = _image(entries[0]).size
    else:
        height, width = parse_size(size)
    out = os.path.abspath(os.fspath(out))
    _check_destination(out, overwrite)
    summary = {
        "format": GENERIC_FORMAT,
        "created_by": "caffelike",
        "source": {"type": "label-file", "labels": label_file, "folder": root, "val_labels": val_label_file},
        "generic": True,
        "image_type": "grayscale" if channels == 1 else "color",
        "channels": channels, "height": height, "width": width,
        "resize_mode": resize_mode, "encoding": encoding,
        "input_dtype": "uint8", "label_dim": label_dim, "label_names": names, "backend": "lmdb",
        "val_percent": val_percent, "seed": seed,
        "counts": {s: len(v) for s, v in splits.items()},
        "files": {"mean": "mean.binaryproto", **{f"{s}_db": f"{s}_db" for s in splits},
                  **{f"{s}_labels_db": f"{s}_labels_db" for s in splits}},
    }
    mode = "L" if channels == 1 else "RGB"
    noise = np.random.RandomState(seed)  # the 'fill' modes' padding, as the classification datasets draw it
    total, written = sum(len(v) for v in splits.values()), 0
    image_sum = np.zeros((height, width) if channels == 1 else (height, width, 3), np.float64)
    with _StagedFolder(out, overwrite) as tmp:
        for split, items in splits.items():
            with LmdbWriter(os.path.join(tmp, f"{split}_db")) as images, \
                    LmdbWriter(os.path.join(tmp, f"{split}_labels_db")) as labels:
                for i, entry in enumerate(items):
                    im = _image(entry)
                    if im.mode != mode:
                        im = im.convert(mode)
                    pixels = resize_image(im, height, width, resize_mode, noise)
                    if split == "train":
                        image_sum += pixels
                    key = f"{i:08d}".encode()
                    images.put(key, _datum(pixels, 0, encoding))
                    labels.put(key, array_to_datum(np.asarray(entry.values, np.float32).reshape(-1, 1, 1), 0))
                    written += 1
                    if progress is not None:
                        progress(written, total)
            log.info("%s_db, %s_labels_db: %d records", split, split, len(items))
        mean = np.around(image_sum / len(splits["train"])).astype(np.uint8)
        _write_bytes(os.path.join(tmp, "mean.binaryproto"), mean_blob(mean).SerializeToString())
        _write_text(os.path.join(tmp, "dataset.json"), json.dumps(summary, indent=2) + "\n")
    log.info("Generic dataset written to %s", out)
    return dict(summary, path=out)
