"""Training curves as a PNG, drawn with Pillow alone, in the manner of DIGITS' training page.

The upper panel holds the losses (left axis) and the accuracies (right axis, 0..1 or percent, whichever the
values use); the lower panel holds the learning rate.  Both share the iteration axis.  Values that are NaN or
infinite are skipped; an axis whose positive values span three or more decades (a diverging loss, a step
schedule) switches to a log scale so that nothing is squashed against the frame.
"""
from __future__ import annotations

import io
import logging
import math

from caffelike.errors import CaffeError
from caffelike.format.files import atomic_write

# matplotlib's tab10, the colours people read curves in
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
LR_COLOR = (214, 39, 40)
BACKGROUND, FRAME, GRID, TEXT = (255, 255, 255), (60, 60, 60), (225, 225, 225), (30, 30, 30)
MARKER_MAX_POINTS = 60  # series this sparse (test outputs, a single point) also get a dot at each point


def is_accuracy(name: str) -> bool:
    """Outputs plotted on the accuracy axis rather than the loss axis."""
    return "acc" in name.lower()


# ----------------------------------------------------------------------------------------------------- scales
class Scale:
    """A linear or log mapping of [lo, hi] onto [0, 1], with tick positions and their labels."""

    def __init__(self, lo: float, hi: float, log: bool = False, integer: bool = False):
        self.log, self.integer = log, integer
        if log:
            self.lo, self.hi = math.log10(lo), math.log10(hi)
        else:
            self.lo, self.hi = lo, hi
        if not self.hi > self.lo:  # one value: give it some room
            pad = 1.0 if self.log or self.lo == 0 else abs(self.lo) * 0.1
            self.lo, self.hi = self.lo - (0 if integer else pad), self.hi + pad

    @classmethod
    def fit(cls, values: list[float], *, zero: bool = False, log_ratio: float = 1e3, integer: bool = False,
            fixed: tuple[float, float] | None = None) -> "Scale":
        """A scale covering `values`: from 0 when `zero` and all are positive, log when all are positive and
        span at least `log_ratio`; `fixed` is a range to cover in any case."""
        lo = min(values, default=math.nan)
        hi = max(values, default=math.nan)
        if fixed is not None:
            lo, hi = (fixed[0], fixed[1]) if math.isnan(lo) else (min(lo, fixed[0]), max(hi, fixed[1]))
        if math.isnan(lo):
            return cls(0.0, 1.0, integer=integer)
        if log_ratio and lo > 0 and hi / lo >= log_ratio:
            return cls(lo, hi, log=True)
        if zero and lo > 0:
            lo = 0.0
        if hi > lo and not integer and fixed is None:
            hi = hi + (hi / 2 - lo / 2) * 0.1  # headroom above the highest curve (halves: no overflow)
            hi = hi if math.isfinite(hi) else max(values)
        return cls(lo, hi, integer=integer)

    def frac(self, v: float) -> float:
        """Where `v` lies between lo (0) and hi (1)."""
        if self.log:
            v = math.log10(v) if v > 0 else self.lo
        return (v / 2 - self.lo / 2) / (self.hi / 2 - self.lo / 2)

    def ticks(self, count: int = 6) -> list[tuple[float, str]]:
        """About `count` round tick values within the range, each with its label."""
        if self.log:
            first, last = math.ceil(self.lo - 1e-9), math.floor(self.hi + 1e-9)
            every = max(1, math.ceil((last - first + 1) / count))
            return [(10.0 ** e, f"{10.0 ** e:g}") for e in range(first, last + 1, every)]
        step = nice_step(self.hi / 2 - self.lo / 2, count / 2)  # halves: hi - lo may overflow
        if self.integer:
            step = max(step, 1.0)
        values, k = [], math.ceil(self.lo / step - 1e-9)
        while len(values) < 4 * count:
            v = k * step
            if v > self.hi + step * 1e-9:
                break
            values.append(0.0 if abs(v) < step * 1e-9 else v)
            k += 1
        return [(v, self._label(v, step)) for v in values]

    def _label(self, v: float, step: float) -> str:
        """Few digits, but enough to tell neighbouring ticks apart."""
        biggest = max(abs(self.lo), abs(self.hi))
        if biggest >= 1e6 or step < 1e-4:
            digits = max(1, min(12, math.ceil(math.log10(biggest / step)) + 1))
            return f"{v:.{digits}g}"
        return f"{v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def nice_step(span: float, count: float) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) dividing `span` into about `count` parts."""
    raw = span / max(count, 1)
    if not raw > 0 or not math.isfinite(raw):
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10.0 * mag


