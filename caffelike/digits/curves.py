"""Training curves as a PNG, drawn with matplotlib in the manner of DIGITS' training page.

The upper panel holds the losses (left axis) and the accuracies (right axis, 0..1 or percent, whichever the
values use); the lower panel holds the learning rate.  Both share the iteration axis.  Values that are NaN or
infinite are skipped; an axis whose positive values span three decades or more (a diverging loss, a step
schedule) switches to a log scale so that nothing is squashed against the frame.

matplotlib is used through `Figure` and its Agg canvas, never pyplot: no global figure state, no GUI backend
(training runs on headless machines and in the web app's worker processes).
"""
from __future__ import annotations

import io
import logging
import math

from matplotlib.figure import Figure

from caffelike.errors import CaffeError
from caffelike.format.files import atomic_write

PALETTE = [f"tab:{c}" for c in ("blue", "orange", "green", "purple", "brown", "pink", "gray", "olive", "cyan")]
LR_COLOR = "tab:red"  # not in PALETTE: the learning rate never shares a colour with a curve
MARKER_MAX_POINTS = 60  # series this sparse (test outputs, a single point) also get a dot at each point
LOG_RATIO = 1e3
LIMIT = 1e300  # values beyond this are clipped before drawing: the axis span must stay a finite float


def is_accuracy(name: str) -> bool:
    """Outputs plotted on the accuracy axis rather than the loss axis."""
    return "acc" in name.lower()


def clean(series) -> list[tuple[float, float]]:
    """The finite (iteration, value) points of a series, in order, values clipped to +-LIMIT."""
    out = []
    for point in series or ():
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, min(max(y, -LIMIT), LIMIT)))
    return out


def wants_log(values: list[float], ratio: float = LOG_RATIO) -> bool:
    """All positive and spanning `ratio` or more: a linear axis would flatten all but the largest values."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= ratio


def _plot(ax, points, color: str, label: str):
    xs, ys = [x for x, _ in points], [y for _, y in points]
    marker = "o" if len(points) <= MARKER_MAX_POINTS else None
    return ax.plot(xs, ys, color=color, linewidth=1.8, marker=marker, markersize=3.5, label=label)[0]


def training_figure(train: dict, test: dict, lr: list, *, size: tuple[int, int] = (900, 600),
                    title: str = "Training", dpi: int = 100) -> Figure:
    """The curves as a matplotlib Figure of `size` pixels: axes `curves` (losses), `accuracy` (its twin, when
    there are accuracies) and `lr`, reachable as `figure.caffelike_axes[name]`."""
    w, h = int(size[0]), int(size[1])
    if w < 300 or h < 200:
        raise CaffeError(f"plot_training: the image must be at least 300x200, got {w}x{h}")
    curves = []  # (legend name, points, on the accuracy axis)
    for phase, outputs in (("train", train or {}), ("test", test or {})):
        for name, series in outputs.items():
            curves.append((f"{phase} {name}", clean(series), is_accuracy(name)))
    curves.sort(key=lambda c: c[2])  # losses first, so they take the first colours
    rates = clean(lr)

    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    axes = {"curves": top, "lr": bottom}
    top.set_title(title, loc="left")
    accs = [y for _, pts, acc in curves if acc for _, y in pts]
    if any(acc for _, _, acc in curves):
        axes["accuracy"] = top.twinx()
        percent = bool(accs) and max(accs) > 1.0
        axes["accuracy"].set_ylim(0, max(100.0 if percent else 1.0, max(accs, default=0.0)))
        axes["accuracy"].set_ylabel("accuracy" + (" (%)" if percent else ""))
    handles = []
    for i, (name, pts, acc) in enumerate(curves):
        handles.append(_plot(axes["accuracy"] if acc else top, pts, PALETTE[i % len(PALETTE)], name))
    losses = [y for _, pts, acc in curves if not acc for _, y in pts]
    if wants_log(losses):
        top.set_yscale("log")
    elif losses and min(losses) > 0:
        top.set_ylim(bottom=0)
    top.set_ylabel("loss" + (" (log)" if wants_log(losses) else ""))
    if rates:
        handles.append(_plot(bottom, rates, LR_COLOR, "learning rate"))
    lr_values = [y for _, y in rates]
    bottom.set_yscale("log" if wants_log(lr_values, 100) else "linear")
    bottom.set_ylabel("lr" + (" (log)" if wants_log(lr_values, 100) else ""))
    bottom.set_xlabel("iterations")
    for ax in (top, bottom):
        ax.grid(True, color="0.9")
    if handles:
        # as many columns as fit the figure's width (about 6.5 px a character at this size, plus the swatch)
        column = 6.5 * max(len(h.get_label()) for h in handles) + 45
        fig.legend(handles=handles, loc="outside upper center", ncols=max(1, min(len(handles), int(w // column))),
                   fontsize="small", frameon=False)
    else:
        top.text(0.5, 0.5, "no data yet", transform=top.transAxes, ha="center", va="center")
    fig.caffelike_axes = axes
    return fig


def plot_training(path: str, train: dict, test: dict, lr: list, *, size: tuple[int, int] = (900, 600),
                  title: str = "Training") -> None:
    """Write the training curves to the PNG file `path` (atomically).

    train, test: output name -> [(iteration, value), ...]; names containing "acc" go on the accuracy axis,
    all others on the loss axis.  lr: [(iteration, rate), ...].  Any of them may be empty.
    """
    fig = training_figure(train, test, lr, size=size, title=title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())


def write_curves(solver, path: str) -> None:
    """A solver's curves so far (its `history`: train outputs, test outputs, learning rate) as a PNG at `path`."""
    history = solver.history
    if not history["lr"] and not history["test"]:
        return
    plot_training(path, dict(history["train"]), dict(history["test"]), list(history["lr"]))
    logging.getLogger("caffelike").info("Training curves written to %s", path)
