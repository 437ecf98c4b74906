"""`caffelike convert_imageset [FLAGS] ROOTFOLDER/ LISTFILE DB_NAME`: images listed in a file -> LMDB of Datums.

Caffe's tools/convert_imageset.cpp.  Each LISTFILE line is `path label`, split at the last space; the image
read is ROOTFOLDER + path (plain concatenation, hence the trailing slash).  Record keys are `%08d_<path>`
with the line's position (after --shuffle), values serialized Datums: raw planar BGR (or gray) bytes, or
the image file's bytes with --encoded.

Differences from Caffe, all on the side of refusing bad input: an image that cannot be read stops the
conversion with its list file and line (Caffe logs it and skips it); the database appears at DB_NAME only
once complete (see caffelike.data.dbwriter); --shuffle is reproducible (`--shuffle_seed`, Caffe seeds from
entropy); --gray always yields gray data, also with --encoded (Caffe would keep a colour file's bytes).
"""
from __future__ import annotations

import argparse
import logging
import random
from typing import NamedTuple

from caffelike.cli.progress import ProgressBar
from caffelike.data.dbwriter import COMMIT_EVERY, DatasetError, LmdbWriter, image_to_datum

log = logging.getLogger("caffelike")

_TRUE_WORDS = ("true", "t", "yes", "y", "1")
_FALSE_WORDS = ("false", "f", "no", "n", "0")


def add_bool_flag(p: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """A gflags-style boolean: `--name`, `--name=true|false|1|0|yes|no`, `--noname`.

    A bare `--name` must not swallow the next argument (`--shuffle ROOT/ list db` is how Caffe's scripts call
    it), so the `=value` spellings are registered as option strings of their own rather than as a value."""
    p.add_argument(f"--{name}", dest=name, action="store_true", default=False, help=help_text)
    for words, value in ((_TRUE_WORDS, True), (_FALSE_WORDS, False)):
        for word in words:
            for spelling in {word, word.capitalize(), word.upper()}:
                p.add_argument(f"--{name}={spelling}", dest=name, action="store_const", const=value,
                               help=argparse.SUPPRESS)
    p.add_argument(f"--no{name}", dest=name, action="store_const", const=False, help=argparse.SUPPRESS)


def add_arguments(p) -> None:
    add_bool_flag(p, "gray", "treat images as grayscale ones")
    add_bool_flag(p, "shuffle", "randomly shuffle the order of images and their labels")
    add_bool_flag(p, "check_size", "check that all the datum have the same size")
    add_bool_flag(p, "encoded", "store the encoded image (file bytes) in the datum")
    p.add_argument("--backend", default="lmdb", help="the backend for storing the result (lmdb; leveldb is not "
                                                     "supported)")
    p.add_argument("--resize_width", type=int, default=0, help="width images are resized to")
    p.add_argument("--resize_height", type=int, default=0, help="height images are resized to")
    p.add_argument("--encode_type", default="", help="what type to encode the images as ('png', 'jpg', ...); "
                                                     "implies --encoded")
    p.add_argument("--shuffle_seed", type=int, default=0, help="seed of --shuffle's permutation (caffelike only)")
    p.add_argument("rootfolder", metavar="ROOTFOLDER/", help="prefix of every path in the list file")
    p.add_argument("listfile", metavar="LISTFILE", help="text file of 'path label' lines")
    p.add_argument("db_name", metavar="DB_NAME", help="the database folder to create")


class Entry(NamedTuple):
    path: str
    label: int
    lineno: int


def read_list(listfile: str) -> list[Entry]:
    """The `path label` lines of a list file; blank lines are skipped, anything else malformed is an error."""
    try:
        # surrogateescape keeps non-UTF-8 file names byte-exact, for the image path and the record key alike.
        with open(listfile, encoding="utf-8", errors="surrogateescape", newline="") as f:
            text = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read the list file {listfile!r}: {e.strerror or e}") from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, space, label = line.rpartition(" ")
        if not space or not path:
            raise DatasetError(f"{listfile} line {lineno}: expected 'path label', got {line!r}")
        try:
            entries.append(Entry(path, int(label), lineno))
        except ValueError:
            raise DatasetError(f"{listfile} line {lineno}: the label {label!r} (after the last space) is not an "
                               "integer") from None
    return entries


def run(args) -> int:
    backend = args.backend.lower()
    if backend == "leveldb":
        raise DatasetError("--backend=leveldb is not supported by caffelike; use --backend=lmdb (the default)")
    if backend != "lmdb":
        raise DatasetError(f"Unknown db backend {args.backend!r}; caffelike writes lmdb")
    entries = read_list(args.listfile)
    if args.shuffle:
        log.info("Shuffling data")
        random.Random(args.shuffle_seed).shuffle(entries)
    log.info("A total of %d images.", len(entries))
    if args.encode_type and not args.encoded:
        log.info("encode_type specified, assuming encoded=true.")
    height, width = max(0, args.resize_height), max(0, args.resize_width)
    if (height > 0) != (width > 0):
        log.warning("Only one of --resize_height and --resize_width is set: images are not resized (as in Caffe)")

    expected = None  # (channels, height, width) of the first image, for --check_size
    with LmdbWriter(args.db_name) as db, ProgressBar("Converting", total=len(entries), unit="img") as bar:
        for line_id, entry in enumerate(entries):
            where = f"{args.listfile} line {entry.lineno}"
            datum = image_to_datum(args.rootfolder + entry.path, entry.label, gray=args.gray,
                                   resize=(height, width), encoded=args.encoded, encode_type=args.encode_type,
                                   where=where)
            if args.check_size:
                shape = _datum_shape(datum, where)
                if expected is None:
                    expected = shape
                elif shape != expected:
                    raise DatasetError(f"{where}: {entry.path!r} is {_dims(shape)} (channels x height x width) "
                                       f"but the first image is {_dims(expected)} (--check_size)")
            key = f"{line_id:08d}_{entry.path}".encode("utf-8", "surrogateescape")
            db.put(key, datum)
            bar.update(1)
            if db.count % COMMIT_EVERY == 0:
                log.info("Processed %d files.", db.count)
        if db.count % COMMIT_EVERY:
            log.info("Processed %d files.", db.count)
    return 0


def _datum_shape(datum, where: str) -> tuple[int, int, int]:
    if not datum.encoded:
        return datum.channels, datum.height, datum.width
    from caffelike.data.datum import datum_pixels

    return tuple(datum_pixels(datum, where=where).shape)


def _dims(shape) -> str:
    return "x".join(str(d) for d in shape)
