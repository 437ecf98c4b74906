"""Caffe's stored samples: the `Datum` record, the images it may hold, and the LMDB databases that hold Datums.

A Datum is one sample: `channels`, `height`, `width`, `label`, and its values either as raw bytes (`data`,
uint8, planar C×H×W), as `float_data`, or (`encoded: true`) as the bytes of a PNG/JPEG file.  Caffe decodes
encoded Datums and image files with OpenCV, so images come out in OpenCV's channel order: BGR for colour,
one channel for grayscale.  Here Pillow decodes them into the same layout; `decode_image` lists the few places
where Pillow and OpenCV may disagree.

Every array handed out is channel-first (C, H, W), as Caffe's DataTransformer lays out its output.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import weakref
from typing import Iterator

import numpy as np

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

# How `decode_image` treats the channels of a decoded file (Caffe's three OpenCV read modes).
NATIVE, COLOR, GRAY = "native", "color", "gray"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DatumError(CaffeError):
    """A Datum, an image or a database that cannot be read as Caffe would read it."""


# ------------------------------------------------------------------------------------------------------- images
def decode_image(data: bytes, mode: str = NATIVE, where: str = "image") -> np.ndarray:
    """The pixels of a PNG/JPEG/BMP/... file's bytes as a uint8 (C, H, W) array in OpenCV's channel order.

    mode NATIVE keeps the file's channels (Caffe's `imdecode(..., -1)`: gray -> 1, colour -> 3 (BGR), with
    alpha -> 4 (BGRA)); COLOR forces 3 channels (BGR); GRAY forces 1.  `where` names the sample in errors.

    Differences from OpenCV: colour-to-gray of a PNG uses Pillow's ITU-R 601 weights (libpng's fixed-point
    weights can differ by 1 in rare pixels); JPEGs are decoded by Pillow's libjpeg, which may round the IDCT
    differently from the libjpeg OpenCV was built with (a difference of 1 or 2 in some pixels); EXIF
    orientation is not applied.
    """
    from PIL import Image, PngImagePlugin, UnidentifiedImageError

    try:
        # PNG (what convert_imageset and DIGITS write most) skips Image.open's format probing.
        fp = io.BytesIO(data)
        im = PngImagePlugin.PngImageFile(fp) if data[:8] == _PNG_SIGNATURE else Image.open(fp)
        if mode == GRAY and im.format == "JPEG" and im.mode in ("RGB", "YCbCr"):
            im.draft("L", im.size)  # libjpeg's own gray output (the Y plane), as OpenCV asks libjpeg for
        im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DatumError(f"{where}: could not decode the image ({len(data)} bytes): {e}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        if mode == NATIVE:
            raise DatumError(f"{where}: the image is {im.mode} (16 bits per pixel); Caffe needs 8-bit images "
                             "(\"Image data type must be unsigned byte\"); set force_color or force_gray, or "
                             "convert the images to 8 bits")
        # OpenCV's forced 8-bit read keeps the high byte of 16-bit samples.
        wide = np.asarray(im, dtype=np.uint32) >> 8
        im = Image.fromarray(wide.astype(np.uint8), "L")
    if im.mode == "F":
        raise DatumError(f"{where}: floating-point images ({im.format}, mode F) are not supported")

    if mode == GRAY:
        if im.mode != "L":
            im = im.convert("L")
    elif mode == COLOR:
        if im.mode != "RGB":
            im = im.convert("RGB")
    else:
        if im.mode in ("1", "L"):
            im = im.convert("L") if im.mode == "1" else im
        elif im.mode in ("LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
        elif im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGB")
    pixels = np.asarray(im)
    if pixels.ndim == 2:
        return pixels[None]
    if pixels.shape[2] == 3:
        return pixels[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR
    return pixels[:, :, [2, 1, 0, 3]].transpose(2, 0, 1)  # RGBA -> BGRA


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR source index and 11-bit fixed-point weights of each output position along one axis
    (centre-aligned mapping x_src = (x + 0.5)·src/dst − 0.5, computed in float32 as OpenCV does)."""
    scale = 1.0 / (dst / src)  # cv::resize stores the inverse scale and inverts it
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    return s, f, np.float32(1.0) - f


