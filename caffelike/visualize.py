"""Classify one image with a deploy net, and show what the net did with it, as DIGITS' "Test a single image" page
does with "Show visualizations and statistics".

Preprocessing, for a net whose single input blob is (N, C, H, W):
  1. the image file is decoded as Caffe's DataLayer sees it: gray (C = 1) or BGR (C = 3), uint8, channel-first;
  2. it is squashed to H x W (aspect ratio not kept) with OpenCV's INTER_LINEAR arithmetic;
  3. x = (pixels - mean) * scale, in float32, element by element, like Caffe's DataTransformer; the mean is a
     mean.binaryproto image, resized to H x W first when its size differs (as DIGITS does);
  4. the input blob is reshaped to (1, C, H, W), filled, and the net run forward once.
The last output blob is taken as the class probabilities; the five highest, labelled from labels.txt, are the
prediction.

The report (`write_report`) is one self-contained HTML file: the input image, the top-5 table, then, walking the
layers in net order, each blob the first time it is seen (a layer's bottoms, then its parameters, then its tops)
with its statistics (shape, mean, std, min, max, a 20-bin histogram) and a picture.  Activations are those of the
first sample after the whole forward pass, so an in-place blob shows its final value.  Pictures: channels tiled
in a grid, gray for the net's input, RGB for three-channel data, DIGITS' jet heat map for everything else, scaled
per blob to [min, max] (Softmax outputs to [0, 1]).

Deliberate differences from DIGITS:
  - the image is decoded and resized like Caffe's own tools (caffelike.datum: OpenCV's INTER_LINEAR, alpha
    dropped) rather than with PIL/scipy (bilinear with antialiasing, alpha composited on white);
  - an optional `scale` multiplies after the mean subtraction (transform_param.scale; DIGITS has none, its
    deploy nets scale with a Power layer);
  - a mean of the right size is subtracted as stored (float); DIGITS casts it to uint8 first (the same for its
    own integer-valued means).  A mean of another size is cast to uint8 and resized, as DIGITS does;
  - every parameter blob is shown (DIGITS shows only the first), and InnerProduct weights are drawn as a
    matrix image (rows = outputs) instead of "Not shown";
  - a 2-D activation sample is drawn as one image, not as a grid of 1x1 tiles;
  - the histogram is an inline SVG bar chart rather than a C3 area spline; statistics also give min and max.
"""
from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import urllib.parse
from collections import namedtuple
from typing import Iterable, Sequence

import numpy as np

from caffelike.errors import CaffeError
from caffelike.weights import atomic_write

log = logging.getLogger("caffelike")

Prediction = namedtuple("Prediction", "label probability index")

TOP_K = 5
HIST_BINS = 20
MAX_SIDE = 1200      # DIGITS keeps at most this many pixels (tiles and padding) along each side of a picture
MIN_SIDE = 100       # ... and upscales small pictures (nearest neighbour) until the smaller side reaches this
MAX_UPSCALED = 2400  # but never beyond this along the longer side, so a 1 x 1000 strip stays reasonable
PAD_VALUE = 255      # white between tiles and in the unused cells of the grid

# DIGITS' jet colour map: the value of each colour at nine evenly spaced points of [0, 1], linearly
# interpolated in between (dark blue -> blue -> cyan -> yellow -> red -> dark red).
_JET_POINTS = np.linspace(0.0, 1.0, 9)
_JET_RED = (0, 0, 0, 0, .5, 1, 1, 1, .5)
_JET_GREEN = (0, 0, .5, 1, 1, 1, .5, 0, 0)
_JET_BLUE = (.5, 1, 1, 1, .5, 0, 0, 0, 0)


# ----------------------------------------------------------------------------------------------- preprocessing
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
    from caffelike.datum import read_image

    return read_image(os.fspath(path), is_color=color, new_height=height, new_width=width, where=os.fspath(path))


