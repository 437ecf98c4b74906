"""Pictures and statistics of arrays, as DIGITS draws them: channels tiled in a grid, gray or DIGITS' jet heat
map scaled to [min, max], nearest-neighbour upscaling, PNG bytes, and a histogram as inline SVG."""
from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

HIST_BINS = 20
MAX_SIDE = 1200      # DIGITS keeps at most this many pixels (tiles and padding) along each side of a picture
MIN_SIDE = 100       # ... and upscales small pictures (nearest neighbour) until the smaller side reaches this
MAX_UPSCALED = 2400  # but never beyond this along the longer side, so a 1 x 1000 strip stays reasonable
PAD_VALUE = 255      # white between tiles and in the unused cells of the grid

# DIGITS' jet colour map: the value of each colour at nine evenly spaced points of [0, 1], linearly
# interpolated in between (dark blue -> blue -> cyan -> yellow -> red -> dark red).  Not matplotlib's own "jet",
# whose break points differ; built as a matplotlib colormap so the report and matplotlib figures share it.
_JET_POINTS = np.linspace(0.0, 1.0, 9)
_JET_RGB = list(zip((0, 0, 0, 0, .5, 1, 1, 1, .5), (0, 0, .5, 1, 1, 1, .5, 0, 0), (.5, 1, 1, 1, .5, 0, 0, 0, 0)))
JET = LinearSegmentedColormap.from_list("digits_jet", list(zip(_JET_POINTS, _JET_RGB)), N=256)


def jet_lut() -> np.ndarray:
    """(256, 3) uint8: the jet colour of each level 0..255 (rounded; matplotlib's bytes=True truncates)."""
    return np.floor(JET(np.arange(256))[:, :3] * 255 + 0.5).astype(np.uint8)


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
    """Shape, mean, standard deviation (population, as np.std), min, max, the count of exact zeros (ReLU's
    sparsity, an occluded square) and a 20-bin histogram of the finite values of an array."""

    def __init__(self, array: np.ndarray, bins: int = HIST_BINS):
        a = np.asarray(array, dtype=np.float64)
        self.shape = tuple(int(d) for d in np.shape(array))
        self.size = a.size
        finite = a[np.isfinite(a)]
        self.non_finite = a.size - finite.size
        self.zeros = int(np.count_nonzero(finite == 0))
        if finite.size:
            self.mean, self.std = float(finite.mean()), float(finite.std())
            self.min, self.max = float(finite.min()), float(finite.max())
            self.counts, self.edges = np.histogram(finite, bins=bins)
        else:
            self.mean = self.std = self.min = self.max = float("nan")
            self.counts, self.edges = np.zeros(0, np.int64), np.zeros(0)


def histogram_png(stats: Stats, width: int = 260, height: int = 96) -> bytes:
    """The histogram as a small PNG of `width` x `height` pixels: one bar per bin, the value axis with the first,
    middle and last bin edges, the tallest bar's count in the corner."""
    counts, edges = stats.counts, stats.edges
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4a6fa5", linewidth=0)
    ax.set_yticks([])
    ax.set_xticks([edges[0], edges[len(edges) // 2], edges[-1]], [_num(e) for e in
                  (edges[0], edges[len(edges) // 2], edges[-1])], fontsize=7)
    ax.set_xlim(edges[0], edges[-1])
    ax.text(0.0, 1.0, f"max {int(counts.max()):,}", transform=ax.transAxes, fontsize=7, va="bottom")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _num(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"

