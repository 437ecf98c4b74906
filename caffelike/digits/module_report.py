"""The report of `caffelike classify --network` for a PyTorch module: caffelike.digits.report's page, its rows
gathered by forward hooks on every submodule instead of walking a Caffe net's blobs.

Rows, in call order: the input; then, for each submodule call, its own parameters (recurse=False) the first
time it is called ("Weights" for its first tensor, "Parameters" for the others), and its output when it
returns (sample 0, copied at once so that a later in-place module does not change it).  Which outputs:
  - every leaf module's, and a container's only when it is a tensor no submodule returned (a Sequential's
    output is its last layer's, already shown), so a Sequential LeNet shows each layer's output once;
  - only tensors: a module returning a tuple, dict or None has no output row (its parameters still show);
  - a module called more than once has one row per call, titled "name (call k)".
Parameters of modules the pass never called follow at the end; a parameter shared by several modules shows
once.  The total counts each distinct parameter once.  The root module is titled "model" (its own parameters
and a fresh output tensor only).  Pictures and statistics are the Caffe report's.
"""
from __future__ import annotations

import html

import numpy as np
import torch
from torch import nn

from caffelike.digits.classify import _dims
from caffelike.digits.pictures import Stats, picture
from caffelike.digits.report import Row, activation_style, file_name, param_picture

ROOT = "model"


def _array(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # half, bfloat16, integers and bools as float32, which numpy and the pictures take
    return t.numpy()


class Recorder:
    """Forward hooks on every module of `model` while the `with` block runs (removed on leaving it, also on an
    error), noting each call in order; `rows(x)` then builds the report's rows for the input `x`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.events: list[tuple] = []  # ("call", name, module) or ("output", name, module, array, shape)
        self._handles: list = []
        self._returned: list[torch.Tensor] = []  # the outputs already shown, kept alive so their ids stay unique
        self._returned_ids: set[int] = set()
        self._called: set[str] = set()

    def __enter__(self):
        try:
            for name, module in self.model.named_modules():
                name = name or ROOT
                leaf = next(module.children(), None) is None
                self._handles.append(module.register_forward_pre_hook(self._pre(name)))
                self._handles.append(module.register_forward_hook(self._post(name, leaf)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _pre(self, name: str):
        def hook(module, args):
            if name not in self._called:
                self._called.add(name)
                self.events.append(("call", name, module))
        return hook

    def _post(self, name: str, leaf: bool):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                return
            if not leaf and id(output) in self._returned_ids:
                return
            self._returned.append(output)
            self._returned_ids.add(id(output))
            sample = output[0] if output.ndim else output
            self.events.append(("output", name, module, _array(sample).copy(), tuple(output.shape)))
        return hook

    def rows(self, x: torch.Tensor) -> tuple[list[Row], int]:
        """The report's rows for the pass just recorded, whose input was `x` (N, ...); and the count of the
        model's distinct learned parameters."""
        data = _array(x)
        sample = data[0] if data.ndim else data
        style, lo, hi = activation_style(sample.shape, True, False)
        rows = [Row("Activation", "input", "input", f"model input · {_dims(data.shape)}, sample 0 shown",
                    Stats(sample), picture(sample, style, lo, hi) if sample.size else None, "blobs/input.png")]
        calls: dict[str, int] = {}
        for event in self.events:
            if event[0] == "output":
                calls[event[1]] = calls.get(event[1], 0) + 1
        numbered: dict[str, int] = {}
        shown: set[int] = set()
        for event in self.events:
            if event[0] == "call":
                rows.extend(_param_rows(event[1], event[2], shown))
                continue
            _, name, module, sample, shape = event
            numbered[name] = numbered.get(name, 0) + 1
            title = name if calls[name] == 1 else f"{name} (call {numbered[name]})"
            stem = name if calls[name] == 1 else f"{name}_call{numbered[name]}"
            style, lo, hi = activation_style(sample.shape, False, isinstance(module, nn.Softmax))
            detail = f"output of {html.escape(type(module).__name__)} · {_dims(shape)}"
            detail += ", sample 0 shown" if len(shape) else ""
            rows.append(Row("Activation", name, title, detail, Stats(sample),
                            picture(sample, style, lo, hi) if sample.size else None,
                            f"blobs/{file_name(stem)}.png"))
        for name, module in self.model.named_modules():  # modules this pass did not call
            rows.extend(_param_rows(name or ROOT, module, shown, called=False))
        total = sum(p.numel() for p in self.model.parameters())
        return rows, total


def _param_rows(name: str, module: nn.Module, shown: set[int], called: bool = True) -> list[Row]:
    own = [(key, p) for key, p in module.named_parameters(recurse=False) if id(p) not in shown]
    count = sum(p.numel() for _, p in own)
    rows = []
    for i, (key, p) in enumerate(own):
        shown.add(id(p))
        values = _array(p)
        full = key if name == ROOT else f"{name}.{key}"
        detail = f"{html.escape(type(module).__name__)} · {html.escape(key)}"
        if i == 0:
            detail += f" · {count:,} learned parameters in the module"
        if not p.requires_grad:
            detail += " · frozen"
        if not called:
            detail += " · not called in this pass"
        rows.append(Row("Weights" if i == 0 else "Parameters", name, full, detail, Stats(values),
                        param_picture(values), f"weights/{file_name(full)}.png"))
    return rows


def module_rows(model: nn.Module, x: torch.Tensor) -> tuple[list[Row], int, torch.Tensor]:
    """Run `model` on `x` once (eval mode, no gradients) with hooks on every submodule; returns the report's
    rows, the count of learned parameters and the model's output."""
    model.eval()
    with torch.no_grad(), Recorder(model) as recorder:
        output = model(x)
    rows, total = recorder.rows(x)
    return rows, total, output
