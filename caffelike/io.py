"""pycaffe's `caffe.io`: BlobProto and Datum conversions, the `Transformer` that turns HxWxK images into net
input, and the image helpers (`load_image`, `resize_image`, `oversample`) behind `caffe.Classifier`.

pycaffe reads and resizes images with scikit-image (and scipy for odd channel counts); here Pillow reads them
and numpy resizes them, reproducing the arithmetic pycaffe got from scikit-image 0.13 (the version current at
Caffe 1.0): see `resize_image` for what is exact and what is approximated.

Deliberate differences from pycaffe, all where pycaffe crashes or surprises:
  * errors are CaffeErrors (RuntimeErrors) naming the input, file or shape at fault; `TransformerError` is
    also a ValueError, as pycaffe's set_mean raises;
  * `preprocess` never writes into the caller's array (pycaffe's does when it gets float32 data and no
    channel swap); a 2-D (H, W) image is taken as (H, W, 1);
  * `deprocess` drops only a leading batch axis of 1 (pycaffe squeezes every axis of length 1, which breaks
    single-channel nets), so it returns exactly the (H, W, K) layout `preprocess` took;
  * `set_mean` accepts a constant mean and a 2-D (H, W) mean (pycaffe divides by zero / mis-transposes);
  * `load_image` drops the alpha of gray+alpha images too (pycaffe returns them as HxWx2).
"""
from __future__ import annotations

import os

import numpy as np

from caffelike.data.datum import array_to_datum, datum_to_array  # noqa: F401  (re-exported: pycaffe's names)
from caffelike.errors import CaffeError
from caffelike.format.blobproto import (  # noqa: F401  (re-exported: pycaffe's names)
    array_to_blobproto,
    arraylist_to_blobprotovector_str,
    blobproto_to_array,
    blobprotovector_str_to_arraylist,
)

__all__ = [
    "blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
    "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "Transformer", "load_image",
    "resize_image", "oversample", "ImageError", "TransformerError",
]


class ImageError(CaffeError):
    """An image file that cannot be read, or an image array of a shape the helpers cannot work with."""


class TransformerError(CaffeError, ValueError):
    """A Transformer asked about an input it does not know, or given a setting that does not fit the input."""


