"""WindowData: R-CNN's fine-tuning source, boxes ("windows") cut out of images and warped to a fixed square.

Caffe's source: window_data_layer.cpp.  The batch is planned (which windows, which are mirrored) in order and
built on the prefetch workers, like Data and ImageData (caffelike.data.prefetch; in a worker process for a
training net, caffelike.data.build_pool), so prefetched batches equal a synchronous read.  The box arithmetic is done in float32 with C's round-half-away-from-zero, as Caffe's
`Dtype = float` code does, so the crop geometry is Caffe's to the pixel.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
from caffelike.layers.base import register
from caffelike.layers.data import _Prefetching

from caffelike.data.datum import COLOR, DatumError, decode_image, read_image, resize_linear
from caffelike.data.transformer import load_mean_file, new_generator
from caffelike.errors import LayerError

log = logging.getLogger("caffelike")

_F = np.float32
CROP_MODES = ("warp", "square")


@dataclass(frozen=True)
class Window:
    """One usable line of the window file: its image (index into the image list), label and box (inclusive)."""
    image: int
    label: int
    x1: int
    y1: int
    x2: int
    y2: int
    line: int


@dataclass(frozen=True)
class Geometry:
    """Where a window comes from and where it goes: the image box (inclusive, clipped), the size it is warped
    to, and the offset of the warped patch inside the crop x crop output."""
    x1: int
    y1: int
    x2: int
    y2: int
    height: int
    width: int
    pad_h: int
    pad_w: int


def _round(v) -> int:
    """C's round() of a float32 value: halves away from zero (exact in float64, where v is held exactly)."""
    v = float(v)
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def window_geometry(box: tuple[int, int, int, int], image_hw: tuple[int, int], crop: int, context_pad: int,
                    square: bool, mirror: bool) -> Geometry:
    """Caffe's crop arithmetic for one window (x1, y1, x2, y2), float32 throughout.

    With context_pad > 0 or square mode the box is scaled about its centre by crop / (crop - 2 context_pad)
    (square mode first makes it square on its longer side), rounded, then clipped to the image; the clipped part
    is warped to the size the unclipped box would have had, and the cut-off extent becomes zero padding on the
    same side (the right-hand one when mirrored).  Otherwise the box is warped to crop x crop as it is."""
    x1, y1, x2, y2 = box
    img_h, img_w = image_hw
    if not (context_pad > 0 or square):
        return Geometry(x1, y1, x2, y2, crop, crop, 0, 0)
    context_scale = _F(crop) / _F(crop - 2 * context_pad)
    half_h = _F((y2 - y1 + 1) / 2.0)
    half_w = _F((x2 - x1 + 1) / 2.0)
    center_x = _F(x1) + half_w
    center_y = _F(y1) + half_h
    if square:
        if half_h > half_w:
            half_w = half_h
        else:
            half_h = half_w
    x1 = _round(center_x - half_w * context_scale)
    x2 = _round(center_x + half_w * context_scale)
    y1 = _round(center_y - half_h * context_scale)
    y2 = _round(center_y + half_h * context_scale)
    unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
    pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
    pad_x2, pad_y2 = max(0, x2 - img_w + 1), max(0, y2 - img_h + 1)
    x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
    scale_x = _F(crop) / _F(unclipped_w)
    scale_y = _F(crop) / _F(unclipped_h)
    width = _round(_F(x2 - x1 + 1) * scale_x)
    height = _round(_F(y2 - y1 + 1) * scale_y)
    pad_h = _round(_F(pad_y1) * scale_y)
    pad_w = _round(_F(pad_x2) * scale_x) if mirror else _round(_F(pad_x1) * scale_x)
    # Rounding may push the patch past the output's edge: Caffe trims the patch, not the padding.
    height = min(height, crop - pad_h)
    width = min(width, crop - pad_w)
    return Geometry(x1, y1, x2, y2, height, width, pad_h, pad_w)


