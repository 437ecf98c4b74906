"""NVIDIA DIGITS' image-classification dataset, built without DIGITS.

DIGITS makes a dataset in two steps, and so does `create_dataset`:

1. parse_folder (digits/tools/parse_folder.py): each class sub-folder, in sorted order, is a label ('_' read as
   a space; `labels.txt` line i is label i).  A class's images are shuffled and split, train first:
   `a = round(size * (100 - val - test) / 100)`, `b = round(size * val / 100)` with Python 2's round (half away
   from zero), `b = size - a` if the two overshoot, and every split with a percentage keeps at least one image.
   Classes with fewer than `min_per_class` images are left out.  `train.txt` / `val.txt` list `path label`,
   class by class.
2. create_db (digits/tools/create_db.py): each list is shuffled, every image loaded with Pillow (DIGITS' mode
   rules: transparency composited on white), converted to L or RGB, resized, and stored under the key
   `'%08d_%d' % (position, label)` as a Datum: PNG (or JPEG at quality 90) bytes with `encoded: true` and
   channels/height/width filled in, or (encoding "none") raw planar bytes in Caffe's BGR order.  The training
   images' float64 sum, divided and rounded to uint8, is the mean: `mean.binaryproto` (BlobProto num=1, C, H, W,
   BGR for colour) and `mean.jpg`.

For MNIST, DIGITS first runs its downloader (digits/download_data/mnist.py): the IDX files become PNG folders
`<label>/<index:%05d>.png` of *inverted* digits (255 - pixel: black on white).  Here the IDX files (or the 5,000
bundled digits) are read straight into the same pixels; no PNG folder is written.

Deliberate differences from DIGITS:
- every shuffle draws from one `random.Random(seed)` (per-class shuffles in label order, then the train, val
  and test lists), so a dataset can be rebuilt bit for bit; DIGITS seeds from the clock;
- records are stored in exactly the shuffled order (DIGITS' loader threads may swap neighbours);
- an image that cannot be read stops the build with its path (DIGITS logs a warning and leaves it out);
- the dataset folder appears only once complete (built in a hidden sibling folder and renamed);
- files of a class folder are listed in sorted order (DIGITS takes os.walk's order, before its shuffle and
  before --max-per-class cuts the list);
- for MNIST sources the path column of the list files is virtual: `<label>/<index:05d>.png`, the name DIGITS'
  downloader would have given the image, relative and never written;
- resizing uses Pillow's bilinear filter, which is what DIGITS up to 6.0 ran (scipy.misc.imresize); DIGITS 6.1
  switched to scikit-image, whose pixels differ.  Images already at the target size (MNIST at 28x28) are never
  resampled, so the tutorial's dataset is unaffected.
- the 'fill' modes' noise comes from numpy's RandomState(seed) instead of the unseeded global generator.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile

import numpy as np

from caffelike.data.dbwriter import DatasetError, LmdbWriter
from caffelike.digits.sources import (  # noqa: F401  (the sources are part of this module's interface)
    IMAGE_EXTENSIONS,
    MNIST_FILES,
    ArraySource,
    FolderSource,
    Source,
    _as_source,
    bundled_source,
    idx_source,
    load_image,
    mnist_idx_source,
    read_idx,
)
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
ENCODINGS = ("png", "jpg", "none")
IMAGE_TYPES = {"grayscale": 1, "gray": 1, "color": 3, "colour": 3}
JPEG_QUALITY = 90  # create_db's PIL quality for jpg-encoded Datums
LOG_EVERY = 1000

# ------------------------------------------------------------------------------------------------- splitting
def round_half_away(x: float) -> int:
    """Python 2's round() to an integer: halves go away from zero (Python 3 rounds them to even)."""
    magnitude = abs(x)
    whole = math.floor(magnitude)
    rounded = whole + (1 if magnitude - whole >= 0.5 else 0)  # magnitude - whole is exact in binary floating point
    return int(math.copysign(rounded, x))


