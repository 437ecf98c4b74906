"""Writing an ExportGraph to a file: ONNX (torch.onnx's dynamo exporter), a torch.export ExportedProgram (.pt2)
and TorchScript (torch.jit.trace).

Why the dynamo-based ONNX exporter (`torch.onnx.export(..., dynamo=True)`, torch's default since 2.9): it traces
with torch.export, so a dynamic batch stays symbolic through every shape computation the layers make (their
reshapes compute sizes from `x.shape` in Python); the TorchScript-based exporter records those sizes as
constants, and its graph then silently breaks at another batch size.  It also has torch's current op
coverage (onnxscript's torchlib), where the TorchScript exporter is deprecated.  It is slower to start: torch
rebuilds its aten -> ONNX registry from onnxscript's sources on every call (about 3 s here), so the registry is
built once per process and reused (`_registry_once`).

Every file carries the Caffe blob names of its inputs and outputs: ONNX as the graph's input and output names,
.pt2 and TorchScript in an extra file `caffelike.json` ({"inputs": [...], "outputs": [...]}).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import os
import warnings

import torch

from caffelike.export.graph import ExportError, ExportGraph

META_FILE = "caffelike.json"
_ONNX_SIZE_LIMIT = 2 ** 31 - 2 ** 26  # protobuf's 2 GB, with room for the graph: larger weights go beside it
_REGISTRIES: dict = {}


def _meta(graph: ExportGraph) -> str:
    return json.dumps({"inputs": graph.inputs, "outputs": graph.outputs})


def _batch_examples(graph: ExportGraph, dynamic_batch: bool) -> tuple[torch.Tensor, ...]:
    """Trace inputs: the net's shapes, with a batch of at least 2 when the batch is to stay dynamic (torch.export
    specialises a dimension it sees as 1)."""
    shapes = graph.input_shapes()
    batch = None
    if dynamic_batch:
        first = {s[0] for s in shapes.values() if s}
        batch = max(2, *first) if first else None
    return graph.example_inputs(batch=batch)


def _dynamic_shapes(graph: ExportGraph):
    # The exported module takes *inputs, so the spec is one tuple for that one argument.
    batch = torch.export.Dim("batch", min=1)
    return (tuple({0: batch} if len(s) else {} for s in graph.input_shapes().values()),)


@contextlib.contextmanager
def _quiet():
    """The exporters narrate on stdout and warn about things that do not concern a Caffe net (torchvision ops,
    tracer warnings about the shape arithmetic); keep them for errors only."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx.experimental.symbolic_shapes",
             "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _registry_once():
    """Reuse torch.onnx's aten -> ONNX function registry across exports in this process (it is rebuilt on every
    export otherwise, seconds each time).  The registry is read, never changed, when no custom translation
    table is given, which this module never gives.  A torch without this private hook exports unchanged."""
    try:
        from torch.onnx._internal.exporter import _registration

        original = _registration.ONNXRegistry.__dict__["from_torchlib"].__func__
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def from_torchlib(cls, *args, **kwargs):
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = original(cls, *args, **kwargs)
        return _REGISTRIES[key]

    _registration.ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        _registration.ONNXRegistry.from_torchlib = classmethod(original)


def _parameter_bytes(graph: ExportGraph) -> int:
    return sum(p.numel() * p.element_size() for p in graph.parameters()) + \
        sum(b.numel() * b.element_size() for b in graph.buffers())


def _explain(e: Exception, what: str) -> ExportError:
    if isinstance(e, ExportError):
        return e
    text = str(e).strip()
    first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)
    if "specialized it to be a constant" in text or "Constraints violated" in text:
        return ExportError(f"{what}: a dynamic batch is not possible for this net: some layer fixes the batch size "
                           f"(torch.export: {first}); export with a fixed batch instead")
    detail = ""
    for line in text.splitlines():  # the dynamo exporter's summary names the unsupported operator
        if "No ONNX function found" in line or "DispatchError" in line:
            detail = f" ({line.strip()[:300]})"
            break
    return ExportError(f"{what} failed: {type(e).__name__}: {first[:500]}{detail}")


