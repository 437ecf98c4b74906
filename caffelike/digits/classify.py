"""Classify one image with a deploy net, as DIGITS' "Test a single image" does (top-5 with labels.txt).

Preprocessing, for a net whose single input blob is (N, C, H, W):
  1. the image file is decoded as Caffe's DataLayer sees it: gray (C = 1) or BGR (C = 3), uint8, channel-first;
  2. it is squashed to H x W (aspect ratio not kept) with OpenCV's INTER_LINEAR arithmetic;
  3. x = (pixels - mean) * scale, in float32, element by element, like Caffe's DataTransformer; the mean is a
     mean.binaryproto image, resized to H x W first when its size differs (as DIGITS does);
  4. the input blob is reshaped to (1, C, H, W), filled, and the net run forward once.
The last output blob is taken as the class probabilities; the five highest, labelled from labels.txt, are the
prediction.  Differences from DIGITS: decoding and resizing follow Caffe's own tools (caffelike.data.datum) rather than
PIL/scipy; an optional `scale` multiplies after the mean subtraction; a mean of the right size is subtracted as
stored (DIGITS casts it to uint8 first, the same for its integer-valued means).
"""
from __future__ import annotations

import logging
import os
from collections import namedtuple
from typing import Iterable, Sequence

import numpy as np

from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")

Prediction = namedtuple("Prediction", "label probability index")

TOP_K = 5

def input_blob(net) -> str:
    """The name of the net's one input blob, which must be 4-D (N, C, H, W)."""
    inputs = list(net.inputs)
    if len(inputs) != 1:
        raise CaffeError(f"classify needs a deploy net with exactly one input blob (the image); this net has "
                         f"{len(inputs)}: {inputs}")
    name = inputs[0]
    shape = tuple(net.blobs[name].data.shape)
    if len(shape) != 4:
        raise CaffeError(f"classify needs the input blob '{name}' to be 4-D (N, C, H, W); it has shape "
                         f"{_dims(shape)}")
    return name


def load_image(path: str, height: int, width: int, color: bool) -> np.ndarray:
    """The image file at `path` as uint8 (C, height, width): BGR when `color`, else gray, squashed to the size.
    Undecodable or missing files raise a CaffeError naming the file."""
    from caffelike.data.datum import read_image

    return read_image(os.fspath(path), is_color=color, new_height=height, new_width=width, where=os.fspath(path))


def load_mean(mean, shape: Sequence[int], where: str = "classify") -> np.ndarray:
    """A mean image (a mean.binaryproto path, or an array (C, H, W) / (1, C, H, W) / (C,) per-channel values,
    channels in the net's order: B, G, R) as float32 of `shape` (C, H, W).  An image of another height or width is resized as DIGITS does: cast to
    uint8, then resized (INTER_LINEAR here)."""
    from caffelike.data.datum import resize_linear
    from caffelike.data.transformer import load_mean_file

    c, h, w = (int(d) for d in shape)
    if isinstance(mean, (str, os.PathLike)):
        source = os.fspath(mean)
        array = load_mean_file(source, where)
    else:
        source = "the mean array"
        array = np.asarray(mean, dtype=np.float32)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 1:  # one value per channel (DIGITS' "pixel" mean)
            array = np.broadcast_to(array[:, None, None], (len(array), h, w))
    if array.ndim != 3:
        raise CaffeError(f"{where}: {source} has shape {_dims(array.shape)}; a mean is (C, H, W)")
    if array.shape[0] != c:
        raise CaffeError(f"{where}: {source} has {array.shape[0]} channel(s) but the net's input has {c}")
    if array.shape[1:] != (h, w):
        log.info("Resizing the mean from %s to %dx%d", _dims(array.shape[1:]), h, w)
        as_bytes = np.clip(array, 0, 255).astype(np.uint8)
        array = resize_linear(as_bytes, h, w)
    return np.ascontiguousarray(array, dtype=np.float32)


