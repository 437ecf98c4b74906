"""Export a Caffe net to ONNX, to a torch.export ExportedProgram (.pt2) or to TorchScript, with Caffe's numbers.

    import caffelike as caffe
    from caffelike import export

    net = caffe.Net("deploy.prototxt", caffe.TEST, weights="w.caffemodel")
    export.to_onnx(net, "model.onnx", dynamic_batch=True)
    print(export.check_onnx(net, "model.onnx").text())      # onnxruntime vs caffelike, per output

The graph takes the net's data-layer tops (Input, Data, ...) as inputs and returns its outputs, by their Caffe
blob names.  Layers that cannot be exported (numpy Python layers, Filter, loss layers, HDF5Output) raise
ExportError naming the layer and why; `outputs=[...]` exports only what those blobs need.  The command line is
`caffelike export`; docs/export.md has the onnxruntime and OpenCV snippets.  The onnx, onnxscript and
onnxruntime packages are an optional extra: pip install "caffelike[export]".

This is a face module: it is built on caffelike.net and caffelike.layers, and the engine rooms never import it.
"""
from __future__ import annotations

import os

from caffelike.export.check import (
    DEFAULT_TOLERANCE,
    CheckReport,
    OutputCheck,
    check_file,
)
from caffelike.export.graph import (
    DATA_TYPES,
    REFUSED,
    ExportError,
    ExportGraph,
    refusal,
    set_input_shapes,
    support,
)
from caffelike.export.writers import write_onnx, write_torch_export, write_torchscript

FORMATS = ("onnx", "torch-export", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt2": "torch-export", ".pt": "torchscript", ".ts": "torchscript"}

__all__ = [
    "DATA_TYPES",
    "FORMATS",
    "REFUSED",
    "CheckReport",
    "ExportError",
    "ExportGraph",
    "OutputCheck",
    "check_file",
    "check_onnx",
    "export",
    "format_of",
    "refusal",
    "support",
    "to_onnx",
    "to_torch_export",
    "to_torchscript",
]


def _prepared(net, path, input_shapes, outputs, target: str) -> ExportGraph:
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):  # said before minutes of tracing, not after
        raise ExportError(f"cannot write {os.fspath(path)}: no folder {folder}")
    if input_shapes:
        set_input_shapes(net, dict(input_shapes))
    return ExportGraph(net, outputs=outputs, target=target)


def to_onnx(net, path, opset: int | None = None, dynamic_batch: bool = False, input_shapes: dict | None = None,
            outputs: list[str] | None = None) -> ExportGraph:
    """Write `net` (a caffe.Net or NetGraph) as an ONNX model at `path`.  `opset`: the ONNX opset (default:
    torch's, 20 with torch 2.13; lower ones are converted by onnx's version converter).  `dynamic_batch`: axis 0
    of every input (and output) is symbolic.  `input_shapes`: {input: shape} to reshape the net's inputs first
    (this changes `net`, as pycaffe's reshape does).  `outputs`: the blobs to export (default: the net's
    outputs).  Returns the ExportGraph that was traced (its `.inputs` and `.outputs` are the file's names)."""
    graph = _prepared(net, path, input_shapes, outputs, "onnx")
    write_onnx(graph, os.fspath(path), opset=opset, dynamic_batch=dynamic_batch)
    return graph


def to_torch_export(net, path, dynamic_batch: bool = False, input_shapes: dict | None = None,
                    outputs: list[str] | None = None) -> ExportGraph:
    """Write `net` as a torch.export ExportedProgram (.pt2): load it with `torch.export.load(path).module()`
    and call it with the inputs in order (the names are in the file's extra file caffelike.json)."""
    graph = _prepared(net, path, input_shapes, outputs, "torch-export")
    write_torch_export(graph, os.fspath(path), dynamic_batch=dynamic_batch)
    return graph


def to_torchscript(net, path, dynamic_batch: bool = False, input_shapes: dict | None = None,
                   outputs: list[str] | None = None) -> ExportGraph:
    """Write `net` as TorchScript by tracing (`torch.jit.load(path)`).  Tracing fixes the shapes the layers
    compute, so `dynamic_batch` is refused when the traced graph does not reproduce the net at another batch."""
    graph = _prepared(net, path, input_shapes, outputs, "torchscript")
    write_torchscript(graph, os.fspath(path), dynamic_batch=dynamic_batch)
    return graph


def export(net, path, format: str | None = None, **options) -> ExportGraph:
    """to_onnx, to_torch_export or to_torchscript by `format` (default: from the file's suffix)."""
    fmt = format or format_of(path)
    writers = {"onnx": to_onnx, "torch-export": to_torch_export, "torchscript": to_torchscript}
    if fmt not in writers:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    opset = options.pop("opset", None)
    if opset is not None and fmt != "onnx":
        raise ExportError(f"an opset applies to ONNX only, not to {fmt}")
    if fmt == "onnx":
        options["opset"] = opset
    return writers[fmt](net, path, **options)


def format_of(path) -> str:
    """The format a file name suggests (.onnx, .pt2, .pt/.ts), ONNX when it suggests none."""
    return SUFFIXES.get(os.path.splitext(os.fspath(path))[1].lower(), "onnx")


def check_onnx(net, path, inputs: dict | None = None, batch: int | None = None, seed: int = 0,
               tolerance: float = DEFAULT_TOLERANCE, outputs: list[str] | None = None,
               runtime: str = "onnx") -> CheckReport:
    """Run the ONNX file in onnxruntime (`runtime="opencv"`: OpenCV's dnn) on seeded random inputs (or
    `inputs`) and compare each output with caffelike's: max absolute and relative error, `.ok` within
    `tolerance` (relative to the output's largest magnitude)."""
    return check_file(net, os.fspath(path), "onnx", runtime=runtime, inputs=inputs, batch=batch, seed=seed,
                      tolerance=tolerance, outputs=outputs)