def write_onnx(graph: ExportGraph, path: str, opset: int | None = None, dynamic_batch: bool = False) -> None:
    """torch.export first (its errors are the clear ones, and a batch that cannot stay dynamic fails there:
    torch.onnx would otherwise retry other capture strategies and quietly write a fixed batch), then torch.onnx
    on the ExportedProgram."""
    try:
        import onnx  # noqa: F401  (the dynamo exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
                          'pip install "caffelike[export]"') from None
    if not hasattr(torch.export, "Dim") or "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ExportError(f"ONNX export needs torch's dynamo-based exporter (torch 2.5 or later; caffelike export "
                          f"is tested with 2.13), this is torch {torch.__version__}")
    program = export_program(graph, dynamic_batch)
    big = _parameter_bytes(graph) > _ONNX_SIZE_LIMIT
    try:
        with torch.no_grad(), _quiet(), _registry_once():
            torch.onnx.export(program, (), path, dynamo=True, opset_version=opset,
                              input_names=list(graph.inputs), output_names=list(graph.outputs),
                              external_data=big, verbose=False)
    except Exception as e:
        raise _explain(e, "ONNX export") from e
    if dynamic_batch:
        _check_dynamic_batch(path, graph)


def _check_dynamic_batch(path: str, graph: ExportGraph) -> None:
    """Make sure every input's axis 0 is symbolic, and call that symbol "batch" (torch names it s0, s31...)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    inputs = [i for i in model.graph.input if i.name in graph.inputs and i.type.tensor_type.shape.dim]
    fixed = [i.name for i in inputs if not i.type.tensor_type.shape.dim[0].dim_param]
    if fixed:
        os.remove(path)
        raise ExportError(f"ONNX export: the batch of input(s) {', '.join(fixed)} did not stay dynamic")
    symbols = {i.type.tensor_type.shape.dim[0].dim_param for i in inputs}
    if len(symbols) != 1 or any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        return  # (several symbols, or weights beside the file: leave torch's names)
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = "batch"
    onnx.save(model, path)


def export_program(graph: ExportGraph, dynamic_batch: bool = False):
    """The torch.export ExportedProgram of `graph`."""
    examples = _batch_examples(graph, dynamic_batch)
    kwargs = {"dynamic_shapes": _dynamic_shapes(graph)} if dynamic_batch else {}
    try:
        with torch.no_grad(), _quiet():
            return torch.export.export(graph.eval(), examples, strict=False, **kwargs)
    except Exception as e:
        raise _explain(e, "torch.export") from e


def write_torch_export(graph: ExportGraph, path: str, dynamic_batch: bool = False) -> None:
    program = export_program(graph, dynamic_batch)
    torch.export.save(program, path, extra_files={META_FILE: _meta(graph)})


def write_torchscript(graph: ExportGraph, path: str, dynamic_batch: bool = False) -> None:
    """torch.jit.trace: shapes the layers compute in Python become constants of the trace, so a dynamic batch
    works only when no layer reshapes with the batch size; it is checked at another batch before the file is
    kept, and refused otherwise (torch.export keeps the batch symbolic: --format torch-export)."""
    examples = _batch_examples(graph, dynamic_batch)
    try:
        with torch.no_grad(), _quiet():
            traced = torch.jit.trace(graph.eval(), examples, check_trace=False, strict=False)
    except Exception as e:
        raise _explain(e, "TorchScript tracing") from e
    if dynamic_batch:
        other = graph.example_inputs(batch=int(examples[0].shape[0]) + 1 if examples and examples[0].dim() else 3,
                                     seed=1)
        problem = None
        try:
            with torch.no_grad(), _quiet():
                got, want = traced(*other), graph(*other)
            for name, a, b in zip(graph.outputs, got, want):
                if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True):
                    problem = f"output {name!r} differs at batch {other[0].shape[0]}"
                    break
        except Exception as e:  # noqa: BLE001  (a traced reshape to the traced batch size fails outright)
            problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        if problem:
            raise ExportError("TorchScript cannot hold a dynamic batch for this net: tracing fixes the shapes the "
                              f"layers compute ({problem}); use --format torch-export, which keeps it symbolic")
    traced.save(path, _extra_files={META_FILE: _meta(graph)})


def read_meta(path: str, fmt: str) -> dict:
    """The input and output names written beside a .pt2 or TorchScript file."""
    extra = {META_FILE: ""}
    if fmt == "torch-export":
        program = torch.export.load(path, extra_files=extra)
    else:
        program = torch.jit.load(path, _extra_files=extra)
    meta = json.loads(extra[META_FILE] or "{}")
    if not meta:
        raise ExportError(f"{os.fspath(path)} has no {META_FILE}: not written by caffelike export")
    return {"program": program, **meta}