def load_mean(mean, shape: Sequence[int], where: str = "classify") -> np.ndarray:
    """A mean image (a mean.binaryproto path, or an array (C, H, W) / (1, C, H, W) / (C,) per-channel values,
    channels in the net's order: B, G, R) as float32 of `shape` (C, H, W).  An image of another height or width is resized as DIGITS does: cast to
    uint8, then resized (INTER_LINEAR here)."""
    from caffelike.datum import resize_linear
    from caffelike.transformer import load_mean_file

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


# ---------------------------------------------------------------------------------------------------- pictures
def jet_lut() -> np.ndarray:
    """(256, 3) uint8: the jet colour of each level 0..255."""
    x = np.arange(256) / 255.0
    lut = np.stack([np.interp(x, _JET_POINTS, c) for c in (_JET_RED, _JET_GREEN, _JET_BLUE)], axis=1)
    return np.floor(lut * 255 + 0.5).astype(np.uint8)


_JET = jet_lut()


def jet(levels: np.ndarray) -> np.ndarray:
    """uint8 levels (any shape) -> uint8 RGB (shape + (3,)) through the jet colour map."""
    return _JET[np.asarray(levels, dtype=np.uint8)]


def to_levels(a: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """float values -> uint8 levels, lo -> 0 and hi -> 255 (by default the finite min and max); a constant
    array maps to 0; NaN maps to 0 and infinities to the ends."""
    a = np.asarray(a, dtype=np.float64)
    finite = a[np.isfinite(a)]
    if lo is None:
        lo = float(finite.min()) if finite.size else 0.0
    if hi is None:
        hi = float(finite.max()) if finite.size else 0.0
    span = hi - lo
    if not span > 0:
        return np.zeros(a.shape, np.uint8)
    with np.errstate(invalid="ignore"):
        v = np.nan_to_num((a - lo) / span * 255.0, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of DIGITS' tile grid for n tiles: ceil(sqrt(n)) rows, one column fewer when that still
    holds them all."""
    if n <= 0:
        return 0, 0
    rows = math.ceil(math.sqrt(n))
    cols = rows - 1 if rows * (rows - 1) >= n else rows
    return rows, cols


def tile(tiles: np.ndarray, pad: int | None = None, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Lay out uint8 tiles (N, H, W) or (N, H, W, 3) row by row in a grid_shape(N) grid, `pad` pixels of
    `pad_value` between them (default: 1, or 0 for 1x1 tiles, which then read as one image of values)."""
    tiles = np.asarray(tiles)
    n, h, w = tiles.shape[:3]
    if pad is None:
        pad = 1 if w > 1 else 0
    rows, cols = grid_shape(n)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad) + tiles.shape[3:], pad_value, tiles.dtype)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[i]
    return out