def preprocess(pixels: np.ndarray, mean: np.ndarray | None = None, scale: float | None = None) -> np.ndarray:
    """float32 (pixels - mean) * scale, each step in float32 as Caffe's DataTransformer computes it."""
    x = pixels.astype(np.float32)
    if mean is not None:
        x = x - mean.astype(np.float32)
    if scale is not None and scale != 1:
        x = x * np.float32(scale)
    return x


def read_labels(path: str) -> list[str]:
    """labels.txt: one label per line, blank lines skipped (DIGITS' reading)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise CaffeError(f"cannot read labels file {path!r}: {e.strerror or e}") from None


def top_predictions(scores: np.ndarray, labels: Sequence[str] | None = None, k: int = TOP_K) -> list[Prediction]:
    """The k highest scores, best first (ties: lower index first).  With labels, indices past the end of the
    list are ignored (as DIGITS ignores them); without, the label is the class index."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="stable")
    if labels is not None:
        order = order[order < len(labels)]
    return [Prediction(labels[i] if labels is not None else str(int(i)), float(scores[i]), int(i))
            for i in order[:k]]


def classify_pixels(net, pixels: np.ndarray, mean=None, labels=None, scale: float | None = None
                    ) -> list[Prediction]:
    """Run `net` on one uint8 (C, H, W) image already of the input size; return the top-5 predictions.
    `mean`: see load_mean; `labels`: a labels.txt path or a list of names."""
    name = input_blob(net)
    _, c, h, w = net.blobs[name].data.shape
    if tuple(pixels.shape) != (c, h, w):
        raise CaffeError(f"the image is {_dims(pixels.shape)} but the input blob '{name}' takes "
                         f"{_dims((c, h, w))} (channels x height x width)")
    mean_image = load_mean(mean, (c, h, w)) if mean is not None else None
    x = preprocess(pixels, mean_image, scale)
    if net.blobs[name].data.shape[0] != 1:
        net.blobs[name].reshape(1, c, h, w)
    net.blobs[name].data[...] = x
    net.forward()
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels(os.fspath(labels))
    out_name = list(net.outputs)[-1]
    scores = np.asarray(net.blobs[out_name].data)
    scores = scores.reshape(scores.shape[0], -1)[0] if scores.ndim else scores.reshape(1)
    if labels is not None and len(labels) != scores.size:
        log.warning("labels file has %d labels but the output '%s' has %d values", len(labels), out_name,
                    scores.size)
    if scores.min() < 0 or abs(float(scores.sum()) - 1) > 1e-3:
        log.warning("the output '%s' is not a probability distribution (does the deploy net end with a Softmax "
                    "layer?); its values are shown as they are", out_name)
    return top_predictions(scores, labels)


def classify_image(net, image_path: str, mean=None, labels=None, scale: float | None = None,
                   color: bool | None = None):
    """Classify the image file at `image_path`: returns (top-5 predictions, net), the net holding every blob
    of the forward pass.  `color` None reads gray for a 1-channel input and colour for a 3-channel one."""
    name = input_blob(net)
    _, c, h, w = net.blobs[name].data.shape
    color = image_mode(c, color, name)
    pixels = load_image(image_path, h, w, color)
    return classify_pixels(net, pixels, mean, labels, scale), net


def image_mode(channels: int, color: bool | None, blob: str = "data") -> bool:
    """Whether to read the image in colour for an input of `channels` channels, checking an explicit choice."""
    if color is None:
        if channels not in (1, 3):
            raise CaffeError(f"the input blob '{blob}' has {channels} channels; images are read as gray (1) or "
                             "BGR (3)")
        return channels == 3
    if (3 if color else 1) != channels:
        raise CaffeError(f"the image is read in {'colour (3 channels)' if color else 'gray (1 channel)'} but the "
                         f"input blob '{blob}' has {channels} channel(s); drop --gray/--color or use the other")
    return color



def _dims(shape: Iterable[int]) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"

