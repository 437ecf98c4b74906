"""The net as one exportable `torch.nn.Module`: Caffe's data layers become inputs, every other layer runs its own
forward or, where that does not trace into a faithful static graph, the export-specific one in
`caffelike.export.rules`; layers that cannot be exported are refused by name, with the reason, before anything is
traced.

`ExportGraph(net)` holds the net as a submodule (so its parameters become the exported file's weights) and runs
the same plan as `NetGraph._execute`, minus the side effects: no blob is written, no running statistic moves,
no recurrent state is carried.  Its `forward(*inputs)` takes the inputs in `self.inputs` order and returns the
outputs in `self.outputs` order (the net's outputs: blobs no layer consumes, sorted by name as Caffe does).
"""
from __future__ import annotations

import torch
from torch import nn

from caffelike.errors import CaffeError, shape_str
from caffelike.export import rules
from caffelike.proto import caffe_pb2

# Layers that bring data into a net from outside (files, databases, memory, fillers): an exported graph takes
# their tops as inputs of the same shapes, which is what a deploy net's Input layer declares.
DATA_TYPES = frozenset({"Input", "Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"})

# Layers no exported graph can hold, and why (the error and docs/layers.md say this).
LOSS_REASON = ("a training-time loss or metric layer: it checks label values on the host as it runs; export "
               "the deploy net (or the deploy stage) without it")