def split_sizes(size: int, val_percent: float, test_percent: float = 0) -> tuple[int, int, int]:
    """(train, val, test) image counts of one class of `size` images, as DIGITS' three_way_split_indices."""
    if not (0 <= val_percent <= 100 and 0 <= test_percent <= 100 and val_percent + test_percent <= 100):
        raise DatasetError(f"the validation ({val_percent}%) and test ({test_percent}%) percentages must be 0-100 "
                           "and add up to at most 100")
    train_percent = 100 - (val_percent + test_percent)
    if train_percent >= 100:
        return size, 0, 0
    if val_percent >= 100:
        return 0, size, 0
    if test_percent >= 100:
        return 0, 0, size
    a = round_half_away(float(size) * train_percent / 100)
    if train_percent and not a:
        a = 1
    b = round_half_away(float(size) * val_percent / 100)
    if a + b > size:
        b = size - a
    if val_percent and not b:  # a requested split never ends up empty: take one image from train
        if a > 1:
            a, b = a - 1, 1
        elif a != size:
            b = 1
    c = size - (a + b)
    if test_percent and not c:
        if b > 1:
            b, c = b - 1, 1
        elif a > 1:
            a, c = a - 1, 1
    return a, b, c


def resize_image(image, height: int, width: int, mode: str = "squash",
                 noise: np.random.RandomState | None = None) -> np.ndarray:
    """A Pillow image (L or RGB) resized to (height, width) as DIGITS' resize_image does, as a uint8 array
    (H, W) or (H, W, 3).

    squash: stretch to the size.  crop: scale so the image covers the size, cut the middle.  fill: scale so it
    fits, pad the short side with uniform noise (the same noise block on both sides, as DIGITS).  half_crop:
    scale to the average of the two ratios, cut the long side and pad the short one."""
    from PIL import Image

    if mode not in RESIZE_MODES:
        raise DatasetError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    src_w, src_h = image.size
    if (src_h, src_w) == (height, width):
        return np.asarray(image)

    def scaled(h, w):
        return np.asarray(image.resize((w, h), Image.BILINEAR))

    width_ratio, height_ratio = src_w / width, src_h / height
    if mode == "squash" or width_ratio == height_ratio:
        return scaled(height, width)
    wide = width_ratio > height_ratio
    if mode == "crop":
        if wide:
            arr = scaled(height, round_half_away(src_w / height_ratio))
            start = round_half_away((arr.shape[1] - width) / 2.0)
            return arr[:, start:start + width]
        arr = scaled(round_half_away(src_h / width_ratio), width)
        start = round_half_away((arr.shape[0] - height) / 2.0)
        return arr[start:start + height]
    if mode == "fill":
        if wide:
            new_h, new_w = round_half_away(src_h / width_ratio), width
            new_h += (height - new_h) % 2
        else:
            new_h, new_w = height, round_half_away(src_w / height_ratio)
            new_w += (width - new_w) % 2
        arr = scaled(new_h, new_w)
    else:  # half_crop
        ratio = (width_ratio + height_ratio) / 2.0
        new_h, new_w = round_half_away(src_h / ratio), round_half_away(src_w / ratio)
        if wide:
            new_h += (height - new_h) % 2
        else:
            new_w += (width - new_w) % 2
        arr = scaled(new_h, new_w)
        if wide:
            start = round_half_away((new_w - width) / 2.0)
            arr = arr[:, start:start + width]
        else:
            start = round_half_away((new_h - height) / 2.0)
            arr = arr[start:start + height]
    noise = noise if noise is not None else np.random.RandomState(0)
    axis = 0 if wide else 1
    pad = ((height - arr.shape[0]) if wide else (width - arr.shape[1])) // 2
    block = list(arr.shape)
    block[axis] = pad
    filler = noise.randint(0, 255, tuple(block)).astype(np.uint8)  # 0..254, as DIGITS draws it
    return np.concatenate((filler, arr, filler), axis=axis)


def parse_size(size) -> tuple[int, int]:
    """(height, width) from 'HxW', 'N' (square), or a pair."""
    if isinstance(size, str):
        parts = size.lower().replace("×", "x").split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            dims = []
        if len(dims) == 1:
            dims = dims * 2
    else:
        try:
            dims = [int(d) for d in size]
        except (TypeError, ValueError):
            dims = []
    if len(dims) != 2 or min(dims) <= 0:
        raise DatasetError(f"image size {size!r} is not HEIGHTxWIDTH with two positive integers (e.g. 28x28)")
    return dims[0], dims[1]