def resize_linear(pixels: np.ndarray, new_height: int, new_width: int) -> np.ndarray:
    """Resize a uint8 (C, H, W) image to (C, new_height, new_width) with OpenCV's INTER_LINEAR arithmetic:
    centre-aligned bilinear weights quantised to 11 bits, a horizontal then a vertical pass, the vertical
    pass rounded as OpenCV's SSE2 loop does, borders replicated.  No antialiasing on downscale (unlike
    Pillow's BILINEAR), exactly as `cv::resize` in Caffe's ReadImageToCVMat."""
    c, h, w = pixels.shape
    if (h, w) == (new_height, new_width):
        return pixels
    sx, fx, gx = _linear_taps(w, new_width)
    # The horizontal pass clamps both the position and its weight at the borders.
    low, high = sx < 0, sx >= w - 1
    fx[low | high], gx[low | high] = 0, 1
    sx = np.clip(sx, 0, w - 1)
    ax0 = np.rint(gx * 2048).astype(np.int32)
    ax1 = np.rint(fx * 2048).astype(np.int32)
    sy, fy, gy = _linear_taps(h, new_height)
    # The vertical pass keeps its weights and clamps only the rows it reads.
    by0 = np.rint(gy * 2048).astype(np.int32)
    by1 = np.rint(fy * 2048).astype(np.int32)
    y0, y1 = np.clip(sy, 0, h - 1), np.clip(sy + 1, 0, h - 1)
    rows = np.unique(np.concatenate([y0, y1]))
    src = pixels[:, rows].astype(np.int32)
    horiz = src[:, :, sx] * ax0 + src[:, :, np.minimum(sx + 1, w - 1)] * ax1
    where = np.searchsorted(rows, np.arange(h))
    r0, r1 = horiz[:, where[y0]] >> 4, horiz[:, where[y1]] >> 4
    out = (((r0 * by0[:, None]) >> 16) + ((r1 * by1[:, None]) >> 16) + 2) >> 2
    return np.clip(out, 0, 255).astype(np.uint8)


def read_image(path: str, is_color: bool = True, new_height: int = 0, new_width: int = 0,
               where: str | None = None) -> np.ndarray:
    """Caffe's ReadImageToCVMat: a file as uint8 (C, H, W), 3 channels BGR if `is_color` else 1, resized with
    INTER_LINEAR when new_height and new_width are both > 0."""
    where = where or path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatumError(f"{where}: Could not open or find file {path!r} ({e.strerror or e})") from None
    pixels = decode_image(data, COLOR if is_color else GRAY, where)
    if new_height > 0 and new_width > 0:
        pixels = resize_linear(pixels, new_height, new_width)
    return pixels