# --------------------------------------------------------------------------------------------------- Transformer
class Transformer:
    """Turns HxWxK images into the net's (C, H, W) input and back, per input blob.

    `inputs` maps input names to their blob shapes (N, C, H, W).  `preprocess` does, in this order: cast to
    float32, resize to the input's H, W (when they differ), transpose, channel swap (indexing the first axis
    after the transpose), `*= raw_scale`, `-= mean`, `*= input_scale`.  The arithmetic is numpy's in-place
    operations on the float32 array with the values as given, so the results are the same as pycaffe's.
    """

    def __init__(self, inputs: dict):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, in_: str) -> tuple[int, ...]:
        if in_ not in self.inputs:
            raise TransformerError(f"{in_!r} is not one of the Transformer's inputs: {sorted(self.inputs)}")
        return self.inputs[in_]

    # ---------------------------------------------------------------------------------------------- settings
    def set_transpose(self, in_: str, order) -> None:
        """The axis order that turns the image into the blob layout, e.g. (2, 0, 1) for HxWxK -> KxHxW."""
        shape = self._check_input(in_)
        order = tuple(int(i) for i in order)
        if len(order) != len(shape) - 1:
            raise TransformerError(f"transpose order {order} for input {in_!r} has {len(order)} axes; the input "
                                   f"{shape} needs {len(shape) - 1} (its axes without the batch axis)")
        if sorted(order) != list(range(len(order))):
            raise TransformerError(f"transpose order {order} for input {in_!r} is not a permutation of "
                                   f"{tuple(range(len(order)))}")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order) -> None:
        """A new channel order, e.g. (2, 1, 0) to turn RGB into Caffe's BGR."""
        shape = self._check_input(in_)
        order = tuple(int(i) for i in order)
        if len(shape) < 2 or len(order) != shape[1]:
            channels = shape[1] if len(shape) > 1 else "no"
            raise TransformerError(f"channel swap {order} for input {in_!r} has {len(order)} entries; the input "
                                   f"{shape} has {channels} channels")
        if any(not 0 <= i < len(order) for i in order):
            raise TransformerError(f"channel swap {order} for input {in_!r} names a channel outside "
                                   f"0..{len(order) - 1}")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale) -> None:
        """Multiply the raw image by `scale` (e.g. 255 for load_image's [0, 1] images), before the mean."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean) -> None:
        """Subtract `mean`: a 1-D array of one value per channel, or a (C, H, W) image (a (H, W) one is taken as
        one channel).  An image mean of another size is resized to the input's H, W as pycaffe does (min-max
        normalised, `resize_image`, scaled back)."""
        shape = self._check_input(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if len(shape) < 2 or mean.shape[0] != shape[1]:
                raise TransformerError(f"mean for input {in_!r} has {mean.shape[0]} channels; the input {shape} "
                                       f"has {shape[1] if len(shape) > 1 else 'no'} channels")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if mean.ndim == 2:
                mean = mean[np.newaxis]
            if mean.ndim != 3:
                raise TransformerError(f"mean for input {in_!r} has shape {mean.shape}; it must be (C,) or "
                                       "(C, H, W)")
            if mean.shape != shape[1:]:
                if len(shape) != 4 or mean.shape[0] != shape[1]:
                    raise TransformerError(f"mean for input {in_!r} has shape {mean.shape}, which cannot be fit "
                                           f"to the input {shape}: the channel counts differ")
                m_min, m_max = mean.min(), mean.max()
                if m_max > m_min:
                    normal = (mean - m_min) / (m_max - m_min)
                    resized = resize_image(normal.transpose((1, 2, 0)), shape[2:]).transpose((2, 0, 1))
                    mean = resized * (m_max - m_min) + m_min
                else:
                    mean = np.full(shape[1:], m_min, dtype=mean.dtype)
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale) -> None:
        """Multiply by `scale` after the mean is subtracted (e.g. 1/256 for LeNet, 0.017 for some nets)."""
        self._check_input(in_)
        self.input_scale[in_] = scale

    # ---------------------------------------------------------------------------------------------- transforms
    def preprocess(self, in_: str, data) -> np.ndarray:
        """An HxWxK image (any dtype) as a float32 array in the blob layout of input `in_`."""
        shape = self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)  # a copy: the in-place steps below must not reach the caller
        if caffe_in.ndim == 2:
            caffe_in = caffe_in[:, :, np.newaxis]
        in_dims = shape[2:]
        if len(in_dims) == 2 and caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        transpose = self.transpose.get(in_)
        if transpose is not None:
            if caffe_in.ndim != len(transpose):
                raise TransformerError(f"preprocess {in_!r}: the image has shape {caffe_in.shape} but the "
                                       f"transpose {transpose} needs {len(transpose)} axes (H x W x K)")
            caffe_in = caffe_in.transpose(transpose)
            if caffe_in.shape != shape[1:]:
                raise TransformerError(f"preprocess {in_!r}: the image becomes {caffe_in.shape} after the "
                                       f"transpose; the input needs {shape[1:]} (check its channel count)")
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            caffe_in = caffe_in[list(channel_swap), :, :]
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            caffe_in *= raw_scale
        mean = self.mean.get(in_)
        if mean is not None:
            caffe_in -= mean
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            caffe_in *= input_scale
        return caffe_in

    def deprocess(self, in_: str, data) -> np.ndarray:
        """The inverse of `preprocess` (all but the resize): blob layout (C, H, W), or (1, C, H, W), back to an
        HxWxK image in the original scale."""
        self._check_input(in_)
        decaf_in = np.array(data, copy=True)
        if decaf_in.ndim == 4 and decaf_in.shape[0] == 1:
            decaf_in = decaf_in[0]
        input_scale = self.input_scale.get(in_)
        if input_scale is not None:
            decaf_in /= input_scale
        mean = self.mean.get(in_)
        if mean is not None:
            decaf_in += mean
        raw_scale = self.raw_scale.get(in_)
        if raw_scale is not None:
            decaf_in /= raw_scale
        channel_swap = self.channel_swap.get(in_)
        if channel_swap is not None:
            decaf_in = decaf_in[np.argsort(channel_swap), :, :]
        transpose = self.transpose.get(in_)
        if transpose is not None:
            decaf_in = decaf_in.transpose(np.argsort(transpose))
        return decaf_in


# ------------------------------------------------------------------------------------------------------- images
_REC709 = np.array([0.2125, 0.7154, 0.0721])  # scikit-image's rgb2gray weights, which pycaffe's gray reads use


def _pillow_to_float(im, filename: str) -> np.ndarray:
    """A decoded Pillow image as float64 in [0, 1] (scikit-image's img_as_float scaling), (H, W) for one
    channel or (H, W, 3) for colour, alpha dropped."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float64)
    if mode in ("L", "LA", "La"):
        return np.asarray(im.convert("L") if mode != "L" else im, dtype=np.float64) * (1.0 / 255)
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(im).astype(np.int64)
        if mode == "I" and (wide.min() < 0 or wide.max() > 65535):
            raise ImageError(f"load_image: {filename!r} holds 32-bit integer pixels; only 8- and 16-bit images "
                             "are supported")
        return wide * (1.0 / 65535)  # Pillow opens 16-bit gray files as I;16 or I
    if mode == "F":
        return np.asarray(im, dtype=np.float64)
    if mode not in ("RGB", "RGBA", "RGBa"):
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float64)[:, :, :3] * (1.0 / 255)


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1]: RGB (H, W, 3) when `color` (gray images tiled to 3 channels), else
    (H, W, 1) (colour images converted with scikit-image's Rec. 709 weights, as pycaffe's as_grey read does).
    Alpha is dropped, also before a gray conversion (recent scikit-image composites RGBA over white first, so
    pycaffe's gray read of an RGBA file depends on its version).  Read with Pillow: JPEG pixels may differ by
    1/255 from another libjpeg's, and EXIF orientation is not applied (scikit-image does not apply it either).
    PNG and JPEG reads were checked equal to pycaffe's on scikit-image 0.26."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(filename)
    try:
        with Image.open(path) as im:
            im.load()
            pixels = _pillow_to_float(im, path)
    except FileNotFoundError:
        raise ImageError(f"load_image: no such file {path!r}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"load_image: could not decode {path!r} as an image: {e}") from None
    if pixels.ndim == 3 and not color:
        pixels = pixels @ _REC709
    img = pixels.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def _axis_taps(n_in: int, n_out: int, corner_aligned: bool) -> np.ndarray:
    """Source coordinates of the n_out output samples along one axis: pixel centres aligned (scikit-image's
    resize) or first and last pixels aligned (scipy.ndimage.zoom before scipy 1.6)."""
    i = np.arange(n_out, dtype=np.float64)
    if corner_aligned:
        return i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    return (i + 0.5) * (n_in / n_out) - 0.5


def _linear_along(a: np.ndarray, axis: int, pos: np.ndarray) -> np.ndarray:
    """Linear interpolation of `a` along `axis` at `pos`, samples outside the array read as 0 (scikit-image's
    mode='constant' with cval 0): (1 - f) * a[i0] + f * a[i0 + 1]."""
    n = a.shape[axis]
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    i1 = i0 + 1
    v0 = np.take(a, np.clip(i0, 0, n - 1), axis=axis)
    v1 = np.take(a, np.clip(i1, 0, n - 1), axis=axis)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    v0 = np.where(((i0 >= 0) & (i0 < n)).reshape(shape), v0, 0.0)
    v1 = np.where(((i1 >= 0) & (i1 < n)).reshape(shape), v1, 0.0)
    frac = frac.reshape(shape)
    return (1 - frac) * v0 + frac * v1


def _resample(a: np.ndarray, h: int, w: int, order: int, corner_aligned: bool) -> np.ndarray:
    """a (H, W, K) float64 resampled to (h, w, K) with interpolation `order`."""
    rows, cols = _axis_taps(a.shape[0], h, corner_aligned), _axis_taps(a.shape[1], w, corner_aligned)
    if order == 0:
        # C's round() (half away from zero); every coordinate is > -0.5, so floor(x + 0.5) is the same
        r = np.clip(np.floor(rows + 0.5).astype(np.int64), 0, a.shape[0] - 1)
        c = np.clip(np.floor(cols + 0.5).astype(np.int64), 0, a.shape[1] - 1)
        return a[r][:, c]
    if order == 1:
        # columns first, then rows: scikit-image's (1 - dr) * top + dr * bottom with top/bottom along columns
        return _linear_along(_linear_along(a, 1, cols), 0, rows)
    if 2 <= order <= 5:
        import torch
        import torch.nn.functional as F

        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]
        out = F.interpolate(t, size=(h, w), mode="bicubic", align_corners=corner_aligned)
        return out[0].numpy().transpose(1, 2, 0)
    raise ImageError(f"resize_image: interp_order must be 0..5, got {order}")


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """An (H, W, K) image resized to new_dims = (h, w), as float32.

    For K = 1 or 3, as pycaffe (scikit-image): the image is min-max normalised, resampled with pixel centres
    aligned and samples outside the image read as 0 (mode='constant': upscaling blends the border pixels toward
    the image minimum), clipped to the normalised range, and scaled back; a constant image stays constant.
    Other K, as pycaffe (scipy.ndimage.zoom): resampled with the corner pixels aligned, not normalised.

    interp_order 0 (nearest) and 1 (bilinear) reproduce scikit-image 0.13's arithmetic in float64, with no
    anti-aliasing on downscale (scikit-image >= 0.15 blurs before downscaling unless told not to; pycaffe does
    not say, so its output depends on the installed version).  Orders 2..5 (B-splines in scikit-image/scipy)
    are approximated by bicubic convolution (torch's, a = -0.75): close to, not equal to, the spline values.
    Checked against pycaffe's resize_image on scikit-image 0.26 (anti_aliasing=False) and scipy 1.17: orders 0
    and 1 agree to 2 float32 ulps (0.26 rescales in float32, 0.13 in float64 as here).
    A 2-D image is taken as (H, W, 1) and returned 2-D.
    """
    im = np.asarray(im)
    flat = im.ndim == 2
    if flat:
        im = im[:, :, np.newaxis]
    if im.ndim != 3 or im.size == 0:
        raise ImageError(f"resize_image needs a non-empty H x W x K image, got shape {im.shape}")
    try:
        h, w = (int(d) for d in new_dims)
    except (TypeError, ValueError):
        raise ImageError(f"resize_image: new_dims must be (height, width), got {new_dims!r}") from None
    if h <= 0 or w <= 0:
        raise ImageError(f"resize_image: new_dims must be positive, got ({h}, {w})")
    order = int(interp_order)
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if im_max > im_min:
            # the same dtypes as pycaffe: the normalisation is done in the image's own precision
            im_std = (im - im_min) / (im_max - im_min)
            std64 = np.asarray(im_std, dtype=np.float64)
            resized_std = _resample(std64, h, w, order, corner_aligned=False)
            if order != 0:
                resized_std = np.clip(resized_std, std64.min(), std64.max())  # scikit-image's clip=True
            resized = resized_std * (im_max - im_min) + im_min
        else:
            resized = np.full((h, w, im.shape[-1]), im_min, dtype=np.float32)
    else:
        resized = _resample(im.astype(np.float64), h, w, order, corner_aligned=True)
    out = resized.astype(np.float32)
    return out[:, :, 0] if flat else out


def oversample(images, crop_dims) -> np.ndarray:
    """Ten crops of crop_dims = (h, w) from each (H, W, K) image: the corners (0, 0), (0, W-w), (H-h, 0),
    (H-h, W-w), the centre ((H-h)//2, (W-w)//2), then those five mirrored left-right.  Returns float32
    (10 * N, h, w, K), the crops of image i at rows 10*i .. 10*i+9."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ImageError("oversample needs at least one image")
    shape = images[0].shape
    if len(shape) != 3 or any(im.shape != shape for im in images):
        shapes = sorted({im.shape for im in images})
        raise ImageError(f"oversample needs H x W x K images all of one shape, got {shapes}")
    ch, cw = (int(d) for d in crop_dims)
    height, width = shape[:2]
    if not (0 < ch <= height and 0 < cw <= width):
        raise ImageError(f"oversample: crop ({ch}, {cw}) does not fit in images of {height} x {width}")
    # pycaffe's centre is int(H/2 - h/2); both ends share the fraction, so this is (H - h) // 2
    starts = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw),
              ((height - ch) // 2, (width - cw) // 2)]
    crops = np.empty((10 * len(images), ch, cw, shape[2]), dtype=np.float32)
    for i, im in enumerate(images):
        for k, (y, x) in enumerate(starts):
            crop = im[y:y + ch, x:x + cw, :]
            crops[10 * i + k] = crop
            crops[10 * i + 5 + k] = crop[:, ::-1, :]
    return crops