def _datum(pixels: np.ndarray, label: int, encoding: str) -> caffe_pb2.Datum:
    from caffelike.data.datum import array_to_datum, encode_datum

    if pixels.ndim == 2:
        caffe_order = pixels  # gray
    else:
        caffe_order = pixels[:, :, ::-1]  # RGB -> Caffe's BGR (DIGITS' "issue #59" swap)
    if encoding == "none":
        chw = caffe_order[None] if pixels.ndim == 2 else caffe_order.transpose(2, 0, 1)
        return array_to_datum(np.ascontiguousarray(chw), label)
    return encode_datum(np.ascontiguousarray(caffe_order), label, encoding, layout="hwc", quality=JPEG_QUALITY)


def mean_blob(mean: np.ndarray) -> caffe_pb2.BlobProto:
    """A uint8 mean image (H, W) or (H, W, 3) RGB as DIGITS' mean.binaryproto: num=1, C, H, W, BGR floats."""
    chw = mean[None] if mean.ndim == 2 else mean.transpose(2, 0, 1)[::-1]
    blob = caffe_pb2.BlobProto(num=1, channels=chw.shape[0], height=chw.shape[1], width=chw.shape[2])
    blob.data.extend(chw.astype(np.float32).ravel().tolist())
    return blob


# ---------------------------------------------------------------------------------------------- the dataset
def create_dataset(out: str, source="bundled", *, image_type: str | None = None, size=(28, 28),
                   resize_mode: str = "squash", val_percent: float | None = None, test_percent: float = 0,
                   encoding: str = "png", seed: int = 0, min_per_class: int = 2, max_per_class: int | None = None,
                   invert: bool | None = None, overwrite: bool = False, progress=None,
                   val_folder: str | None = None, test_folder: str | None = None) -> dict:
    """Build a DIGITS image-classification dataset folder at `out` and return its summary (also saved as
    `dataset.json`): labels.txt, train.txt, val.txt, train_db/, val_db/ (and test.txt, test_db/ with a test
    percentage), mean.binaryproto, mean.jpg.

    source: 'bundled' (caffelike's 5,000 digits) or a Source: FolderSource(path), mnist_idx_source(folder),
        idx_source(images, labels), ArraySource(images, labels), or DIGITS' text-file method's
        ListSource(list_file, labels_file, root) (caffelike.digits.list_source).
    image_type: 'grayscale' or 'color'; by default grayscale for MNIST sources, color for folders.
    size: (height, width) or 'HxW'.  resize_mode: squash, crop, fill or half_crop.
    encoding: 'png', 'jpg' or 'none' (raw pixels).
    invert: store 255 - pixel; by default True for MNIST sources (DIGITS' downloader does it), False for folders.
    overwrite: replace an existing dataset at `out` (only once the new one is complete).
    progress: called as progress(images_written, total) after each image (a progress bar, a web page's job).
    val_folder, test_folder: DIGITS' "separate validation / test images folder" (a path) or list (a
        ListSource): every image of it goes to val_db / test_db, labelled by class name with the training
        classes (a class the training set lacks is an error); the matching percentage must then be 0 or unset.
        val_percent defaults to 25 (0 for a ListSource, or with a val_folder).
    """
    src = _as_source(source)
    if val_percent is None:
        val_percent = 0 if val_folder else src.default_val_percent
    folders = {split: folder if isinstance(folder, Source) else FolderSource(folder)
               for split, folder in (("val", val_folder), ("test", test_folder)) if folder}
    for split, percent in (("val", val_percent), ("test", test_percent)):
        if split in folders and percent:
            raise DatasetError(f"a separate {split} set and a {split} percentage ({percent}%) exclude each "
                               f"other: the {split} images come from {_where(folders[split])!r}")
    height, width = parse_size(size)
    if image_type is None:
        channels = src.default_channels
    elif str(image_type).lower() in IMAGE_TYPES:
        channels = IMAGE_TYPES[str(image_type).lower()]
    else:
        raise DatasetError(f"unknown image type {image_type!r}; choose grayscale or color")
    encoding = {"jpeg": "jpg"}.get(str(encoding).lower(), str(encoding).lower())
    if encoding not in ENCODINGS:
        raise DatasetError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    if resize_mode not in RESIZE_MODES:
        raise DatasetError(f"unknown resize mode {resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    split_sizes(0, val_percent, test_percent)  # validates the percentages
    if val_percent + test_percent >= 100:
        raise DatasetError(f"validation {val_percent}% + test {test_percent}% leave no training images")
    if int(min_per_class) < 1 or (max_per_class is not None and int(max_per_class) < 1):
        raise DatasetError(f"--min-per-class ({min_per_class}) and --max-per-class ({max_per_class}) must be >= 1")
    invert = src.default_invert if invert is None else bool(invert)
    out = os.path.abspath(os.fspath(out))
    _check_destination(out, overwrite)

    # parse_folder: labels and per-class splits
    rng = random.Random(seed)
    percents = {"train": 100 - val_percent - test_percent, "val": val_percent, "test": test_percent}
    drawn = [name for name in ("train", "val", "test") if percents[name] > 0]  # the splits cut from `source`
    splits = [name for name in ("train", "val", "test") if name in drawn or name in folders]
    need = max(int(min_per_class), len(drawn))
    labels, lists, per_class, skipped = [], {s: [] for s in splits}, {}, []
    for name, items in src.categories(max_per_class):
        if len(items) < need and not src.keeps_every_class:
            log.warning("Category %r has %d images, fewer than %d: left out", name, len(items), need)
            skipped.append(name)
            continue
        items = list(items)
        rng.shuffle(items)
        counts = dict(zip(("train", "val", "test"), split_sizes(len(items), val_percent, test_percent)))
        label = len(labels)
        labels.append(name)
        start = 0
        for split in ("train", "val", "test"):
            chunk = items[start:start + counts[split]]
            start += counts[split]
            if chunk:
                lists[split].extend((src.path(item, name), item, label) for item in chunk)
        per_class[name] = {s: counts[s] for s in splits}
    if len(labels) < 2:
        raise DatasetError(f"{_where(src)}: {len(labels)} class(es) with at least {need} images; a classification "
                           "dataset needs two (lower --min-per-class or add images)")
    sources = {split: src for split in drawn}
    for split, folder in folders.items():
        sources[split] = _separate_split(folder, split, labels, skipped, max_per_class, lists[split], per_class)
    total = sum(len(v) for v in lists.values())
    log.info("Found %d images in %d categories.", total, len(labels))
    for split in splits:
        log.info("Selected %d for %s.", len(lists[split]), {"train": "training", "val": "validation",
                                                            "test": "testing"}[split])

    summary = {
        "format": "digits-image-classification",
        "created_by": "caffelike",
        "source": src.describe(),
        "image_type": "grayscale" if channels == 1 else "color",
        "channels": channels, "height": height, "width": width,
        "resize_mode": resize_mode, "encoding": encoding, "backend": "lmdb",
        "val_percent": val_percent, "test_percent": test_percent,
        "seed": seed, "min_per_class": int(min_per_class), "max_per_class": max_per_class, "inverted": invert,
        "labels": labels, "counts": {s: len(lists[s]) for s in splits},
        "per_class": per_class, "skipped_classes": skipped,
        **({"separate_folders": {split: _where(f) for split, f in folders.items()}} if folders else {}),
        "files": {"labels": "labels.txt", "mean": "mean.binaryproto", "mean_image": "mean.jpg",
                  **{f"{s}_list": f"{s}.txt" for s in splits}, **{f"{s}_db": f"{s}_db" for s in splits}},
    }
    noise = np.random.RandomState(seed)
    written = [0]

    def one_written() -> None:
        written[0] += 1
        if progress is not None:
            progress(written[0], total)

    shape = dict(channels=channels, height=height, width=width, resize_mode=resize_mode, invert=invert,
                 noise=noise, one_written=one_written)
    with _StagedFolder(out, overwrite) as tmp:
        _write_text(os.path.join(tmp, "labels.txt"), "".join(f"{n}\n" for n in labels))
        for split in splits:
            _write_text(os.path.join(tmp, f"{split}.txt"), "".join(f"{p} {lab}\n" for p, _, lab in lists[split]))
        for split in splits:  # create_db: each list shuffled, then stored; the mean from train only
            entries = list(lists[split])
            rng.shuffle(entries)
            image_sum = _write_db(os.path.join(tmp, f"{split}_db"), entries, sources[split], encoding,
                                  compute_mean=split == "train", **shape)
            if split == "train":
                mean = np.around(image_sum / len(entries)).astype(np.uint8)
                _write_bytes(os.path.join(tmp, "mean.binaryproto"), mean_blob(mean).SerializeToString())
                _save_mean_jpg(os.path.join(tmp, "mean.jpg"), mean)
        _write_text(os.path.join(tmp, "dataset.json"), json.dumps(summary, indent=2) + "\n")
    log.info("Dataset written to %s", out)
    return dict(summary, path=out)


def _separate_split(folder: Source, split: str, labels: list[str], skipped: list[str], max_per_class,
                    entries: list, per_class: dict) -> Source:
    """Add every image of a separate val/test folder (or list) to `entries`, labelled by class name as the
    training set is; returns the source its images are read from."""
    for name, items in folder.categories(max_per_class):
        if not items:
            continue
        if name not in labels:
            why = " (left out of training: too few images)" if name in skipped else ""
            raise DatasetError(f"{split} folder {_where(folder)!r}: class {name!r}{why} is not one of the training "
                               f"classes ({', '.join(repr(n) for n in labels)}); its images would have no label")
        label = labels.index(name)
        entries.extend((item, item, label) for item in items)
        per_class[name][split] = len(items)
    if not entries:
        raise DatasetError(f"{split} folder {_where(folder)!r} holds no images of the training classes")
    return folder


def _where(src: Source) -> str:
    d = src.describe()
    return d.get("folder") or d.get("list") or d.get("images") or d.get("name") or src.kind


def _write_db(path, entries, src, encoding, *, compute_mean, channels, height, width, resize_mode, invert,
              noise, one_written) -> np.ndarray | None:
    from PIL import ImageOps

    mode = "L" if channels == 1 else "RGB"
    image_sum = np.zeros((height, width) if channels == 1 else (height, width, 3), np.float64) if compute_mean \
        else None
    name = os.path.basename(path)
    with LmdbWriter(path) as db:
        for position, (_, item, label) in enumerate(entries):
            im = src.image(item)
            if invert:
                im = ImageOps.invert(im)  # 255 - v, before any conversion, as DIGITS' downloader
            if im.mode != mode:
                im = im.convert(mode)
            pixels = resize_image(im, height, width, resize_mode, noise)
            if image_sum is not None:
                image_sum += pixels
            db.put(f"{position:08d}_{label}".encode(), _datum(pixels, label, encoding))
            one_written()
            if db.count % LOG_EVERY == 0:
                log.info("%s: processed %d/%d images", name, db.count, len(entries))
        if db.count % LOG_EVERY:
            log.info("%s: processed %d/%d images", name, db.count, len(entries))
    return image_sum


def _save_mean_jpg(path: str, mean: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mean).save(path, "JPEG")  # Pillow's default quality, as DIGITS saves it


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode("utf-8", "surrogateescape"))


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _check_destination(out: str, overwrite: bool) -> None:
    if os.path.isdir(out):
        if os.listdir(out) and not overwrite:
            raise DatasetError(f"dataset folder {out!r} already exists and is not empty; remove it, choose "
                               "another --out, or pass --overwrite")
    elif os.path.lexists(out):
        raise DatasetError(f"cannot create dataset folder {out!r}: a file of that name exists")


class _StagedFolder:
    """A hidden sibling folder that becomes `out` by rename on success and is removed on failure."""

    def __init__(self, out: str, overwrite: bool):
        self.out, self.overwrite = out, overwrite
        parent = os.path.dirname(out)
        try:
            os.makedirs(parent, exist_ok=True)
            self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the mode os.mkdir would
        except OSError as e:
            raise DatasetError(f"cannot create dataset folder {out!r}: {e.strerror or e}") from None

    def __enter__(self) -> str:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self._publish()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _publish(self) -> None:
        out, old = self.out, None
        _check_destination(out, self.overwrite)  # someone may have filled it while we were writing
        try:
            if os.path.isdir(out):
                if os.listdir(out):
                    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
                    os.rmdir(old)
                    os.rename(out, old)
                else:
                    os.rmdir(out)
            try:
                os.rename(self.tmp, out)
            except OSError:
                if old is not None:
                    os.rename(old, out)
                raise
        except OSError as e:
            raise DatasetError(f"cannot finish dataset folder {out!r}: {e.strerror or e}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
