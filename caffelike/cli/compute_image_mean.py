"""`caffelike compute_image_mean [--backend=lmdb] INPUT_DB [OUTPUT_FILE]`: the mean image of a Datum database.

Caffe's tools/compute_image_mean.cpp, with its arithmetic: every Datum (encoded ones decoded natively, colour
as BGR) is added into a float32 sum in key order, the sum divided by the count in float32, and written as a
BlobProto with the legacy dims num=1, channels, height, width (the form `transform_param.mean_file` and
pycaffe's blobproto_to_array read).  Each channel's mean is logged as `mean_value channel [c]: v`, the
numbers to put in `mean_value` instead.

Differences from Caffe: Datums of different shapes are an error naming the key (Caffe only compares sizes);
the output file is written atomically.
"""
from __future__ import annotations

import logging

import numpy as np

from caffelike.cli.progress import ProgressBar
from caffelike.data.dbwriter import DatasetError
from caffelike.format.files import atomic_write
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

LOG_EVERY = 10000  # compute_image_mean reports progress every 10000 Datums


def add_arguments(p) -> None:
    p.add_argument("--backend", default="lmdb", help="the backend of the input database (lmdb; leveldb is not "
                                                     "supported)")
    p.add_argument("input_db", metavar="INPUT_DB", help="the database of Datums to average")
    p.add_argument("output_file", metavar="OUTPUT_FILE", nargs="?", default="",
                   help="where to write the mean as a binaryproto (omit to only log the channel means)")


def image_mean(source: str, where: str = "compute_image_mean") -> tuple[np.ndarray, int]:
    """The float32 (C, H, W) mean of every Datum in the LMDB at `source`, and how many there were."""
    from caffelike.data.datum import DatumDB, datum_pixels, parse_datum

    db = DatumDB(source, caffe_pb2.DataParameter.LMDB, where=where)  # refuses a missing, non-LMDB or empty DB
    total, count, shape = None, 0, None
    with ProgressBar("Averaging", total=db.entries, unit="img") as bar:
        try:
            for key, value in db:
                name = f"{source}: key {key.decode('utf-8', 'backslashreplace')!r}"
                datum = parse_datum(value, name)
                if count == 0 and datum.encoded:
                    log.info("Decoding Datum")
                pixels = datum_pixels(datum, where=name)
                if total is None:
                    shape = pixels.shape
                    total = np.zeros(shape, np.float32)
                    log.info("Starting iteration")
                elif pixels.shape != shape:
                    raise DatasetError(f"{name}: the Datum is {_dims(pixels.shape)} (channels x height x width) "
                                       f"but the first is {_dims(shape)}; a mean needs images of one size (resize "
                                       "them with convert_imageset --resize_height/--resize_width)")
                total += pixels  # float32 accumulation, element by element, as Caffe's sum_blob
                count += 1
                bar.update(1)
                if count % LOG_EVERY == 0:
                    log.info("Processed %d files.", count)
        finally:
            db.close()
    if count % LOG_EVERY:
        log.info("Processed %d files.", count)
    return total / np.float32(count), count


def mean_to_blob(mean: np.ndarray) -> caffe_pb2.BlobProto:
    """A (C, H, W) mean as Caffe writes it: legacy num=1, channels, height, width and float `data`."""
    c, h, w = mean.shape
    blob = caffe_pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    return blob


def channel_means(mean: np.ndarray) -> list[float]:
    """Each channel's average, summed in float32 in index order as Caffe does (so the logged digits agree)."""
    c, h, w = mean.shape
    flat = mean.reshape(c, h * w).astype(np.float32)
    return [float(np.cumsum(row, dtype=np.float32)[-1] / np.float32(h * w)) for row in flat]


def run(args) -> int:
    backend = args.backend.lower()
    if backend == "leveldb":
        raise DatasetError("--backend=leveldb is not supported by caffelike; convert the data to LMDB and use "
                           "--backend=lmdb (the default)")
    if backend != "lmdb":
        raise DatasetError(f"Unknown db backend {args.backend!r}; caffelike reads lmdb")
    mean, _ = image_mean(args.input_db)
    if args.output_file:
        log.info("Write to %s", args.output_file)
        try:
            atomic_write(args.output_file, mean_to_blob(mean).SerializeToString())
        except OSError as e:
            raise DatasetError(f"cannot write the mean to {args.output_file!r}: {e.strerror or e}") from None
    log.info("Number of channels: %d", mean.shape[0])
    for c, value in enumerate(channel_means(mean)):
        log.info("mean_value channel [%d]: %g", c, value)
    return 0


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)