def upscale(image: np.ndarray, min_side: int = MIN_SIDE, max_side: int = MAX_UPSCALED,
            max_aspect: float | None = None) -> np.ndarray:
    """Repeat each pixel k x k so the smaller side reaches min_side (k limited so the larger side stays within
    max_side).  With max_aspect, the shorter side is stretched further where the picture would otherwise be
    more than max_aspect times longer than wide (a 10 x 500 weight matrix would be a hairline)."""
    h, w = image.shape[:2]
    small, large = min(h, w), max(h, w)
    if small == 0:
        return image
    k = max(1, min(math.ceil(min_side / small), max_side // large)) if small < min_side else 1
    ky = kx = k
    if max_aspect and large > max_aspect * small:
        stretch = max(k, min(math.ceil(large * k / (max_aspect * small)), max(1, max_side // small)))
        ky, kx = (stretch, k) if h < w else (k, stretch)
    if kx > 1:
        image = image.repeat(kx, axis=1)
    if ky > 1:
        image = image.repeat(ky, axis=0)
    return image


class Picture:
    """An 8-bit picture of an array (gray (H, W) or RGB (H, W, 3)) and a note on what it shows."""

    def __init__(self, pixels: np.ndarray, note: str = ""):
        self.pixels = pixels
        self.note = note
        self._png: bytes | None = None

    def png(self) -> bytes:
        if self._png is None:  # encoded once for both the PNG file and the page
            self._png = png_bytes(self.pixels)
        return self._png


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    im = Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _limit_tiles(tiles: np.ndarray, total: int, what: str) -> tuple[np.ndarray, str]:
    """Keep as many tiles as fit a MAX_SIDE square (crop one oversized tile to it), as DIGITS does."""
    h, w = tiles.shape[1:3]
    if h > MAX_SIDE or w > MAX_SIDE:
        return tiles[:1, :MAX_SIDE, :MAX_SIDE], f"the first {what}, cropped to {MAX_SIDE}x{MAX_SIDE}"
    side = MAX_SIDE if w == 1 else MAX_SIDE // (w + 1)
    keep = side * side
    if total > keep:
        return tiles[:keep], f"the first {keep:,} of {total:,} {what}s"
    return tiles, ""


def picture(array: np.ndarray, style: str = "heat", lo: float | None = None, hi: float | None = None) -> Picture:
    """A picture of `array` (one sample's activation, or a parameter blob).

    style "heat": single-channel values through the jet map; "gray": levels as they are; "rgb": a 3-channel
    (3, H, W) BGR array as one colour image, or 4-D weights with 3 input (or output) channels as colour tiles.
    Levels are scaled to [lo, hi] (by default the array's own min and max) over the whole array.

    Layout by dimensions: 0-D/1-D -> one 1x1 tile per value; 2-D -> one image (a weight matrix: rows are
    outputs; subsampled when a side exceeds MAX_SIDE); 3-D (C, H, W) -> C tiles; 4-D (N, C, H, W) -> N*C tiles;
    more axes fold into the first.
    """
    a = np.asarray(array)
    levels = to_levels(a, lo, hi)
    note = ""
    if a.ndim <= 1:
        tiles, colour = levels.reshape(-1, 1, 1), False
    elif a.ndim == 2:
        rows, cols = levels.shape
        sr, sc = math.ceil(rows / MAX_SIDE), math.ceil(cols / MAX_SIDE)
        if sr > 1 or sc > 1:
            levels = levels[::sr, ::sc]
            note = f"every {sr}th row and {sc}th column shown"
        tiles, colour = levels[None], False
    elif a.ndim == 3 and style == "rgb" and a.shape[0] == 3:
        tiles, colour = levels[::-1].transpose(1, 2, 0)[None], True  # BGR -> RGB
    elif a.ndim == 4 and style == "rgb" and 3 in a.shape[:2]:
        per = levels if a.shape[1] == 3 else levels.transpose(1, 0, 2, 3)
        tiles, colour = per[:, ::-1].transpose(0, 2, 3, 1), True
    else:
        tiles, colour = levels.reshape((-1,) + levels.shape[-2:]), False
    total = tiles.shape[0]
    tiles, limited = _limit_tiles(tiles, total, "tile" if tiles.shape[1] * tiles.shape[2] > 1 else "value")
    note = note or limited
    if not colour and style == "heat":
        tiles = jet(tiles)
    grid = tile(tiles) if tiles.shape[0] > 1 else tiles[0]
    return Picture(upscale(grid, max_aspect=5 if a.ndim == 2 else None), note)


# -------------------------------------------------------------------------------------------------- statistics
class Stats:
    """Shape, mean, standard deviation (population, as np.std), min, max and a 20-bin histogram of the finite
    values of an array."""

    def __init__(self, array: np.ndarray, bins: int = HIST_BINS):
        a = np.asarray(array, dtype=np.float64)
        self.shape = tuple(int(d) for d in np.shape(array))
        self.size = a.size
        finite = a[np.isfinite(a)]
        self.non_finite = a.size - finite.size
        if finite.size:
            self.mean, self.std = float(finite.mean()), float(finite.std())
            self.min, self.max = float(finite.min()), float(finite.max())
            self.counts, self.edges = np.histogram(finite, bins=bins)
        else:
            self.mean = self.std = self.min = self.max = float("nan")
            self.counts, self.edges = np.zeros(0, np.int64), np.zeros(0)


def histogram_svg(stats: Stats, width: int = 260, height: int = 96) -> str:
    """The histogram as an inline <svg> (no namespace URL, so the page holds no http:// at all): one bar per
    bin, ticks at the first, middle and last bin edges, a tooltip per bar."""
    counts, edges = stats.counts, stats.edges
    if not len(counts):
        return '<span class="muted">no finite values</span>'
    left, bottom, top = 4, 18, 12
    plot_w, plot_h = width - 2 * left, height - bottom - top
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / len(counts)
    parts = [f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts.append(f'<text x="{left}" y="{top - 3}" class="ax">max {peak:,}</text>')
    for i, count in enumerate(counts):
        bh = plot_h * int(count) / peak
        x = left + i * bar_w
        y = top + plot_h - bh
        tip = f"[{_num(edges[i])}, {_num(edges[i + 1])}{']' if i == len(counts) - 1 else ')'}: {int(count):,}"
        parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(bar_w - 1, 0.5):.2f}" height="{bh:.2f}">'
                     f'<title>{html.escape(tip)}</title></rect>')
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base + 0.5}" x2="{left + plot_w}" y2="{base + 0.5}" class="axis"/>')
    mid = len(edges) // 2
    for x, anchor, value in ((left, "start", edges[0]), (left + plot_w / 2, "middle", edges[mid]),
                             (left + plot_w, "end", edges[-1])):
        parts.append(f'<text x="{x:.1f}" y="{height - 4}" text-anchor="{anchor}" class="ax">{_num(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _num(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"


def _dims(shape: Iterable[int]) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"


def file_name(name: str) -> str:
    """A blob or layer name as a safe file name: '/' and other unsafe characters %-escaped."""
    safe = urllib.parse.quote(name, safe="-_.+=@,")
    return "%2E" + safe[1:] if safe.startswith(".") else safe  # no hidden files, no '..'


# ------------------------------------------------------------------------------------------------------ report
class Row:
    """One row of the report: an activation or a parameter blob, its statistics and picture."""

    def __init__(self, kind: str, name: str, title: str, detail: str, stats: Stats, pic: Picture | None,
                 path: str):
        self.kind, self.name, self.title, self.detail = kind, name, title, detail
        self.stats, self.pic, self.path = stats, pic, path


def _blob_style(net, name: str, first_writer: dict) -> tuple[str, float | None, float | None]:
    """How DIGITS draws a blob: gray for the input (and anything named data), colour for 3 channels, a jet
    heat map otherwise; Softmax outputs on a fixed [0, 1] scale."""
    sample_shape = net.blobs[name].data.shape[1:]
    is_input = name in net.inputs or name not in first_writer or name == "data"
    if len(sample_shape) == 3 and sample_shape[0] == 3:
        return "rgb", None, None
    if is_input:
        return "gray", None, None
    layer = first_writer.get(name)
    if layer is not None and layer.type == "Softmax":
        return "heat", 0.0, 1.0
    return "heat", None, None


def collect_rows(net) -> tuple[list[Row], int]:
    """Every blob and parameter blob of the net, in DIGITS' order, with statistics and pictures; and the total
    count of learned parameters."""
    layers = list(net.layer_list)
    tops, bottoms = list(net.top_names.values()), list(net.bottom_names.values())
    first_writer, writers = {}, {}
    for layer, names in zip(layers, tops):
        for t in names:
            first_writer.setdefault(t, layer)
            writers.setdefault(t, []).append(layer)
    views = net.layers
    rows: list[Row] = []
    shown: set[str] = set()
    total_params = 0

    def activation(name: str) -> None:
        if name in shown or name not in net.blobs:
            return
        shown.add(name)
        data = np.asarray(net.blobs[name].data)
        sample = data[0] if data.ndim else data
        style, lo, hi = _blob_style(net, name, first_writer)
        made_by = writers.get(name, [])
        if not made_by or name in net.inputs:
            detail = "net input"
        else:
            detail = "top of " + ", then ".join(f"{html.escape(l.layer_name)} ({html.escape(l.type)})"
                                                for l in made_by)
        detail += f" · blob {_dims(data.shape)}, sample 0 shown" if data.ndim else ""
        pic = picture(sample, style, lo, hi) if sample.size else None
        rows.append(Row("Activation", name, name, detail, Stats(sample), pic,
                        f"blobs/{file_name(name)}.png"))

    for index, (layer, bnames, tnames) in enumerate(zip(layers, bottoms, tops)):
        for b in bnames:
            activation(b)
        blobs = views[index].blobs
        if len(blobs):
            count = sum(int(np.prod(p.data.shape)) for p in blobs)
            total_params += count
            for i, p in enumerate(blobs):
                values = np.asarray(p.data)
                what = "weights" if i == 0 else "bias" if i == 1 and values.ndim == 1 else f"parameter {i}"
                detail = f"{html.escape(layer.type)} layer · {what}"
                if i == 0:
                    detail += f" · {count:,} learned parameters in the layer"
                style = "rgb" if values.ndim == 4 and 3 in values.shape[:2] else "heat"
                pic = picture(values, style) if values.size else None
                if pic is not None and values.ndim == 2:
                    pic.note = "; ".join(filter(None, ["rows: outputs, columns: inputs", pic.note]))
                rows.append(Row("Weights" if i == 0 else "Parameters", layer.layer_name,
                                f"{layer.layer_name} [{i}]", detail, Stats(values), pic,
                                f"weights/{file_name(layer.layer_name)}_{i}.png"))
        for t in tnames:
            activation(t)
    for name in net.blobs:  # blobs no layer reads or writes (none in a sane net)
        activation(name)
    return rows, total_params


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px;margin:0 0 16px}.meta code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
.summary{display:flex;gap:32px;align-items:flex-start}
.input figure{margin:0}.input img{width:168px;image-rendering:pixelated;border:1px solid #ccc}
.input figcaption{font-size:12px;color:#555;margin-top:4px}
table.pred{border-collapse:collapse;min-width:320px}table.pred td,table.pred th{padding:5px 10px;text-align:left;
border-bottom:1px solid #eee;font-size:14px}table.pred td.p{text-align:right;font-variant-numeric:tabular-nums}
.bar{height:8px;background:#337ab7;border-radius:2px}.barbox{width:120px;background:#eef2f7;border-radius:2px}
table.vis{border-collapse:collapse;width:100%}table.vis>tbody>tr>td{border-top:1px solid #ddd;padding:10px 8px;
vertical-align:top}table.vis th{text-align:left;font-size:13px;color:#555;padding:4px 8px}
.name{font-weight:600;font-size:15px;word-break:break-all}.kind{display:inline-block;font-size:11px;padding:1px 6px;
border-radius:8px;background:#e8eef7;color:#245;margin-left:6px}.kind.w{background:#f7ece0;color:#643}
.detail{font-size:12px;color:#666;margin-top:3px}
table.stats td{font-size:13px;padding:1px 8px 1px 0;border:none;white-space:nowrap}table.stats td:first-child{color:#666}
table.stats td.v{font-variant-numeric:tabular-nums}
.pic img{max-width:100%;image-rendering:pixelated;border:1px solid #ccc}.note{font-size:12px;color:#777}
svg.hist rect{fill:#4a8bc2}svg.hist .axis{stroke:#888;stroke-width:1}svg.hist .ax{font-size:10px;fill:#555}
.muted{color:#999}tr.totals td{font-weight:600;border-top:2px solid #999}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _stats_table(s: Stats) -> str:
    cells = [("Data shape", _dims(s.shape)), ("Mean", _num(s.mean)), ("Std deviation", _num(s.std)),
             ("Min", _num(s.min)), ("Max", _num(s.max))]
    if s.non_finite:
        cells.append(("Not finite", f"{s.non_finite:,} of {s.size:,}"))
    body = "".join(f'<tr><td>{k}</td><td class="v">{html.escape(v)}</td></tr>' for k, v in cells)
    return f'<table class="stats">{body}</table>'


def render_html(rows: list[Row], total_params: int, predictions: Sequence[Prediction], input_png: bytes | None,
                info: dict, input_caption: str = "input") -> str:
    """The report page from its parts: `info` maps captions (model, weights, image, ...) to values."""
    title = f"Classify one image · {info.get('image', '')}"
    meta = " · ".join(f"{html.escape(k)} <code>{html.escape(str(v))}</code>" for k, v in info.items()
                      if v not in (None, ""))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           "<h1>Classify one image</h1>", f'<p class="meta">{meta}</p>', '<div class="summary">']
    if input_png is not None:
        out.append(f'<div class="input"><figure>{_img(input_png, "input image")}'
                   f'<figcaption>{html.escape(input_caption)}</figcaption></figure></div>')
    out.append('<table class="pred"><tr><th>#</th><th>Label</th><th>Probability</th><th></th></tr>')
    for rank, p in enumerate(predictions, 1):
        pct = round(100 * p.probability, 2)
        width = max(0.0, min(100.0, pct))
        out.append(f'<tr><td>{rank}</td><td>{html.escape(p.label)}</td><td class="p">{pct:.2f}%</td>'
                   f'<td><div class="barbox"><div class="bar" style="width:{width:.1f}%"></div></div></td></tr>')
    out.append("</table></div>")
    out.append("<h2>Visualizations and statistics</h2>")
    out.append('<table class="vis"><thead><tr><th>Blob / layer</th><th>Statistics</th><th>Histogram</th>'
               "<th>Visualization</th></tr></thead><tbody>")
    for r in rows:
        badge = f'<span class="kind{" w" if r.kind != "Activation" else ""}">{r.kind}</span>'
        pic = (_img(r.pic.png(), r.title) + (f'<div class="note">{html.escape(r.pic.note)}</div>' if r.pic.note
                                             else "")) if r.pic is not None else '<span class="muted">empty</span>'
        anchor = ("blob-" if r.kind == "Activation" else "param-") + html.escape(file_name(r.title), quote=True)
        out.append(f'<tr id="{anchor}"><td><div class="name">{html.escape(r.title)}{badge}</div>'
                   f'<div class="detail">{r.detail}</div></td><td>{_stats_table(r.stats)}</td>'
                   f'<td>{histogram_svg(r.stats)}</td><td class="pic">{pic}</td></tr>')
    out.append(f'<tr class="totals"><td>Totals</td><td colspan="3">{total_params:,} learned parameters</td></tr>')
    out.append("</tbody></table></body></html>")
    return "\n".join(out)


def write_report(net, out_dir: str, predictions: Sequence[Prediction], pixels: np.ndarray | None = None,
                 info: dict | None = None) -> str:
    """Write out_dir/report.html (self-contained) and each picture as a PNG (out_dir/input.png,
    out_dir/blobs/<blob>.png, out_dir/weights/<layer>_<i>.png), every file atomically.  `net` must hold the
    forward pass to show; `pixels` is the uint8 (C, H, W) input image as the net saw it before preprocessing.
    Returns the report's path."""
    info = dict(info or {})
    os.makedirs(os.path.join(out_dir, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "weights"), exist_ok=True)
    input_png, caption = None, "input"
    if pixels is not None:
        image = pixels[0] if pixels.shape[0] == 1 else pixels[::-1].transpose(1, 2, 0)  # gray, or BGR -> RGB
        input_png = png_bytes(image)
        atomic_write(os.path.join(out_dir, "input.png"), input_png)
        caption = f"{image.shape[1]}x{image.shape[0]} {'colour' if image.ndim == 3 else 'gray'}, as fed to the net"

    rows, total = collect_rows(net)
    for r in rows:
        if r.pic is not None:
            atomic_write(os.path.join(out_dir, r.path), r.pic.png())
    page = render_html(rows, total, predictions, input_png, info, caption)
    path = os.path.join(out_dir, "report.html")
    atomic_write(path, page.encode("utf-8"))
    return path
