"""Caffe's DataTransformer (src/caffe/data_transformer.cpp): mirror, crop, mean subtraction and scaling of one
sample, channel-first in and out.

For every image, in this order:
  1. do_mirror = mirror && Rand(2)                 (drawn first; in TRAIN *and* TEST when `mirror: true`)
  2. crop offsets: TRAIN  h_off = Rand(H - crop + 1), w_off = Rand(W - crop + 1)
                   TEST   h_off = (H - crop) / 2,    w_off = (W - crop) / 2   (integer division)
  3. out[c, h, w'] = (in[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale
     with w' = crop_w - 1 - w when mirrored, else w; `mean` is the mean_file image at the *uncropped*
     position, or mean_value (one value, or one per channel).
The arithmetic is float32 `(x - mean) * scale`, element by element, so results are bit-identical to Caffe's.

Randomness: Caffe's Rand(n) is `rng() % n` on a per-transformer generator seeded from the global RNG.  Here the
generator is a numpy Generator seeded from torch's global generator (`caffelike.set_random_seed` seeds it), and
the raw draws of a batch can be taken in order ahead of time (`draw`) and applied later by any thread, which is
what keeps prefetched batches identical to a synchronous read.  The values are reproducible, not Caffe's own
(Caffe uses boost's mt19937).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

# Raw draws per sample: mirror, h_off, w_off.
DRAWS = 3


def caffe_rng_rand() -> int:
    """One unsigned 32-bit value from the global generator (Caffe's caffe_rng_rand), used to seed the data
    layers' own generators."""
    return int(torch.randint(0, 2**32, (1,), dtype=torch.int64).item())


def new_generator() -> np.random.Generator:
    """A numpy Generator seeded from the global generator, so `set_random_seed` makes data order reproducible."""
    return np.random.default_rng(caffe_rng_rand())


def load_mean_file(path: str, where: str = "DataTransformer") -> np.ndarray:
    """A mean.binaryproto (BlobProto [1, C, H, W], legacy dims or shape) as float32 (C, H, W)."""
    from caffelike.format.blobproto import blob_to_array

    if not os.path.isfile(path):
        raise CaffeError(f"{where}: mean_file {path!r} not found (relative paths are resolved against the "
                         f"working directory: {os.path.abspath(path)})")
    bp = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            bp.ParseFromString(f.read())
        mean = blob_to_array(bp, where=f"{where}: mean_file {path!r}")
    except CaffeError:
        raise
    except Exception as e:
        raise CaffeError(f"{where}: mean_file {path!r} is not a binary BlobProto ({e})") from None
    if mean.ndim == 4:
        mean = mean[0]
    if mean.ndim != 3:
        raise CaffeError(f"{where}: mean_file {path!r} has shape {tuple(mean.shape)}; a mean image is a BlobProto "
                         "of shape (1, C, H, W)")
    return np.ascontiguousarray(mean, dtype=np.float32)


def _dims(shape) -> str:
    return "x".join(str(int(d)) for d in shape)


class DataTransformer:
    """One layer's TransformationParameter applied to (C, H, W) samples (uint8 or float), giving float32
    (C, crop or H, crop or W).  `where` names the layer in errors."""

    def __init__(self, param: caffe_pb2.TransformationParameter, phase: int, where: str = "DataTransformer"):
        self.phase = phase
        self.where = where
        self.scale = np.float32(param.scale)
        self.crop = int(param.crop_size)
        self.mirror = bool(param.mirror)
        if param.force_color and param.force_gray:
            raise CaffeError(f"{where}: cannot set both force_color and force_gray in transform_param")
        self.mean_file = param.mean_file
        self.mean: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise CaffeError(f"{where}: Cannot specify mean_file and mean_value at the same time")
            self.mean = load_mean_file(param.mean_file, where)
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        self.random = self.mirror or (phase == caffe_pb2.TRAIN and self.crop > 0)
        self.rng = new_generator() if self.random else None

    # ------------------------------------------------------------------------------------------------ shapes
    def output_shape(self, shape) -> tuple[int, int, int]:
        """(C, H, W) of a transformed sample of input shape (C, H, W) (Caffe's InferBlobShape)."""
        c, h, w = (int(d) for d in shape)
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def check(self, shape, where: str = "") -> None:
        """Raise if a sample of this (C, H, W) shape cannot be transformed (crop too large, mean mismatch)."""
        c, h, w = (int(d) for d in shape)
        at = f" ({where})" if where else ""
        if self.crop and (h < self.crop or w < self.crop):
            raise CaffeError(f"{self.where}: crop_size {self.crop} is larger than the image{at}, "
                             f"which is {_dims(shape)} (channels x height x width)")
        if self.mean is not None and self.mean.shape != (c, h, w):
            raise CaffeError(f"{self.where}: the mean_file {self.mean_file!r} is {_dims(self.mean.shape)} but "
                             f"the image{at} is {_dims(shape)}; the mean must have the full, uncropped image shape "
                             "(channels x height x width)")
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise CaffeError(f"{self.where}: Specify either 1 mean_value or as many as channels: "
                             f"{len(self.mean_values)} mean_value for an image of {c} channels{at}")

    # ------------------------------------------------------------------------------------------------ randomness
    def draw(self, n: int) -> np.ndarray | None:
        """Raw draws for the next n samples, in order (None when this transformer draws nothing)."""
        if self.rng is None:
            return None
        return self.rng.integers(0, 2**32, size=(n, DRAWS), dtype=np.uint64)

    def _choose(self, h: int, w: int, raw) -> tuple[bool, int, int]:
        do_mirror = bool(self.mirror and raw is not None and raw[0] % 2)
        if not self.crop:
            return do_mirror, 0, 0
        if self.phase == caffe_pb2.TRAIN:
            return do_mirror, int(raw[1] % (h - self.crop + 1)), int(raw[2] % (w - self.crop + 1))
        return do_mirror, (h - self.crop) // 2, (w - self.crop) // 2

    # ------------------------------------------------------------------------------------------------ transform
    def __call__(self, pixels: np.ndarray, raw=None, out: np.ndarray | None = None, where: str = "") -> np.ndarray:
        """Transform one (C, H, W) sample into `out` (float32 (C, h, w), allocated when None).  `raw` is this
        sample's row of `draw(n)`; when None and the transformer is random, it draws for itself."""
        c, h, w = pixels.shape
        self.check(pixels.shape, where)
        if raw is None and self.rng is not None:
            raw = self.draw(1)[0]
        do_mirror, h_off, w_off = self._choose(h, w, raw)
        oc, oh, ow = self.output_shape(pixels.shape)
        if out is None:
            out = np.empty((oc, oh, ow), dtype=np.float32)
        elif out.shape != (oc, oh, ow):
            raise CaffeError(f"{self.where}: the image{f' ({where})' if where else ''} is {_dims(pixels.shape)}, "
                             f"transformed {_dims((oc, oh, ow))}, but the batch holds {_dims(out.shape)} items "
                             "(the shape of a batch comes from its first image; all must agree)")
        cols = slice(w_off + ow - 1, w_off - 1 if w_off else None, -1) if do_mirror else slice(w_off, w_off + ow)
        return self._apply(pixels[:, h_off:h_off + oh, cols], (slice(h_off, h_off + oh), cols), c, out)

    def transform_batch(self, pixels: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Transform N samples of one shape, (N, C, H, W), into `out` (N, C, h, w) at once.  Only for a
        transformer that draws nothing (no mirror, no training crop): every sample then gets the same window.
        The same operations as calling it on each sample, so the same bits, in a few numpy calls that release
        the GIL (per-sample calls hold it for microseconds each, which the training thread waits out)."""
        if self.random:
            raise ValueError("transform_batch needs a transformer without random draws; call it per sample")
        _, c, h, w = pixels.shape
        _, h_off, w_off = self._choose(h, w, None)
        _, oh, ow = self.output_shape((c, h, w))
        window = (slice(h_off, h_off + oh), slice(w_off, w_off + ow))
        return self._apply(pixels[(slice(None), slice(None)) + window], window, c, out)

    def _apply(self, src: np.ndarray, window: tuple[slice, slice], c: int, out: np.ndarray) -> np.ndarray:
        """out = (src - mean[window]) * scale, src being the (..., C, h, w) window of the input."""
        if self.mean is not None:
            np.subtract(src, self.mean[(slice(None),) + window], out=out, dtype=np.float32)
        elif self.mean_values is not None:
            values = self.mean_values if len(self.mean_values) == c else np.repeat(self.mean_values, c)
            np.subtract(src, values[:, None, None], out=out, dtype=np.float32)
        else:
            out[...] = src
        if self.scale != 1:
            np.multiply(out, self.scale, out=out)
        return out
