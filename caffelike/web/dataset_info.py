"""What a dataset job's page and JSON show of the DIGITS dataset folder it wrote (`<job>/dataset/`): the summary
`caffelike dataset create` saves as dataset.json, a few decoded sample images per class, the mean image, and the
creation's progress read from its log."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import threading

import numpy as np

from caffelike.format.files import atomic_write
from caffelike.web.jobs import DONE

log = logging.getLogger("caffelike")

DATASET_DIR = "dataset"
SAMPLES_DIR = "samples"
SAMPLES_PER_CLASS = 6
SAMPLE_CLASSES = 100  # a page of 1,000 classes of samples would be unreadable; the counts table lists them all
SAMPLE_NAME = re.compile(r"^\d{1,6}-\d{1,3}\.png$")
_samples_lock = threading.Lock()
_FOUND = re.compile(r"Found (\d+) images in (\d+) categories")
_PROCESSED = re.compile(r"(\w+_db): processed (\d+)/(\d+) images")


def summary(job) -> dict | None:
    """The dataset's dataset.json, once the job is Done (None before, or when it cannot be read).  The first
    read copies the main facts into job.data, where the model pages find them without opening the file."""
    if job.status != DONE:
        return None
    try:
        with open(job.path(DATASET_DIR, "dataset.json"), encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    if "counts" not in job.data:
        job.data.update({"dataset_dir": DATASET_DIR, "num_classes": len(info.get("labels", [])),
                         "counts": info.get("counts", {}), "channels": info.get("channels"),
                         "height": info.get("height"), "width": info.get("width"),
                         "encoding": info.get("encoding"), "resize_mode": info.get("resize_mode")})
        _save(job)
    return info


def _save(job) -> None:
    from flask import current_app

    try:
        current_app.extensions["caffelike.store"].save(job)
    except (RuntimeError, KeyError, OSError) as e:  # no application (a script) or a full disk: only a cache
        log.debug("dataset %s: job.data not saved: %s", job.id, e)


def class_table(info: dict) -> tuple[list[str], list[dict], dict]:
    """(splits, rows of {label, name, counts, total}, totals per split) for the counts-per-class table."""
    splits = [s for s in ("train", "val", "test") if s in info.get("counts", {})]
    rows, totals = [], {s: 0 for s in splits}
    per_class = info.get("per_class", {})
    for label, name in enumerate(info.get("labels", [])):
        counts = {s: int(per_class.get(name, {}).get(s, 0)) for s in splits}
        for s in splits:
            totals[s] += counts[s]
        rows.append({"label": label, "name": name, "counts": counts, "total": sum(counts.values())})
    return splits, rows, totals


def digits_tasks(info: dict) -> dict:
    """DIGITS' verbose dataset JSON: its ParseFolderTasks and CreateDbTasks entries."""
    counts = info.get("counts", {})
    parse = [{"name": "Parse Folder", "label_count": len(info.get("labels", [])),
              "train_count": counts.get("train", 0), "val_count": counts.get("val", 0),
              "test_count": counts.get("test", 0)}]
    names = {"train": "Create DB (train)", "val": "Create DB (val)", "test": "Create DB (test)"}
    create = [{"name": names[s], "entries": n, "image_width": info.get("width"), "image_height": info.get("height"),
               "image_channels": info.get("channels"), "backend": info.get("backend", "lmdb"),
               "encoding": info.get("encoding"), "compression": "none"} for s, n in counts.items() if s in names]
    return {"ParseFolderTasks": parse, "CreateDbTasks": create}


# ---------------------------------------------------------------------------------------------------- samples
def samples(job, info: dict) -> dict[int, list[str]]:
    """Up to SAMPLES_PER_CLASS sample file names (under `<job>/samples/`) per label of the first SAMPLE_CLASSES
    labels, decoded once from train_db and kept as PNG files."""
    index_path = job.path(SAMPLES_DIR, "index.json")
    with _samples_lock:
        try:
            with open(index_path, encoding="utf-8") as f:
                return {int(k): v for k, v in json.load(f).items()}
        except (OSError, ValueError, AttributeError):
            pass
        found = _decode_samples(job, min(len(info.get("labels", [])), SAMPLE_CLASSES))
        atomic_write(index_path, json.dumps({str(k): v for k, v in found.items()}).encode("utf-8"))
        return found


def _decode_samples(job, num_labels: int) -> dict[int, list[str]]:
    from caffelike.data.datum import DatumDB, datum_pixels, parse_datum

    os.makedirs(job.path(SAMPLES_DIR), exist_ok=True)
    found: dict[int, list[str]] = {}
    full = 0
    db = DatumDB(job.path(DATASET_DIR, "train_db"), where="dataset samples")
    try:
        for key, value in db:
            label = _label_of(key)
            if label is None:
                label = int(parse_datum(value, key.decode("ascii", "replace")).label)
            if not 0 <= label < num_labels or len(found.get(label, [])) >= SAMPLES_PER_CLASS:
                continue
            where = key.decode("ascii", "replace")
            pixels = datum_pixels(parse_datum(value, where), where=where)
            name = f"{label}-{len(found.get(label, []))}.png"
            atomic_write(job.path(SAMPLES_DIR, name), png_bytes(pixels))
            found.setdefault(label, []).append(name)
            if len(found[label]) == SAMPLES_PER_CLASS:
                full += 1
                if full == num_labels:
                    break
    finally:
        db.close()
    return found


def _label_of(key: bytes) -> int | None:
    """The label in a DIGITS key, '%08d_%d' % (position, label), read without parsing the Datum."""
    head, _, tail = key.partition(b"_")
    return int(tail) if head.isdigit() and tail.isdigit() else None


def png_bytes(chw: np.ndarray) -> bytes:
    """A (C, H, W) Caffe-order array (gray, or BGR) as PNG bytes."""
    from PIL import Image

    arr = np.asarray(chw)
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.shape[0] == 1:
        image = Image.fromarray(arr[0], "L")
    else:
        image = Image.fromarray(np.ascontiguousarray(arr[:3][::-1].transpose(1, 2, 0)), "RGB")
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def mean_png(job) -> bytes | None:
    """The mean image drawn from mean.binaryproto, for a dataset without mean.jpg."""
    from caffelike.proto import caffe_pb2

    try:
        with open(job.path(DATASET_DIR, "mean.binaryproto"), "rb") as f:
            blob = caffe_pb2.BlobProto.FromString(f.read())
        c, h, w = blob.channels, blob.height, blob.width
        data = np.asarray(blob.data, dtype=np.float32)
        if c * h * w == 0 or data.size != c * h * w:
            return None
        return png_bytes(data.reshape(c, h, w))
    except Exception as e:  # noqa: BLE001 - a damaged file only loses the picture, never the page
        log.warning("dataset %s: cannot draw the mean image: %s", job.id, e)
        return None


# --------------------------------------------------------------------------------------------------- progress
def progress(job) -> dict:
    """How far the creation is, from its log: {"progress": 0..1 or None, "images_done", "images_total"}."""
    try:
        with open(job.log_file, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        text = ""
    total = None
    for m in _FOUND.finditer(text):
        total = int(m.group(1))
    done: dict[str, int] = {}
    for m in _PROCESSED.finditer(text):
        done[m.group(1)] = int(m.group(2))
    written = sum(done.values())
    if job.status == DONE:
        return {"progress": 1.0, "images_done": total or written, "images_total": total or written}
    fraction = min(1.0, written / total) if total else None
    return {"progress": fraction, "images_done": written, "images_total": total}