# ------------------------------------------------------------------------------------------------------- Datums
def parse_datum(value: bytes, where: str = "datum") -> caffe_pb2.Datum:
    """A serialized Datum, with an error that names `where` (e.g. the database key) when it does not parse."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf's DecodeError and friends
        raise DatumError(f"{where}: the value ({len(value)} bytes) is not a serialized caffe.Datum ({e})") from None
    return datum


def datum_pixels(datum: caffe_pb2.Datum, force_color: bool = False, force_gray: bool = False,
                 where: str = "datum") -> np.ndarray:
    """A Datum's values as a (C, H, W) array without conversion: uint8 for raw `data` and decoded images,
    float32 for `float_data`.  force_color / force_gray only act on encoded Datums (as in Caffe)."""
    if datum.encoded:
        if force_color and force_gray:
            raise DatumError(f"{where}: cannot set both force_color and force_gray")
        mode = COLOR if force_color else GRAY if force_gray else NATIVE
        return decode_image(datum.data, mode, where)
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h <= 0 or w <= 0:
        raise DatumError(f"{where}: the Datum has shape {c}x{h}x{w} (channels x height x width); all three must "
                         "be positive for a raw (not encoded) Datum")
    n = c * h * w
    if datum.data:
        if len(datum.data) != n:
            raise DatumError(f"{where}: the Datum's data holds {len(datum.data)} bytes but its shape "
                             f"{c}x{h}x{w} needs {n}")
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    if len(datum.float_data) != n:
        raise DatumError(f"{where}: the Datum holds {len(datum.float_data)} float_data values but its shape "
                         f"{c}x{h}x{w} needs {n}" + (" (and no data bytes)" if not datum.float_data else ""))
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


def decode_datum(datum: caffe_pb2.Datum, force_color: bool = False, force_gray: bool = False,
                 where: str = "datum") -> np.ndarray:
    """A Datum as the float32 (C, H, W) array Caffe's DataTransformer reads: raw bytes, float_data, or the
    decoded image (BGR for colour)."""
    return datum_pixels(datum, force_color, force_gray, where).astype(np.float32)


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """pycaffe's caffe.io.array_to_datum: a (C, H, W) array; uint8 goes into `data`, anything else into
    `float_data`."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"Incorrect array shape: array_to_datum needs (C, H, W), got {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """pycaffe's caffe.io.datum_to_array: uint8 (C, H, W) from `data`, else float64 from `float_data` (the
    label is not returned).  Encoded Datums are decoded (pycaffe cannot); use decode_datum for float32."""
    if datum.encoded:
        return datum_pixels(datum)
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.asarray(datum.float_data, dtype=np.float64).reshape(shape)


def encode_datum(image: np.ndarray, label: int = 0, encoding: str = "png", layout: str = "auto",
                 quality: int = 95) -> caffe_pb2.Datum:
    """An encoded Datum (`encoded: true`, PNG or JPEG bytes) of a uint8 image in Caffe's channel order (BGR or
    gray), as convert_imageset --encoded writes; channels/height/width are filled in as DIGITS does.

    `image`: (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; `layout` "auto" takes the channel axis to be
    the last when it has 1, 3 or 4 entries, else the first ("hwc"/"chw" force it).  JPEG quality 95 is
    OpenCV's default."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_datum needs a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3:
        if layout == "chw" or (layout == "auto" and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4)):
            arr = arr.transpose(1, 2, 0)
        elif layout not in ("auto", "hwc"):
            raise ValueError(f"layout must be 'auto', 'hwc' or 'chw', got {layout!r}")
    else:
        raise ValueError(f"encode_datum needs a 2-D or 3-D image, got shape {arr.shape}")
    channels = arr.shape[2]
    if channels not in (1, 3, 4):
        raise ValueError(f"encode_datum needs 1, 3 or 4 channels, got {channels}")
    from PIL import Image

    if channels == 1:
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, 0]), "L")
    elif channels == 3:
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, ::-1]), "RGB")
    else:
        im = Image.fromarray(np.ascontiguousarray(arr[:, :, [2, 1, 0, 3]]), "RGBA")
    fmt = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}.get(encoding.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"encoding must be 'png' or 'jpg', got {encoding!r}")
    if fmt == "JPEG" and channels == 4:
        raise ValueError("JPEG cannot hold an alpha channel; use encoding='png'")
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    datum = caffe_pb2.Datum(channels=channels, height=arr.shape[0], width=arr.shape[1], data=buf.getvalue(),
                            label=int(label), encoded=True)
    return datum


# --------------------------------------------------------------------------------------------------- databases
def is_lmdb(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "data.mdb"))


def _looks_like_leveldb(path: str) -> bool:
    return os.path.isdir(path) and (os.path.isfile(os.path.join(path, "CURRENT")) or
                                    any(n.endswith((".ldb", ".sst")) for n in os.listdir(path)))


# LMDB allows one open environment per file per process; every reader of a path shares it (with its own
# transaction and cursor) and the last one to close it closes it.
_ENVS: dict[str, list] = {}
_ENVS_LOCK = threading.Lock()


# LMDB's meta page: a 16-byte page header, then MDB_meta (magic, version, address, map size, the free-list DB
# whose md_pad holds the page size, ...), on 64-bit builds.
_LMDB_MAGIC, _LMDB_MAGIC_AT, _LMDB_PSIZE_AT = 0xBEEFC0DE, 16, 40


def _check_lmdb_size(source: str, where: str, env=None) -> None:
    """Refuse a truncated data.mdb before liblmdb reads it: liblmdb maps the file and reads its pages in place,
    so a page missing from the end of the file kills the process with SIGBUS instead of raising.  Without `env`
    the two meta pages are checked, with it every page up to the last one the meta page names."""
    data = os.path.join(source, "data.mdb")
    size = os.path.getsize(data)
    if env is None:
        with open(data, "rb") as f:
            head = f.read(_LMDB_PSIZE_AT + 4)
        magic = int.from_bytes(head[_LMDB_MAGIC_AT:_LMDB_MAGIC_AT + 4], "little")
        if len(head) < _LMDB_PSIZE_AT + 4 or magic != _LMDB_MAGIC:
            return  # not a (64-bit) LMDB file at all: liblmdb itself reports it as invalid
        psize = int.from_bytes(head[_LMDB_PSIZE_AT:_LMDB_PSIZE_AT + 4], "little")
        needed, what = 2 * psize, "its two meta pages"
    else:
        psize = int(env.stat()["psize"])
        needed, what = (int(env.info()["last_pgno"]) + 1) * psize, "the pages its meta page names"
    if size < needed:
        raise DatumError(f"{where}: the LMDB file {data!r} is truncated: it holds {size} bytes but {what} need "
                         f"{needed} (pages of {psize} bytes); copy or write the database again")


def _acquire_env(source: str, where: str):
    import lmdb

    key = os.path.realpath(source)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            _check_lmdb_size(source, where)
            try:
                env = lmdb.open(source, readonly=True, lock=False, readahead=False, max_readers=1024, subdir=True)
            except lmdb.Error as e:
                raise DatumError(f"{where}: cannot open LMDB {source!r}: {e}") from None
            try:
                _check_lmdb_size(source, where, env)
            except BaseException:
                env.close()
                raise
            entry = _ENVS[key] = [env, 0]
        entry[1] += 1
        return entry[0]


def _release_env(env) -> None:
    with _ENVS_LOCK:
        for key, entry in list(_ENVS.items()):
            if entry[0] is env:
                entry[1] -= 1
                if entry[1] == 0:
                    del _ENVS[key]
                    env.close()
                return


class DatumDB:
    """A read-only LMDB of Datums read sequentially in key order, wrapping around at the end as Caffe's
    DataLayer does.  `where` names the reader in errors (e.g. 'Data layer "mnist"')."""

    def __init__(self, source: str, backend: int = caffe_pb2.DataParameter.LMDB, where: str = "Data layer"):
        self.where = where
        self.source = source
        resolved = os.path.abspath(source)
        if not os.path.exists(source):
            raise DatumError(f"{where}: data source {source!r} does not exist (relative paths are resolved "
                             f"against the working directory, as in Caffe: {resolved})")
        if not is_lmdb(source):
            if backend == caffe_pb2.DataParameter.LEVELDB:
                kind = "is a LevelDB" if _looks_like_leveldb(source) else "is not an LMDB directory"
                raise DatumError(
                    f"{where}: source {source!r} {kind}; backend LEVELDB (the default of data_param.backend) is not "
                    "supported by caffelike.  Convert the data to LMDB (e.g. `caffelike convert_imageset "
                    "--backend lmdb ...` from the images, or copy every key/value of the LevelDB into an LMDB) "
                    "and set `backend: LMDB`")
            what = "a file" if os.path.isfile(source) else "a directory without data.mdb"
            raise DatumError(f"{where}: source {source!r} is not an LMDB environment ({what}); give the LMDB "
                             "directory that holds data.mdb")
        self.env = _acquire_env(source, where)
        self._finalizer = weakref.finalize(self, _release_env, self.env)
        self.entries = int(self.env.stat()["entries"])
        if self.entries == 0:
            self.close()
            raise DatumError(f"{where}: the database {source!r} is empty (0 records)")
        import lmdb

        try:
            self._txn = self.env.begin(buffers=False)
            self._cursor = self._txn.cursor()
            self._cursor.first()
        except lmdb.Error as e:
            self.close()
            raise self._failed(e) from None
        self.position = 0  # records read since the start, wraps included

    def _failed(self, e: Exception) -> DatumError:
        return DatumError(f"{self.where}: cannot read LMDB {self.source!r} (the database is corrupt: "
                          f"{type(e).__name__}: {e})")

    def peek(self) -> tuple[bytes, bytes]:
        """The record the next `read` starts with, without consuming it."""
        import lmdb

        try:
            return self._cursor.key(), self._cursor.value()
        except lmdb.Error as e:
            raise self._failed(e) from None

    def read(self, n: int) -> list[tuple[bytes, bytes]]:
        """The next n (key, value) records, wrapping around to the first key after the last."""
        import lmdb

        out = []
        cursor = self._cursor
        try:
            for _ in range(n):
                out.append(cursor.item())
                if not cursor.next():
                    log.info("Restarting data prefetching from start.")
                    cursor.first()
        except lmdb.Error as e:
            raise self._failed(e) from None
        self.position += n
        return out

    def skip(self, n: int) -> None:
        """Advance n records without reading their values (wrapping around)."""
        import lmdb

        try:
            for _ in range(n % self.entries):
                if not self._cursor.next():
                    log.info("Restarting data prefetching from start.")
                    self._cursor.first()
        except lmdb.Error as e:
            raise self._failed(e) from None
        self.position += n

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record once, in key order, from a separate read transaction."""
        import lmdb

        try:
            with self.env.begin(buffers=False) as txn:
                yield from txn.cursor()
        except lmdb.Error as e:
            raise self._failed(e) from None

    def close(self) -> None:
        if getattr(self, "env", None) is None:
            return
        try:
            if getattr(self, "_txn", None) is not None:
                self._cursor.close()
                self._txn.abort()
        finally:
            self.env = None
            self._finalizer()
