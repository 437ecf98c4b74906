"""Show what a net did with one image, as DIGITS' "Test a single image" page does with "Show visualizations and
statistics" (classification itself is in caffelike.digits.classify, pictures in caffelike.digits.pictures).

The report (`write_report`) is one self-contained HTML file: the input image, the top-5 table, then, walking the
layers in net order, each blob the first time it is seen (a layer's bottoms, then its parameters, then its tops)
with its statistics (shape, mean, std, min, max, a 20-bin histogram) and a picture.  Activations are those of the
first sample after the whole forward pass, so an in-place blob shows its final value.  Pictures: channels tiled
in a grid, gray for the net's input, RGB for three-channel data, DIGITS' jet heat map for everything else, scaled
per blob to [min, max] (Softmax outputs to [0, 1]).

Deliberate differences from DIGITS' report (the preprocessing's are in caffelike.digits.classify):
  - every parameter blob is shown (DIGITS shows only the first), and InnerProduct weights are drawn as a
    matrix image (rows = outputs) instead of "Not shown";
  - a 2-D activation sample is drawn as one image, not as a grid of 1x1 tiles;
  - the histogram is an inline SVG bar chart rather than a C3 area spline; statistics also give min and max.
"""
from __future__ import annotations

import base64
import html
import logging
import os
import urllib.parse
from typing import Sequence

import numpy as np

from caffelike.digits.classify import Prediction, _dims
from caffelike.digits.pictures import Picture, Stats, _num, histogram_png, picture, png_bytes
from caffelike.format.files import atomic_write

log = logging.getLogger("caffelike")


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


def activation_style(sample_shape, is_input: bool, softmax: bool) -> tuple[str, float | None, float | None]:
    """How DIGITS draws an activation sample: colour for 3 channels, gray for the input, a jet heat map
    otherwise; Softmax outputs on a fixed [0, 1] scale."""
    if len(sample_shape) == 3 and sample_shape[0] == 3:
        return "rgb", None, None
    if is_input:
        return "gray", None, None
    return ("heat", 0.0, 1.0) if softmax else ("heat", None, None)


def param_picture(values: np.ndarray) -> Picture | None:
    """A parameter array's picture: colour tiles for 4-D weights with 3 input (or output) channels, else a heat
    map; a 2-D matrix with its axes named."""
    style = "rgb" if values.ndim == 4 and 3 in values.shape[:2] else "heat"
    pic = picture(values, style) if values.size else None
    if pic is not None and values.ndim == 2:
        pic.note = "; ".join(filter(None, ["rows: outputs, columns: inputs", pic.note]))
    return pic


def _blob_style(net, name: str, first_writer: dict) -> tuple[str, float | None, float | None]:
    """A blob's style: anything no layer writes, or named data, is the input."""
    is_input = name in net.inputs or name not in first_writer or name == "data"
    layer = first_writer.get(name)
    softmax = layer is not None and layer.type == "Softmax"
    return activation_style(net.blobs[name].data.shape[1:], is_input, softmax)


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
                rows.append(Row("Weights" if i == 0 else "Parameters", layer.layer_name,
                                f"{layer.layer_name} [{i}]", detail, Stats(values), param_picture(values),
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

.muted{color:#999}tr.totals td{font-weight:600;border-top:2px solid #999}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _histogram(s: Stats) -> str:
    if not len(s.counts):
        return '<span class="muted">no finite values</span>'
    return _img(histogram_png(s), f"histogram of the {s.size - s.non_finite:,} finite values")


def _stats_table(s: Stats) -> str:
    cells = [("Data shape", _dims(s.shape)), ("Mean", _num(s.mean)), ("Std deviation", _num(s.std)),
             ("Min", _num(s.min)), ("Max", _num(s.max))]
    if s.zeros:
        cells.append(("Zeros", f"{s.zeros:,} of {s.size:,}"))
    if s.non_finite:
        cells.append(("Not finite", f"{s.non_finite:,} of {s.size:,}"))
    body = "".join(f'<tr><td>{k}</td><td class="v">{html.escape(v)}</td></tr>' for k, v in cells)
    return f'<table class="stats">{body}</table>'


def render_html(rows: list[Row], total_params: int, predictions: Sequence[Prediction], input_png: bytes | None,
                info: dict, input_caption: str = "input", outputs: Sequence[float] | None = None) -> str:
    """The report page from its parts: `info` maps captions (model, weights, image, ...) to values.  `outputs`,
    for a model that does not classify (regression), is its output vector, shown instead of the top 5."""
    title = f"Classify one image · {info.get('image', '')}"
    meta = " · ".join(f"{html.escape(k)} <code>{html.escape(str(v))}</code>" for k, v in info.items()
                      if v not in (None, ""))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           "<h1>Classify one image</h1>", f'<p class="meta">{meta}</p>', '<div class="summary">']
    if input_png is not None:
        out.append(f'<div class="input"><figure>{_img(input_png, "input image")}'
                   f'<figcaption>{html.escape(input_caption)}</figcaption></figure></div>')
    if outputs is not None:
        out.append('<table class="pred"><tr><th>#</th><th>Output value</th></tr>')
        out.extend(f'<tr><td>{i}</td><td class="p">{html.escape(_num(v))}</td></tr>' for i, v in enumerate(outputs))
    else:
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
                   f'<td>{_histogram(r.stats)}</td><td class="pic">{pic}</td></tr>')
    out.append(f'<tr class="totals"><td>Totals</td><td colspan="3">{total_params:,} learned parameters</td></tr>')
    out.append("</tbody></table></body></html>")
    return "\n".join(out)


def write_report(net, out_dir: str, predictions: Sequence[Prediction], pixels: np.ndarray | None = None,
                 info: dict | None = None) -> str:
    """Write out_dir/report.html (self-contained) and each picture as a PNG (out_dir/input.png,
    out_dir/blobs/<blob>.png, out_dir/weights/<layer>_<i>.png), every file atomically.  `net` must hold the
    forward pass to show; `pixels` is the uint8 (C, H, W) input image as the net saw it before preprocessing.
    Returns the report's path."""
    rows, total = collect_rows(net)
    return write_page(out_dir, rows, total, predictions, pixels, info)


def write_page(out_dir: str, rows: list[Row], total_params: int, predictions: Sequence[Prediction],
               pixels: np.ndarray | None = None, info: dict | None = None,
               outputs: Sequence[float] | None = None) -> str:
    """Write the report of `rows` (a Caffe net's or a module's) as write_report does; returns its path."""
    info = dict(info or {})
    os.makedirs(os.path.join(out_dir, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "weights"), exist_ok=True)
    input_png, caption = None, "input"
    if pixels is not None:
        image = pixels[0] if pixels.shape[0] == 1 else pixels[::-1].transpose(1, 2, 0)  # gray, or BGR -> RGB
        input_png = png_bytes(image)
        atomic_write(os.path.join(out_dir, "input.png"), input_png)
        caption = f"{image.shape[1]}x{image.shape[0]} {'colour' if image.ndim == 3 else 'gray'}, as fed to the net"
    for r in rows:
        if r.pic is not None:
            atomic_write(os.path.join(out_dir, r.path), r.pic.png())
    page = render_html(rows, total_params, predictions, input_png, info, caption, outputs)
    path = os.path.join(out_dir, "report.html")
    atomic_write(path, page.encode("utf-8"))
    return path
