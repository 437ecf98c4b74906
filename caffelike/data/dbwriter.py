"""Writing Caffe's datasets: an LMDB of serialized Datums, and the Datum of one image as convert_imageset makes it.

`LmdbWriter` writes the way Caffe's db_lmdb.cpp does (puts buffered and committed every 1000, the map doubled
whenever it fills up) and adds what Caffe lacks: the dataset appears at its name only once it is complete.  It is
built in a hidden sibling folder and renamed into place on success; on failure the folder is removed, so a crash
or a bad image never leaves a half-written database that a Data layer would happily read.

`image_to_datum` is Caffe's ReadImageToDatum: pixels as OpenCV reads them (BGR or gray, resized with
INTER_LINEAR) stored raw as planar C×H×W bytes, or encoded as PNG/JPEG bytes.  Decoding and resizing are
`caffelike.data.datum`'s; only the encoding lives here.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile

import numpy as np

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

COMMIT_EVERY = 1000  # convert_imageset's transaction size
DEFAULT_MAP_SIZE = 10 << 20  # LMDB's own default; Caffe starts there too and doubles on MDB_MAP_FULL
JPEG_QUALITY = 95  # cv::imencode's default


class DatasetError(CaffeError):
    """A dataset that cannot be written: bad destination, unreadable image, list file or key."""


# ------------------------------------------------------------------------------------------------------- LMDB
class LmdbWriter:
    """A new LMDB of (key, Datum) records at `path`, published atomically.

    Use as a context manager, or call `close()` on success and `abort()` on failure::

        with LmdbWriter("train_lmdb") as db:
            db.put(b"00000000_cat.jpg", datum)

    The destination must not exist, or be an empty folder (Caffe's `mkdir` refuses any existing path; an empty
    folder is accepted here because nothing in it can be lost).  `map_size` is the first map size in bytes;
    it doubles whenever a commit does not fit, as Caffe's LMDBTransaction::Commit does.
    """

    def __init__(self, path: str, map_size: int = DEFAULT_MAP_SIZE, commit_every: int = COMMIT_EVERY):
        import lmdb

        self.path = os.path.abspath(path)
        self.commit_every = commit_every
        self.count = 0  # records put so far
        self._pending: list[tuple[bytes, bytes]] = []
        _check_destination(path)
        parent = os.path.dirname(self.path)
        self._tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.path)}.tmp-", dir=parent)
        os.chmod(self._tmp, 0o755)
        try:
            # sync=False: durability comes from the single sync in close(), before the rename publishes the data.
            self._env = lmdb.open(self._tmp, map_size=map_size, subdir=True, sync=False, meminit=False)
        except lmdb.Error as e:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise DatasetError(f"cannot create an LMDB in {parent!r}: {e}") from None
        self._max_key = self._env.max_key_size()

    # -- writing
    def put(self, key: bytes, datum) -> None:
        """Store `datum` (a caffe_pb2.Datum, or its serialized bytes) under `key`; commits every 1000 puts."""
        self._require_open()
        if isinstance(key, str):
            key = key.encode()
        if not key or len(key) > self._max_key:
            raise DatasetError(f"{self.path}: key {key[:80]!r}{'...' if len(key) > 80 else ''} has {len(key)} bytes; "
                               f"LMDB keys need 1 to {self._max_key} bytes (shorten the image path)")
        value = datum if isinstance(datum, (bytes, bytearray)) else datum.SerializeToString()
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write the buffered puts in one transaction, doubling the map size until they fit."""
        import lmdb

        self._require_open()
        if not self._pending:
            return
        while True:
            txn = self._env.begin(write=True)
            try:
                for key, value in self._pending:
                    txn.put(key, value)
                txn.commit()
                break
            except lmdb.MapFullError:
                txn.abort()
                size = self._env.info()["map_size"] * 2
                log.info("Doubling LMDB map size to %dMB ...", size >> 20)
                self._env.set_mapsize(size)
            except lmdb.Error as e:
                txn.abort()
                raise DatasetError(f"{self.path}: LMDB write failed: {e}") from None
        self._pending.clear()

    # -- finishing
    def close(self) -> None:
        """Commit what is buffered, flush to disk and move the finished database to its name."""
        if self._env is None:
            return
        try:
            self.commit()
            self._env.sync(True)
            self._env.close()
            self._env = None
            _check_destination(self.path)  # someone may have created it while we were writing
            if os.path.isdir(self.path):
                os.rmdir(self.path)  # an empty folder: make room for the rename
            os.rename(self._tmp, self.path)
            _fsync_dir(os.path.dirname(self.path))
        except OSError as e:
            self.abort()
            raise DatasetError(f"cannot finish database {self.path!r}: {e.strerror or e}") from None
        except BaseException:
            self.abort()
            raise
        self._tmp = None

    def abort(self) -> None:
        """Drop everything written: the destination is left as it was."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self._pending.clear()

    def __enter__(self) -> "LmdbWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _require_open(self) -> None:
        if self._env is None:
            raise DatasetError(f"{self.path}: the LMDB writer is already closed")


def _check_destination(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DatasetError(f"cannot create database {path!r}: its folder {parent!r} does not exist")
    if os.path.isdir(path):
        if os.listdir(path):
            raise DatasetError(f"database {path!r} already exists and is not empty; remove it or choose another "
                               "name (Caffe refuses to overwrite a database too)")
    elif os.path.lexists(path):
        raise DatasetError(f"cannot create database {path!r}: a file of that name exists")


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------------ images
def image_to_datum(image, label: int = 0, *, gray: bool = False, resize: tuple[int, int] | None = None,
                   encoded: bool = False, encode_type: str = "", where: str | None = None) -> caffe_pb2.Datum:
    """Caffe's ReadImageToDatum: one image as the Datum convert_imageset stores.

    image: a file path, a PIL image, or a uint8 array (H, W) or (H, W, 3|4) in RGB(A) order (numpy's and
        Pillow's order; it is turned into Caffe's BGR here).
    gray: read as one channel (OpenCV's IMREAD_GRAYSCALE); otherwise 3 channels BGR (IMREAD_COLOR).
    resize: (height, width); applied with OpenCV's INTER_LINEAR only when both are > 0, as in Caffe.
    encoded / encode_type: store file bytes instead of pixels.  encode_type ('png', 'jpg', 'bmp', ...) alone
        implies encoded, as in Caffe; without it the type is guessed from the path's extension (PNG for
        in-memory images).  A file whose extension matches, read without resize, is stored as its original
        bytes (Caffe's ReadFileToDatum); otherwise the pixels are re-encoded (JPEG at quality 95, as OpenCV).

    Raw Datums carry channels, height, width, `data` (planar C×H×W uint8), `encoded: false` and the label.
    Encoded Datums carry only `data`, the label and `encoded: true`, exactly as Caffe writes them; readers get
    the shape by decoding.
    """
    path = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
    where = where or (path if path is not None else "image")
    kind = encode_type.lower().lstrip(".")
    if encoded and not kind:
        kind = _extension(path) if path is not None else "png"
        if not kind:
            raise DatasetError(f"{where}: cannot guess the encoding from a file name without an extension; "
                               "give encode_type")
    height, width = resize or (0, 0)
    resized = height > 0 and width > 0  # Caffe resizes only when both are given ...
    asked_resize = height > 0 or width > 0  # ... but keeps a file's bytes only when neither is

    if (kind and path is not None and not asked_resize and _same_type(path, kind)
            and not (gray and not _is_gray(path))):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DatasetError(f"{where}: Could not open or find file {path!r} ({e.strerror or e})") from None
        _pixels_of(data, gray, where)  # Caffe reads the image first: an undecodable file is refused here too
        return caffe_pb2.Datum(data=data, label=int(label), encoded=True)

    pixels = _load(image, path, gray, where)
    if resized:
        from caffelike.data.datum import resize_linear

        pixels = resize_linear(pixels, height, width)
    if kind:
        return caffe_pb2.Datum(data=encode_pixels(pixels, kind, where), label=int(label), encoded=True)
    c, h, w = pixels.shape
    return caffe_pb2.Datum(channels=c, height=h, width=w, data=np.ascontiguousarray(pixels).tobytes(),
                           label=int(label), encoded=False)


def encode_pixels(pixels: np.ndarray, kind: str, where: str = "image") -> bytes:
    """A uint8 (C, H, W) image in Caffe's order (gray, BGR or BGRA) as the bytes of a `kind` file
    ('png', 'jpg', 'bmp', 'tif', ... any format Pillow writes), as cv::imencode("." + kind) makes them."""
    from PIL import Image

    fmt = Image.registered_extensions().get("." + kind.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise DatasetError(f"{where}: cannot encode images as {kind!r}: unknown image type (try png or jpg)")
    c = pixels.shape[0]
    if c == 1:
        im = Image.fromarray(np.ascontiguousarray(pixels[0]), "L")
    elif c == 3:
        im = Image.fromarray(np.ascontiguousarray(pixels[::-1].transpose(1, 2, 0)), "RGB")
    elif c == 4:
        im = Image.fromarray(np.ascontiguousarray(pixels[[2, 1, 0, 3]].transpose(1, 2, 0)), "RGBA")
    else:
        raise DatasetError(f"{where}: cannot encode an image of {c} channels (1, 3 or 4 needed)")
    buf = io.BytesIO()
    try:
        im.save(buf, fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{where}: cannot encode a {c}-channel image as {kind!r}: {e}") from None
    return buf.getvalue()


def _load(image, path: str | None, gray: bool, where: str) -> np.ndarray:
    """The image as uint8 (C, H, W): 1 channel if gray, else 3 in BGR order."""
    if path is not None:
        from caffelike.data.datum import read_image

        try:
            return read_image(path, is_color=not gray, where=where)
        except CaffeError as e:
            raise DatasetError(str(e)) from None
    from PIL import Image

    if isinstance(image, Image.Image):
        im = image
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise DatasetError(f"{where}: an image array must be uint8 (H, W) or (H, W, 1|3|4), got "
                               f"{arr.dtype} {arr.shape}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        im = Image.fromarray(np.ascontiguousarray(arr))
    im = im.convert("L" if gray else "RGB")
    pixels = np.asarray(im)
    return pixels[None] if gray else pixels[:, :, ::-1].transpose(2, 0, 1)


def _pixels_of(data: bytes, gray: bool, where: str) -> np.ndarray:
    from caffelike.data.datum import COLOR, GRAY, decode_image

    try:
        return decode_image(data, GRAY if gray else COLOR, where)
    except CaffeError as e:
        raise DatasetError(str(e)) from None


def _extension(path: str) -> str:
    base = os.path.basename(path)
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def _same_type(path: str, kind: str) -> bool:
    """Caffe's matchExt: the file's extension is `kind` (case-insensitive), with 'jpeg' matching 'jpg'."""
    ext = _extension(path)
    return ext == kind or (kind == "jpg" and ext == "jpeg")


def _is_gray(path: str) -> bool:
    """Whether the file already holds one 8-bit channel, so its bytes can serve a --gray dataset as they are.
    (Caffe keeps a colour file's bytes even with --gray; here --gray always yields gray data.)"""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L")
    except (OSError, ValueError, SyntaxError):  # unreadable: let the decoding path report it
        return False