@register("WindowData")
class WindowData(_Prefetching):
    """Windows (boxes) of images listed in a window file, warped to crop_size x crop_size: R-CNN's training data.

    top 0: data (batch_size, 3, crop_size, crop_size), BGR; top 1: label (batch_size,).
    Window file (window_data_param.source, whitespace-separated, relative to the working directory), per image:
    `# image_index` (0, 1, 2, ... in order), the image path (prefixed by root_folder), `channels height width`,
    `num_windows`, then one `class overlap x1 y1 x2 y2` per window (0-based inclusive pixel box).  A window with
    overlap >= fg_threshold is foreground (its class must be > 0); one with overlap < bg_threshold is background
    (label 0); the rest are dropped.  Every batch holds batch_size - int(batch_size * fg_fraction) background
    windows then the foreground ones, each drawn uniformly at random with replacement (in TRAIN and TEST alike).
    A window is expanded for context_pad (by crop / (crop - 2 context_pad), square on its longer side in
    crop_mode "square"), clipped to the image, warped with OpenCV's INTER_LINEAR arithmetic, mirrored at random
    (transform_param.mirror), placed in a zero output where the clipped-off context leaves padding, and each
    pixel becomes (pixel - mean) * window_data_param.scale with the mean from transform_param.mean_file (read at
    an offset of (mean_width - crop) / 2 on both axes, and at the padding offset) or transform_param.mean_value.
    cache_images keeps every image file's bytes in memory.  data_param.prefetch sets the batches in flight.

    Honoured, as Caffe reads them: window_data_param source, root_folder, batch_size, scale, fg_threshold,
    bg_threshold, fg_fraction, context_pad, crop_mode, cache_images; transform_param crop_size (required),
    mirror, mean_file, mean_value.  transform_param.scale is not read (Caffe's WindowData ignores it: a V1
    WINDOW_DATA layer's scale, which the upgrade moves there, is lost in Caffe too; a warning says so).
    Errors where Caffe would crash, read out of bounds or silently ignore the setting: window_data_param
    crop_size / mirror / mean_file in a current-format net (Caffe reads only transform_param's), a crop_mode
    other than "warp" or "square" (Caffe warps), force_gray, a window file without foreground or without
    background windows (Caffe's CHECK, whatever fg_fraction is), out-of-order image indices, a last image
    declaring other than 3 channels (the top's channel count, while images are always read in colour), boxes
    outside the image without context padding, and a mean image smaller than the crop.  A missing or unreadable
    image is an error naming it and its window-file line (Caffe logs it and hands out a partly filled batch).
    Images are decoded by Pillow (see caffelike.data.datum.decode_image).  Caffe's random values are not
    reproduced, only the way they are drawn: per window an index, then a mirror coin when mirror is on.
    """

    exact_tops = 2

    def setup(self, bottom_shapes):
        p, t = self.param.window_data_param, self.param.transform_param
        for field in ("crop_size", "mirror", "mean_file"):
            if p.HasField(field):
                self.fail(f"window_data_param.{field} is not read by WindowData; set transform_param.{field} "
                          "(Caffe's upgrade moves it there only for V1 `layers` nets)")
        if t.force_gray:
            self.fail("transform_param.force_gray cannot be honoured: WindowData always reads images in colour")
        if t.scale != 1:
            log.warning('%s: transform_param.scale %g is ignored, as in Caffe: WindowData scales by '
                        'window_data_param.scale (%g)', self.where, t.scale, p.scale)
        if p.batch_size <= 0:
            self.fail("window_data_param.batch_size must be > 0")
        self.batch_size = int(p.batch_size)
        self.crop = int(t.crop_size)
        if self.crop <= 0:
            self.fail("transform_param.crop_size must be > 0 (the side of the warped windows)")
        if p.crop_mode not in CROP_MODES:
            self.fail(f"window_data_param.crop_mode must be \"warp\" or \"square\", got {p.crop_mode!r}")
        self.square = p.crop_mode == "square"
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop:
            self.fail(f"window_data_param.context_pad {self.context_pad} leaves no room in a crop of "
                      f"{self.crop} (needs 2 * context_pad < crop_size)")
        if not 0 <= p.fg_fraction <= 1:
            self.fail(f"window_data_param.fg_fraction must be within [0, 1], got {p.fg_fraction:g}")
        self.num_fg = int(_F(self.batch_size) * _F(p.fg_fraction))
        self.mirror = bool(t.mirror)
        self.scale = _F(p.scale)
        self.source = p.source
        log.info("Window data layer: foreground (object) overlap threshold: %g, background (non-object) overlap "
                 "threshold: %g, foreground sampling fraction: %g, cache_images: %s, root_folder: %s",
                 p.fg_threshold, p.bg_threshold, p.fg_fraction, p.cache_images, p.root_folder)
        self.images, self.fg, self.bg = self._read_windows(p)
        if not self.fg or not self.bg:
            self.fail(f"the window file {self.source} has {len(self.fg)} foreground (overlap >= "
                      f"{p.fg_threshold:g}) and {len(self.bg)} background (overlap < {p.bg_threshold:g}) windows; "
                      "Caffe's WindowData needs at least one of each, whatever fg_fraction is")
        channels, where = self.images[-1][1], self.images[-1][2]
        if channels != 3:
            self.fail(f"{where}: the image declares {channels} channels; the last image's count is the top's "
                      "channel count, and WindowData reads every image in colour (3 channels, BGR)")
        self._mean(t, channels)
        self.rng = new_generator()  # Caffe seeds prefetch_rng_ whenever crop_size is set, i.e. always
        self._shapes = [(self.batch_size, channels, self.crop, self.crop), (self.batch_size,)]
        self._builder = _WindowBuilder(self)
        if p.cache_images:  # the files' bytes, decoded at each use, as Caffe caches encoded Datums
            self._builder.cache_files()
        log.info("output data size: %s", ",".join(str(d) for d in self._shapes[0]))
        self._item_size = channels * self.crop * self.crop

    # ------------------------------------------------------------------------------------------- window file
    def _read_windows(self, p) -> tuple[list[tuple[str, int, str]], list[Window], list[Window]]:
        """[(path, declared channels, where)], foreground and background windows, from the window file."""
        try:
            with open(p.source, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            self.fail(f"Failed to open window file {p.source!r} ({e.strerror or e}; relative paths are resolved "
                      f"against the working directory: {os.path.abspath(p.source)})")
        tokens = [(tok, number) for number, line in enumerate(text.splitlines(), 1) for tok in line.split()]
        if not tokens:
            self.fail(f"Window file {p.source!r} is empty")
        pos = 0

        def take(kind, what):
            nonlocal pos
            if pos >= len(tokens):
                self.fail(f"{p.source}: the file ends where {what} should come (after line {tokens[-1][1]})")
            tok, number = tokens[pos]
            pos += 1
            try:
                return kind(tok), number
            except ValueError:
                self.fail(f"{p.source} line {number}: expected {what}, got {tok!r}")

        images, fg, bg = [], [], []
        fg_threshold, bg_threshold = float(p.fg_threshold), float(p.bg_threshold)
        while pos < len(tokens):
            hashtag, number = take(str, '"#" (the start of an image block)')
            if hashtag != "#":
                self.fail(f"{p.source} line {number}: expected \"# image_index\", got {hashtag!r}")
            index, number = take(int, "the image index")
            if index != len(images):
                self.fail(f"{p.source} line {number}: image index {index}, expected {len(images)}; Caffe looks "
                          "images up by this index, so they must be numbered 0, 1, 2, ... in file order")
            path, number = take(str, "the image path")
            where = f"{p.source} line {number}"
            channels = take(int, "the image's channels")[0]
            take(int, "the image's height")
            take(int, "the image's width")
            count, number = take(int, "the number of windows")
            if count < 0:
                self.fail(f"{p.source} line {number}: negative number of windows {count}")
            images.append((p.root_folder + path, channels, where))
            for _ in range(count):
                label, number = take(int, "a window's class (an integer)")
                overlap = float(_F(take(float, "a window's overlap")[0]))
                box = [take(int, f"a window's {c} (an integer)")[0] for c in ("x1", "y1", "x2", "y2")]
                kept = overlap >= fg_threshold or overlap < bg_threshold
                if kept and (box[2] < box[0] or box[3] < box[1]):
                    self.fail(f"{p.source} line {number}: the window ({', '.join(map(str, box))}) has x2 < x1 or "
                              "y2 < y1 (boxes are x1 y1 x2 y2, corners included)")
                if overlap >= fg_threshold:
                    if label <= 0:
                        self.fail(f"{p.source} line {number}: a foreground window (overlap {overlap:g} >= "
                                  f"fg_threshold {fg_threshold:g}) needs a class > 0, got {label}")
                    fg.append(Window(index, label, *box, number))
                elif overlap < bg_threshold:
                    bg.append(Window(index, 0, *box, number))
        log.info("Number of images: %d", len(images))
        hist: dict[int, int] = {0: len(bg)}
        for w in fg:
            hist[w.label] = hist.get(w.label, 0) + 1
        for label in sorted(hist):
            log.info("class %d has %d samples", label, hist[label])
        return images, fg, bg

    def _mean(self, t, channels: int) -> None:
        self.mean = self.mean_values = None
        self.mean_off = 0
        if t.HasField("mean_file"):
            if len(t.mean_value):
                self.fail("Cannot specify mean_file and mean_value at the same time")
            self.mean = load_mean_file(t.mean_file, self.where)
            c, h, w = self.mean.shape
            self.mean_off = (w - self.crop) // 2
            if c != channels or w < self.crop or self.mean_off + self.crop > h:
                self.fail(f"the mean_file {t.mean_file!r} is {c}x{h}x{w}; WindowData reads it at an offset of "
                          f"(width - crop_size) / 2 on both axes, so it needs {channels} channels and at least "
                          f"crop_size {self.crop} columns and (width - crop_size) / 2 + crop_size rows")
        elif len(t.mean_value):
            if len(t.mean_value) not in (1, channels):
                self.fail(f"Specify either 1 mean_value or as many as channels: {channels}")
            self.mean_values = np.resize(np.asarray(t.mean_value, dtype=np.float32), channels)

    # -------------------------------------------------------------------------------------------- batches
    def _plan(self):
        draws = self.rng.integers(0, 2**32, size=(self.batch_size, 2 if self.mirror else 1), dtype=np.uint64)
        picks = []
        for i in range(self.batch_size):
            pool = self.bg if i < self.batch_size - self.num_fg else self.fg
            picks.append((pool[int(draws[i, 0] % len(pool))], bool(self.mirror and draws[i, 1] % 2)))
        return picks


class _WindowBuilder:
    """Builds a WindowData batch from its picks: picklable (the layer's geometry, mean and image list, not the
    layer), so that the batch can be built in a worker process (caffelike.data.build_pool)."""

    def __init__(self, layer: WindowData):
        self.where, self.images, self.source = layer.where, layer.images, layer.source
        self.crop, self.context_pad, self.square, self.scale = layer.crop, layer.context_pad, layer.square, layer.scale
        self.mean, self.mean_off, self.mean_values = layer.mean, layer.mean_off, layer.mean_values
        self.shape = layer._shapes[0]
        self._cache: list[bytes] | None = None

    def cache_files(self) -> None:
        self._cache = [self._file_bytes(i) for i in range(len(self.images))]

    def _fail(self, message: str) -> None:
        raise LayerError(f"{self.where}: {message}")

    def __call__(self, picks) -> tuple[np.ndarray, np.ndarray]:
        data = np.zeros(self.shape, dtype=np.float32)
        labels = np.empty(len(picks), dtype=np.float32)
        for i, (window, do_mirror) in enumerate(picks):
            self._warp(window, do_mirror, data[i])
            labels[i] = window.label
        return data, labels

    def _where(self, index: int) -> str:
        path, _, line = self.images[index]
        return f"{self.where}: image {path!r} ({line})"

    def _file_bytes(self, index: int) -> bytes:
        try:
            with open(self.images[index][0], "rb") as f:
                return f.read()
        except OSError as e:
            raise DatumError(f"{self._where(index)}: Could not open or find file ({e.strerror or e})") from None

    def _pixels(self, index: int) -> np.ndarray:
        """Image `index` as Caffe reads it: colour, BGR, (3, H, W) uint8."""
        if self._cache is not None:
            return decode_image(self._cache[index], COLOR, self._where(index))
        return read_image(self.images[index][0], True, where=self._where(index))

    def _warp(self, window: Window, do_mirror: bool, out: np.ndarray) -> None:
        pixels = self._pixels(window.image)
        _, img_h, img_w = pixels.shape
        g = window_geometry((window.x1, window.y1, window.x2, window.y2), (img_h, img_w), self.crop,
                            self.context_pad, self.square, do_mirror)
        at = f"{self.source} line {window.line}"
        if not (0 <= g.x1 <= g.x2 < img_w and 0 <= g.y1 <= g.y2 < img_h):
            self._fail(f"{at}: the window ({window.x1}, {window.y1}, {window.x2}, {window.y2}) becomes the box "
                      f"({g.x1}, {g.y1}, {g.x2}, {g.y2}), which is not inside the {img_w}x{img_h} (width x height) "
                      f"image {self.images[window.image][0]!r}")
        if g.height <= 0 or g.width <= 0:
            self._fail(f"{at}: the window ({window.x1}, {window.y1}, {window.x2}, {window.y2}) lies so far outside "
                      f"the image that nothing of it is left to warp into the {self.crop}x{self.crop} crop")
        patch = resize_linear(pixels[:, g.y1:g.y2 + 1, g.x1:g.x2 + 1], g.height, g.width)
        if do_mirror:
            patch = patch[:, :, ::-1]
        rows, cols = slice(g.pad_h, g.pad_h + g.height), slice(g.pad_w, g.pad_w + g.width)
        target = out[:, rows, cols]
        if self.mean is not None:
            off = self.mean_off
            mean = self.mean[:, off + g.pad_h:off + g.pad_h + g.height, off + g.pad_w:off + g.pad_w + g.width]
            np.subtract(patch, mean, out=target, dtype=np.float32)
        elif self.mean_values is not None:
            np.subtract(patch, self.mean_values[:, None, None], out=target, dtype=np.float32)
        else:
            target[...] = patch
        if self.scale != 1:
            np.multiply(target, self.scale, out=target)
