"""Where a DIGITS dataset's images come from: a folder of class sub-folders, MNIST IDX files (LeCun's names,
gzipped or not, or DIGITS' .bin copies), or arrays (the bundled digits) - and how one image file is read."""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from caffelike.data.dbwriter import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")  # DIGITS' SUPPORTED_EXTENSIONS
# The names the MNIST IDX files go by: LeCun's (gzipped or not), a common renaming, and DIGITS' gunzipped copies.
MNIST_FILES = {
    "train": (("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "train-images.idx3-ubyte",
               "train-images.bin"),
              ("train-labels-idx1-ubyte", "train-labels-idx1-ubyte.gz", "train-labels.idx1-ubyte",
               "train-labels.bin")),
    "test": (("t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz", "t10k-images.idx3-ubyte", "test-images.bin"),
             ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz", "t10k-labels.idx1-ubyte", "test-labels.bin")),
}


# ------------------------------------------------------------------------------------------------- IDX files
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), plain or gzipped (told by its content, not its name), as an array."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"cannot read the IDX file {path!r}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: a damaged gzip file ({e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise DatasetError(f"{path}: not an IDX file (the first bytes {data[:4].hex()!r} are not an IDX magic "
                           "number such as 00000803 for images or 00000801 for labels)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: the IDX header announces {ndim} dimensions but the file ends after "
                           f"{len(data)} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != need:
        raise DatasetError(f"{path}: an IDX array of shape {tuple(dims)} needs {need} bytes of data, the file has "
                           f"{len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


# ---------------------------------------------------------------------------------------------------- sources
class Source:
    """Where the images come from: sorted classes of items, each item loadable as a Pillow image (L or RGB)."""

    kind = "source"
    default_channels = 3
    default_invert = False
    default_val_percent = 25  # when create_dataset is given none
    keeps_every_class = False  # True: classes keep their index even with too few images (a labels file's)

    def categories(self, max_per_class: int | None) -> list[tuple[str, list]]:
        """(class name, items) in label order; items in listing order, at most `max_per_class` of them."""
        raise NotImplementedError

    def image(self, item):
        raise NotImplementedError

    def path(self, item, class_name: str) -> str:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"type": self.kind}


class FolderSource(Source):
    """A folder of class sub-folders of image files (searched recursively), as DIGITS' parse_folder reads it."""

    kind = "folder"

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def categories(self, max_per_class):
        root = self.folder
        if not os.path.isdir(root):
            what = "does not exist" if not os.path.exists(root) else "is not a folder"
            raise DatasetError(f"image folder {root!r} {what}")
        try:
            names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
        except OSError as e:
            raise DatasetError(f"cannot list image folder {root!r}: {e.strerror or e}") from None
        if len(names) < 2:
            found = f"only {names[0]!r}" if names else "none"
            raise DatasetError(f"image folder {root!r} needs one sub-folder of images per class, at least two "
                               f"(found {found})")
        found = [(name.replace("_", " "), self._images_in(os.path.join(root, name), max_per_class))
                 for name in names]
        if not any(files for _, files in found):
            raise DatasetError(f"image folder {root!r}: its class sub-folders hold no images "
                               f"({' '.join(IMAGE_EXTENSIONS)})")
        return found

    @staticmethod
    def _images_in(folder: str, max_per_class):
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, name))
                    if max_per_class is not None and len(files) >= max_per_class:
                        return files
        return files

    def image(self, path):
        return load_image(path)

    def path(self, item, class_name):
        return item

    def describe(self):
        return {"type": self.kind, "folder": self.folder}


class ArraySource(Source):
    """Images held in memory: uint8 (N, H, W) gray or (N, H, W, 3) RGB with integer labels.  Classes are the
    labels' decimal names sorted as text, as parse_folder would sort the folders DIGITS' downloader makes."""

    kind = "arrays"
    default_channels = 1
    default_invert = True  # DIGITS' MNIST downloader stores 255 - pixel

    def __init__(self, images: np.ndarray, labels: np.ndarray, description: dict | None = None,
                 where: str = "images"):
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
            raise DatasetError(f"{where}: images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} "
                               f"{images.shape}")
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"{where}: {len(images)} images need as many integer labels, got {labels.dtype} "
                               f"{labels.shape}")
        if len(labels) and labels.min() < 0:
            raise DatasetError(f"{where}: labels must not be negative (found {int(labels.min())})")
        self.images, self.labels = images, labels.astype(np.int64)
        self.description = description or {"type": self.kind}
        self.default_channels = 1 if images.ndim == 3 else 3

    def categories(self, max_per_class):
        classes = sorted({str(v) for v in self.labels.tolist()})
        found = []
        for name in classes:
            items = np.flatnonzero(self.labels == int(name)).tolist()
            found.append((name, items[:max_per_class]))
        if not found:
            raise DatasetError(f"{self.description.get('images', self.kind)}: no images")
        return found

    def image(self, index):
        from PIL import Image

        return Image.fromarray(self.images[index])

    def path(self, index, class_name):
        return f"{int(self.labels[index])}/{index:05d}.png"

    def describe(self):
        return dict(self.description)