# ----------------------------------------------------------------------------------------------------- layout
def panel_boxes(size: tuple[int, int]) -> dict[str, tuple[int, int, int, int]]:
    """Pixel boxes (left, top, right, bottom) of the 'curves' and 'lr' panels in an image of `size`."""
    w, h = size
    left, right, top, bottom, gap = 80, w - 80, 56, h - 44, 46
    split = top + int((bottom - top - gap) * 0.66)
    return {"curves": (left, top, right, split), "lr": (left, split + gap, right, bottom)}


def _clean(series) -> list[tuple[float, float]]:
    """The finite (iteration, value) points of a series, in order."""
    out = []
    for point in series or ():
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


# ------------------------------------------------------------------------------------------------------ drawing
class _Canvas:
    def __init__(self, size):
        from PIL import Image, ImageDraw

        self.image = Image.new("RGB", size, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(13)
        self.small = _font(12)

    def text_size(self, text, font=None):
        box = self.draw.textbbox((0, 0), text, font=font or self.small)
        return box[2] - box[0], box[3] - box[1]

    def text(self, xy, text, anchor="la", font=None, fill=TEXT):
        self.draw.text(xy, text, fill=fill, font=font or self.small, anchor=anchor)

    def vertical_text(self, center, text, fill=TEXT):
        """Text turned 90° (reading upwards), centred on `center`: an axis title."""
        from PIL import Image, ImageDraw

        tw, th = self.text_size(text, self.font)
        tile = Image.new("L", (tw + 4, th + 8), 0)
        ImageDraw.Draw(tile).text((2, 2), text, fill=255, font=self.font)
        tile = tile.rotate(90, expand=True)
        ink = Image.new("RGB", tile.size, fill)
        self.image.paste(ink, (int(center[0] - tile.width / 2), int(center[1] - tile.height / 2)), tile)

    def series(self, box, xs: Scale, ys: Scale, points, color):
        left, top, right, bottom = box
        pixels = []
        for x, y in points:
            px = left + xs.frac(x) * (right - left)
            py = bottom - ys.frac(y) * (bottom - top)
            px, py = round(min(max(px, left), right)), round(min(max(py, top), bottom))
            if not pixels or pixels[-1] != (px, py):
                pixels.append((px, py))
        if len(pixels) > 1:
            self.draw.line(pixels, fill=color, width=2, joint="curve")
        if len(points) <= MARKER_MAX_POINTS:
            for px, py in pixels:
                self.draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)

    def axes(self, box, xs: Scale, left_scale: Scale | None, right_scale: Scale | None, x_labels=True):
        left, top, right, bottom = box
        for v, text in xs.ticks(8):
            px = round(left + xs.frac(v) * (right - left))
            self.draw.line([(px, top), (px, bottom)], fill=GRID)
            self.draw.line([(px, bottom), (px, bottom + 4)], fill=FRAME)
            if x_labels:
                self.text((px, bottom + 6), text, anchor="ma")
        for scale, side in ((left_scale, "left"), (right_scale, "right")):
            if scale is None:
                continue
            for v, text in scale.ticks(6):
                py = round(bottom - scale.frac(v) * (bottom - top))
                if side == "left":
                    self.draw.line([(left, py), (right, py)], fill=GRID)
                    self.draw.line([(left - 4, py), (left, py)], fill=FRAME)
                    self.text((left - 6, py), text, anchor="rm")
                else:
                    self.draw.line([(right, py), (right + 4, py)], fill=FRAME)
                    self.text((right + 6, py), text, anchor="lm")
        self.draw.rectangle(box, outline=FRAME)

    def legend(self, entries, y):
        """One row of colour swatches and names, centred at height y."""
        widths = [22 + self.text_size(name)[0] + 18 for name, _ in entries]
        x = max(4, (self.image.width - sum(widths)) // 2)
        for (name, color), width in zip(entries, widths):
            self.draw.line([(x, y), (x + 16, y)], fill=color, width=3)
            self.text((x + 22, y), name, anchor="lm")
            x += width


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


# ---------------------------------------------------------------------------------------------------- the plot
def plot_training(path: str, train: dict, test: dict, lr: list, *, size: tuple[int, int] = (900, 600),
                  title: str = "Training") -> None:
    """Write the training curves to the PNG file `path` (atomically).

    train, test: output name -> [(iteration, value), ...]; names containing "acc" go on the accuracy axis,
    all others on the loss axis.  lr: [(iteration, rate), ...].  Any of them may be empty.
    """
    w, h = int(size[0]), int(size[1])
    if w < 300 or h < 200:
        raise CaffeError(f"plot_training: the image must be at least 300x200, got {w}x{h}")
    curves = []  # (legend name, points, on the accuracy axis)
    for phase, outputs in (("train", train or {}), ("test", test or {})):
        for name, series in outputs.items():
            curves.append((f"{phase} {name}", _clean(series), is_accuracy(name)))
    curves.sort(key=lambda c: c[2])  # losses first, so they take the first colours
    rates = _clean(lr)

    every_x = [x for _, pts, _ in curves for x, _ in pts] + [x for x, _ in rates]
    xs = Scale.fit(every_x, integer=True, log_ratio=0)
    losses = [y for _, pts, acc in curves if not acc for _, y in pts]
    accs = [y for _, pts, acc in curves if acc for _, y in pts]
    loss_scale = Scale.fit(losses, zero=True)
    percent = bool(accs) and max(accs) > 1.0
    acc_scale = Scale.fit(accs, log_ratio=0, fixed=(0.0, 100.0 if percent else 1.0)) if accs else None
    lr_scale = Scale.fit([y for _, y in rates], zero=True, log_ratio=100)

    canvas = _Canvas((w, h))
    boxes = panel_boxes((w, h))
    canvas.text((w // 2, 8), title, anchor="ma", font=canvas.font)
    canvas.axes(boxes["curves"], xs, loss_scale, acc_scale)
    canvas.axes(boxes["lr"], xs, lr_scale, None)
    entries = []
    for i, (name, pts, acc) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        canvas.series(boxes["curves"], xs, acc_scale if acc else loss_scale, pts, color)
        entries.append((name, color))
    canvas.series(boxes["lr"], xs, lr_scale, rates, LR_COLOR)
    if rates:
        entries.append(("learning rate", LR_COLOR))
    canvas.legend(entries, 38)

    top_box, lr_box = boxes["curves"], boxes["lr"]
    canvas.vertical_text((22, (top_box[1] + top_box[3]) // 2), "loss" + (" (log)" if loss_scale.log else ""))
    if acc_scale is not None:
        canvas.vertical_text((w - 18, (top_box[1] + top_box[3]) // 2), "accuracy" + (" (%)" if percent else ""))
    canvas.vertical_text((22, (lr_box[1] + lr_box[3]) // 2), "lr" + (" (log)" if lr_scale.log else ""))
    canvas.text((w // 2, h - 18), "iterations", anchor="ma", font=canvas.font)
    if not every_x:
        canvas.text(((top_box[0] + top_box[2]) // 2, (top_box[1] + top_box[3]) // 2), "no data yet", anchor="mm",
                    font=canvas.font)

    buf = io.BytesIO()
    canvas.image.save(buf, "PNG", optimize=False)
    atomic_write(path, buf.getvalue())


def write_curves(solver, path: str) -> None:
    """A solver's curves so far (its `history`: train outputs, test outputs, learning rate) as a PNG at `path`."""
    history = solver.history
    if not history["lr"] and not history["test"]:
        return
    plot_training(path, dict(history["train"]), dict(history["test"]), list(history["lr"]))
    logging.getLogger("caffelike").info("Training curves written to %s", path)