REFUSED = {
    "Filter": "its tops' first dimension is the number of non-zero selector values, known only when it runs "
              "(a data-dependent shape, which a static graph cannot express)",
    "HDF5Output": "it writes HDF5 files on the host as it runs",
    "Python": "a numpy Python layer runs host code through pycaffe's Layer API, which no tracer can see "
              "(rewrite it as a caffelike.TorchLayer, whose torch forward exports)",
    "TorchLoss": LOSS_REASON,
    **{t: LOSS_REASON for t in ("Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                                "HingeLoss", "ContrastiveLoss", "InfogainLoss", "MultinomialLogisticLoss")},
}


# What docs/layers.md's ONNX column says of a refused type, in a few words.
SHORT_REASONS = {
    "Filter": "no: data-dependent shape",
    "HDF5Output": "no: writes files",
    **{t: "no: loss/metric (drop it: --output)" for t, why in REFUSED.items() if why == LOSS_REASON},
}


def support(type_name: str) -> str:
    """Whether a layer type exports, in a few words: "yes", "yes (export path)" where caffelike.export.rules
    gives it an export-specific forward, "input" for data layers, "no: why" (tests/test_export_layers.py checks
    every type's answer)."""
    if type_name in DATA_TYPES:
        return "input"
    if type_name == "Python":
        return "TorchLayer: yes; numpy layer: no"
    if type_name in REFUSED:
        return SHORT_REASONS[type_name]
    notes = {"Dropout": " (TEST phase)"}
    rule = rules.RULES.get(type_name)
    return ("yes (export path)" if rule is not None else "yes") + notes.get(type_name, "")


class ExportError(CaffeError):
    """A net, or one of its layers, that cannot be exported; the message names the layer and the reason."""


def refusal(layer) -> str | None:
    """Why `layer` (a built caffelike layer) cannot be exported, or None when it can."""
    if layer.type == "Python" and getattr(layer, "torch_native", False):
        return None  # a TorchLayer: its torch forward is traced like a built-in layer's
    if layer.type in REFUSED:
        return REFUSED[layer.type]
    train = layer.phase == caffe_pb2.TRAIN
    if layer.type == "Dropout" and train and layer.param.dropout_param.dropout_ratio > 0:
        return "it draws a random mask in the TRAIN phase; export the TEST phase, where it is the identity"
    if layer.type in ("Pooling", "SPP") and train:
        pool = (layer.param.pooling_param if layer.type == "Pooling" else layer.param.spp_param).pool
        if pool == caffe_pb2.PoolingParameter.STOCHASTIC:
            return "STOCHASTIC pooling draws random numbers in the TRAIN phase; export the TEST phase"
    return None


class ExportGraph(nn.Module):
    """`net` (a NetGraph or Net) as a pure function of its inputs, ready for torch.export, torch.onnx or
    torch.jit.trace.  Raises ExportError for the first layer that cannot be exported."""

    def __init__(self, net, outputs=None, target: str = "onnx"):
        super().__init__()
        self.net = net
        self.target = target
        plan = list(zip(range(len(net.layer_list)), net.layer_list, net.plans))
        if outputs is not None:
            plan = _needed(net, plan, list(outputs))
        self.inputs: list[str] = []
        self.steps: list[tuple] = []  # (index, layer, bottoms, tops, rule or None)
        self.constants = nn.ModuleDict()  # per layer index: what a rule folded before tracing (buffers)
        for i, layer, lplan in plan:
            if layer.type in DATA_TYPES:
                self.inputs.extend(t for t in lplan.tops if t not in self.inputs)
                continue
            why = refusal(layer)
            if why is not None:
                hint = (" (or export only what comes before it: outputs=[...] in Python, --output on the command "
                        "line)") if why == LOSS_REASON else ""
                raise ExportError(f'{layer.type} layer "{layer.layer_name}" cannot be exported: {why}{hint}')
            rule = rules.RULES.get(layer.type)
            if rule is not None and rule.onnx_only and target != "onnx":
                rule = None
            if rule is not None and rule.prepare is not None:
                holder = nn.Module()
                for name, value in rule.prepare(layer).items():
                    holder.register_buffer(name, value)
                self.constants[str(i)] = holder
            self.steps.append((i, layer, tuple(lplan.bottoms), tuple(lplan.tops), rule))
        # An input no kept layer reads (a label beside a deploy graph) is left out of the graph.
        read = _read_by(self.steps) | set(outputs or ())
        self.outputs = list(outputs) if outputs is not None else \
            [name for name in net.outputs if name not in self.inputs]
        self.inputs = [name for name in self.inputs if name in read]
        if not self.inputs:
            raise ExportError(f"net {net.name!r} has no inputs (no Input or data layer) that its outputs depend "
                              "on: nothing to feed it")
        if not self.outputs:
            raise ExportError(f"net {net.name!r} has no outputs (every blob is consumed by a layer)")
        clash = [name for name in self.outputs if name in self.inputs]
        if clash:
            raise ExportError(f"blob(s) {', '.join(clash)} would be both an input and an output of the graph")

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(self.net.blobs[name].tensor.shape) for name in self.inputs}

    def example_inputs(self, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Seeded inputs of the net's input shapes (axis 0 set to `batch` when given): standard normal values,
        except where a layer reads the input as indices or labels (Embed, BatchReindex), which get valid ones."""
        gen = torch.Generator().manual_seed(seed)
        limits = self._index_limits()
        out = []
        for name, shape in self.input_shapes().items():
            if batch is not None and shape:
                shape = (batch, *shape[1:])
            if name in limits:
                out.append(torch.randint(0, limits[name], shape, generator=gen).to(torch.float32))
            else:
                out.append(torch.randn(shape, generator=gen))
        device = self.net.device  # drawn on the CPU (the same numbers everywhere), used where the net is
        return tuple(t.to(device) for t in out)

    def _index_limits(self) -> dict[str, int]:
        """Input blob -> the exclusive upper bound of the indices a layer reads from it."""
        limits = {}
        for _, layer, bottoms, _, _ in self.steps:
            if layer.type == "Embed":
                limits[bottoms[0]] = int(layer.param.embed_param.input_dim)
            elif layer.type == "BatchReindex":
                limits[bottoms[1]] = int(self.net.blobs[bottoms[0]].tensor.shape[0])
        return {k: v for k, v in limits.items() if k in self.inputs}

    def _constants_of(self, i: int):
        key = str(i)
        return self.constants[key] if key in self.constants else None  # noqa: SIM401 (ModuleDict has no .get)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(xs) != len(self.inputs):
            raise ExportError(f"the graph takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {len(xs)}")
        env = dict(zip(self.inputs, xs))
        for i, layer, bottoms, tops, rule in self.steps:
            args = [env[b] for b in bottoms]
            try:
                if rule is None:
                    outs = layer(*args)
                else:
                    outs = rule.forward(layer, self._constants_of(i), *args)
            except CaffeError:
                raise
            except Exception as e:  # a tracer's refusal, named after the layer that met it
                first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
                raise ExportError(f'{layer.type} layer "{layer.layer_name}" cannot be traced: '
                                  f"{type(e).__name__}: {first[:400]}") from e
            outs = (outs,) if isinstance(outs, torch.Tensor) else tuple(outs)
            for t, value in zip(tops, outs):
                env[t] = value
        return tuple(env[name] for name in self.outputs)


def _read_by(steps) -> set[str]:
    return {b for _, _, bottoms, _, _ in steps for b in bottoms}


def _needed(net, plan, outputs: list[str]) -> list[tuple]:
    """The layers `outputs` depend on, in order: a walk back from the outputs over the last writer of each blob
    (an in-place layer writes its bottom's name again)."""
    unknown = [name for name in outputs if name not in net.blobs]
    if unknown:
        raise ExportError(f"net {net.name!r} has no blob named {', '.join(map(repr, unknown))} to export as an "
                          f"output (its blobs: {', '.join(net.blobs)})")
    if len(set(outputs)) != len(outputs):
        raise ExportError(f"outputs {outputs} name a blob twice")
    needed, kept = set(outputs), []
    for step in reversed(plan):
        _, _, lplan = step
        if needed & set(lplan.tops):
            kept.append(step)
            needed -= set(lplan.tops)
            needed |= set(lplan.bottoms)
    return kept[::-1]


def reference_outputs(net, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """caffelike's own numbers for `inputs` (blob name -> tensor): every layer's ordinary forward, in order,
    the data layers' tops taken from `inputs` — what an exported graph must reproduce."""
    env = dict(inputs)
    with torch.no_grad():
        for i, (layer, plan) in enumerate(zip(net.layer_list, net.plans)):
            if layer.type in DATA_TYPES:
                continue
            outs = net._run_layer(i, [env[b] for b in plan.bottoms])
            for t, value in zip(plan.tops, outs):
                env[t] = value
    return env


def set_input_shapes(net, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give the net's inputs new shapes (pycaffe's blob.reshape + net.reshape) before exporting."""
    known = [layer_top for layer, plan in zip(net.layer_list, net.plans) if layer.type in DATA_TYPES
             for layer_top in plan.tops]
    for name, shape in shapes.items():
        if name not in known:
            raise ExportError(f"--input-shape names {name!r}, which is not an input of net {net.name!r} "
                              f"(its inputs: {', '.join(known) or 'none'})")
        shape = tuple(int(d) for d in shape)
        if any(d < 1 for d in shape):
            raise ExportError(f"input {name!r}: every dimension must be >= 1, got {shape_str(shape)}")
        net.blobs[name].reshape(*shape)
    if shapes:
        net.reshape()