def idx_source(images: str, labels: str) -> ArraySource:
    """MNIST-style IDX image and label files."""
    pixels, classes = read_idx(images), read_idx(labels)
    if pixels.ndim != 3 or pixels.dtype != np.uint8:
        raise DatasetError(f"{images}: expected unsigned-byte images of 3 dimensions (count, rows, columns), got "
                           f"{pixels.dtype} {pixels.shape}")
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
        raise DatasetError(f"{labels}: expected integer labels of 1 dimension, got {classes.dtype} {classes.shape}")
    if len(classes) != len(pixels):
        raise DatasetError(f"{images} holds {len(pixels)} images but {labels} holds {len(classes)} labels")
    description = {"type": "mnist-idx", "images": os.path.abspath(images), "labels": os.path.abspath(labels)}
    return ArraySource(pixels, classes, description, where=images)


def mnist_idx_source(folder: str, part: str = "train") -> ArraySource:
    """The MNIST IDX files of `part` ('train' or 'test') in `folder`, under any of the names in MNIST_FILES."""
    if part not in MNIST_FILES:
        raise DatasetError(f"the MNIST part must be 'train' or 'test', got {part!r}")
    if not os.path.isdir(folder):
        raise DatasetError(f"MNIST folder {folder!r} does not exist or is not a folder")
    found = []
    for names in MNIST_FILES[part]:
        path = next((os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))), None)
        if path is None:
            raise DatasetError(f"MNIST folder {folder!r} has none of {', '.join(names)}")
        found.append(path)
    source = idx_source(*found)
    source.description["part"] = part
    return source


def bundled_source() -> ArraySource:
    """The 5,000 MNIST digits bundled with caffelike (500 per class)."""
    from caffelike.data.bundled import mnist_5k

    images, labels = mnist_5k()
    return ArraySource(images, labels, {"type": "bundled", "name": "caffelike.data.mnist_5k"})


def _as_source(source) -> Source:
    if isinstance(source, Source):
        return source
    if source == "bundled":
        return bundled_source()
    raise DatasetError(f"unknown dataset source {source!r}: give 'bundled' or a Source (FolderSource(path), "
                       "mnist_idx_source(folder), idx_source(images, labels), ArraySource(images, labels))")


# ----------------------------------------------------------------------------------------------------- images
def load_image(path: str):
    """An image file as DIGITS' load_image returns it: a Pillow image in mode L or RGB, transparency composited
    on white, CMYK/YCbCr converted.  An unreadable file is an error that names it."""
    from PIL import Image

    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Exception as e:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise DatasetError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None
    if im.mode in ("L", "RGB"):
        return im
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("LA", "La"):
        flat = Image.new("L", im.size, 255)
        flat.paste(im.convert("L"), mask=im.convert("RGBA"))
        return flat
    if im.mode in ("CMYK", "YCbCr"):
        return im.convert("RGB")
    if im.mode in ("P", "PA", "RGBA", "RGBa"):
        flat = Image.new("RGB", im.size, (255, 255, 255))
        rgba = im.convert("RGBA")
        flat.paste(rgba.convert("RGB"), mask=rgba)
        return flat
    raise DatasetError(f"{path}: image mode {im.mode!r} is not supported (DIGITS reads 8-bit gray, RGB, "
                       "palette, CMYK and YCbCr images)")
