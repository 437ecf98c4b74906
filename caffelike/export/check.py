"""Running an exported file and comparing it with caffelike: onnxruntime or OpenCV's dnn for ONNX,
torch.export.load for .pt2, torch.jit.load for TorchScript.

The reference is caffelike's ordinary forward (every layer's own code, as the rest of the test suite checks it
against BVLC Caffe), never the export-specific paths the file was traced from, so a check proves the file
computes Caffe's numbers.  Per output: the largest absolute difference and the relative error, that difference
divided by the largest magnitude of the reference output (an elementwise ratio would blow up where an output
crosses zero); NaN where both have NaN counts as agreement.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from caffelike.export.graph import ExportError, ExportGraph, reference_outputs

DEFAULT_TOLERANCE = 1e-4


@dataclass
class OutputCheck:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        status = "ok" if self.ok else "FAILED"
        note = f"  ({self.note})" if self.note else ""
        return (f"{self.name:<24} {list(self.shape)!s:<20} max abs {self.max_abs:.3e}  max rel "
                f"{self.max_rel:.3e}  {status}{note}")


@dataclass
class CheckReport:
    format: str
    runtime: str
    outputs: list[OutputCheck]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def text(self) -> str:
        head = f"checked with {self.runtime} against caffelike (relative tolerance {self.tolerance:g}):"
        return "\n".join([head, *("  " + o.line() for o in self.outputs),
                          "all outputs match" if self.ok else "MISMATCH"])


def compare(name: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> OutputCheck:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return OutputCheck(name, want.shape, float("inf"), float("inf"), False,
                           f"shape {list(got.shape)}, caffelike {list(want.shape)}")
    both_nan = np.isnan(got) & np.isnan(want)
    diff = np.where(both_nan, 0.0, np.abs(got - want))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only is a mismatch
    finite = np.abs(want[np.isfinite(want)])
    scale = float(finite.max()) if finite.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return OutputCheck(name, want.shape, max_abs, max_rel, bool(max_rel <= tolerance))


def _onnxruntime(path: str, names: list[str], inputs: dict, outputs: list[str]) -> list[np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError('--check needs onnxruntime: pip install "caffelike[export]"') from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    return session.run(outputs, feeds)


def _opencv(path: str, names: list[str], inputs: dict, outputs: list[str]) -> list[np.ndarray]:
    try:
        import cv2
    except ImportError:
        raise ExportError("checking with OpenCV needs opencv-python-headless (5 or later)") from None
    net = cv2.dnn.readNetFromONNX(path)
    for name in names:
        net.setInput(np.ascontiguousarray(inputs[name]), name)
    return [np.asarray(a) for a in net.forward(outputs)]


def _torch_program(path: str, fmt: str, inputs: dict, outputs: list[str], device) -> list[np.ndarray]:
    from caffelike.export.writers import read_meta

    meta = read_meta(path, fmt)
    program = meta["program"]
    run = program.module() if fmt == "torch-export" else program
    with torch.no_grad():
        got = run(*(torch.from_numpy(inputs[n]).to(device) for n in meta["inputs"]))
    by_name = dict(zip(meta["outputs"], got))
    return [by_name[n].detach().cpu().numpy() for n in outputs]


RUNTIMES = {"onnx": "onnxruntime", "opencv": "OpenCV dnn", "torch-export": "torch.export.load",
            "torchscript": "torch.jit.load"}


def check_file(net, path: str, fmt: str = "onnx", runtime: str | None = None, inputs: dict | None = None,
               batch: int | None = None, seed: int = 0, tolerance: float = DEFAULT_TOLERANCE,
               outputs: list[str] | None = None) -> CheckReport:
    """Run the exported file at `path` (format `fmt`) on `inputs` (blob name -> array; default: seeded random
    inputs of the net's shapes, axis 0 set to `batch` when given) and compare every output with caffelike's.
    `runtime` "opencv" runs an ONNX file in OpenCV's dnn module instead of onnxruntime.  `outputs` as given
    to the export, when it named some."""
    graph = ExportGraph(net, outputs=outputs, target="onnx" if fmt == "onnx" else fmt)
    device = net.device
    if inputs is None:
        arrays = {n: t.cpu().numpy() for n, t in zip(graph.inputs, graph.example_inputs(batch=batch, seed=seed))}
    else:
        missing = [n for n in graph.inputs if n not in inputs]
        if missing:
            raise ExportError(f"no value given for input(s) {', '.join(missing)}")
        arrays = {n: np.ascontiguousarray(np.asarray(inputs[n], dtype=np.float32)) for n in graph.inputs}
    want = reference_outputs(net, {n: torch.from_numpy(a.copy()).to(device) for n, a in arrays.items()})
    kind = runtime or ("onnx" if fmt == "onnx" else fmt)
    if kind == "onnx":
        got = _onnxruntime(path, graph.inputs, arrays, graph.outputs)
    elif kind == "opencv":
        got = _opencv(path, graph.inputs, arrays, graph.outputs)
    else:
        got = _torch_program(path, fmt, arrays, graph.outputs, device)
    rows = [compare(name, g, want[name].detach().cpu().numpy(), tolerance) for name, g in zip(graph.outputs, got)]
    return CheckReport(fmt, RUNTIMES[kind], rows, tolerance)
