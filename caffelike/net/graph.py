"""A Caffe net as a torch graph: Caffe's Net::Init (filter, splits, layer setup, backward planning) and the two
ways of running it.

`NetGraph` is a plain `torch.nn.Module` whose layers are named submodules run in prototxt order.  A
`blob name -> Blob` map is rebound at every top, which is what makes in-place layers come out right.

* `NetGraph.forward(**inputs)` (the torch way): tensors in, a dict of output tensors out, one connected autograd
  graph; what the solver and `torch.compile` use.
* `run_forward(start, end)` / `run_backward(start, end)` (Caffe's way, behind the pycaffe API): every layer's
  bottoms enter as leaves of their own small graph, so backward can run layer by layer over any range, write
  every blob's diff, honour propagate_down exactly, and accumulate parameter diffs like Caffe.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict

import torch
from torch import nn

from caffelike.core.blob import Blob, HostSync, ParamBlob
from caffelike.core.host_memory import keep_freed_memory
from caffelike.errors import CaffeError, LayerError, PrototxtError, shape_str
from caffelike.layers import layer_class
from caffelike.layers.base import Layer
from caffelike.net.backward_plan import plan_backward
from caffelike.net.netstate import filter_net, make_state
from caffelike.net.plan import LayerPlan, LearnableParam, first_tensor, module_key
from caffelike.net.splits import insert_splits
from caffelike.proto import caffe_pb2

AUTOMATIC_TOP = "(automatic)"


@torch.compiler.disable
def _run_eagerly(net: NetGraph, i: int, bottoms: list[torch.Tensor]) -> tuple:
    """Run layer `i` outside any compiled graph (torch.compile splits the graph around this call)."""
    return net._run_layer(i, bottoms)


# Told (layers built, layers in all) every 100 layers while a net of BUILD_PROGRESS_FROM layers or more is built,
# and once more at the end: the command line draws a progress bar from it (the library draws nothing).
BUILD_LISTENERS: list = []
BUILD_PROGRESS_FROM = 2000


class NetGraph(nn.Module):
    """Build a Caffe net for `phase` (caffe_pb2.TRAIN/TEST), `level` and `stages` from an upgraded NetParameter.
    `trust_python` lets Python layers import modules from the prototxt's folder and the working directory."""

    def __init__(self, net_param: caffe_pb2.NetParameter, phase: int = caffe_pb2.TEST, level: int = 0,
                 stages=(), source: str = "<net>", trust_python: bool = False):
        super().__init__()
        keep_freed_memory()  # every pass reallocates its activations: let them reuse the last pass's memory
        self.source = source
        self.phase = phase
        self.state = make_state(phase, level, stages, net_param.state if net_param.HasField("state") else None)
        filtered = filter_net(net_param, self.state)
        self.net_param = insert_splits(filtered)
        self.name = self.net_param.name
        self.force_backward = self.net_param.force_backward
        self.sync = HostSync()
        self.layer_modules = nn.ModuleDict()
        self._layers: list[Layer] = []
        self.plans: list[LayerPlan] = []
        self.blobs: OrderedDict[str, Blob] = OrderedDict()
        self.blob_loss_weights: OrderedDict[str, float] = OrderedDict()
        self.inputs: list[str] = []
        self.learnable: list[LearnableParam] = []
        self._tape: dict[int, tuple[list, tuple]] = {}
        self._plan: list[tuple] | None = None
        self._compiled = None
        from caffelike.layers.python import net_folder

        with net_folder(os.path.dirname(source) if os.path.exists(source) else None, trust=trust_python):
            self._build()

    # ------------------------------------------------------------------------------------------------------ building
    @property
    def layer_list(self) -> list[Layer]:
        return self._layers

    def _fail(self, message: str) -> None:
        raise PrototxtError(f"{self.source}: {message}")

    def _build(self) -> None:
        available: set[str] = set()
        blob_need_backward: dict[str, bool] = {}
        owners: dict[str, tuple[LearnableParam | None, caffe_pb2.ParamSpec, tuple, nn.Parameter]] = {}
        keys: set[str] = set()
        total = len(self.net_param.layer)
        for done, lp in enumerate(self.net_param.layer):
            if total >= BUILD_PROGRESS_FROM and done % 100 == 0:
                for listener in BUILD_LISTENERS:
                    listener(done, total)
            if not lp.HasField("phase"):
                lp.phase = self.phase
            if lp.propagate_down and len(lp.propagate_down) != len(lp.bottom):
                self._fail(f'layer "{lp.name}": propagate_down must be given once per bottom '
                           f"({len(lp.bottom)}), got {len(lp.propagate_down)}")
            cls = layer_class(lp.type, where=f'{self.source}: layer "{lp.name}"')
            if cls.is_loss and not lp.top:
                lp.top.append(AUTOMATIC_TOP)
            layer = cls(lp, lp.phase)
            layer.check_blob_counts(len(lp.bottom), len(lp.top))
            plan = LayerPlan(list(lp.bottom), list(lp.top))

            need_backward = False
            for j, b in enumerate(lp.bottom):
                if b not in available:
                    self._fail(f"Unknown bottom blob '{b}' (layer '{lp.name}', bottom index {j})")
                available.discard(b)
                flag = blob_need_backward[b]
                need_backward |= flag
                plan.bottom_need_backward.append(bool(lp.propagate_down[j]) if lp.propagate_down else flag)

            bottom_shapes = [tuple(self.blobs[b].tensor.shape) for b in lp.bottom]
            layer.setup(bottom_shapes)
            top_shapes = self._top_shapes(layer, bottom_shapes)

            for j, t in enumerate(lp.top):
                in_place = j < len(lp.bottom) and lp.bottom[j] == t
                if in_place and layer.forbids_in_place:
                    layer.fail(f"does not allow in-place computation (top {j} and bottom {j} are both '{t}')")
                if not in_place:
                    if t in self.blobs and t != AUTOMATIC_TOP:
                        self._fail(f"Top blob '{t}' produced by multiple sources (layer '{lp.name}')")
                    self.blobs[t] = Blob(t, first_tensor(layer, t, top_shapes[j]), self.sync)
                    blob_need_backward[t] = False
                else:
                    self.blobs[t].set_tensor(first_tensor(layer, t, top_shapes[j]))
                available.add(t)
            if lp.type == "Input":
                self.inputs.extend(lp.top)

            plan.loss_weights = self._loss_weights(layer, lp)
            for t, w in zip(lp.top, plan.loss_weights):
                if w != 0:
                    self.blob_loss_weights[t] = w
                    self.blobs[t].set_diff(torch.full(tuple(self.blobs[t].tensor.shape), float(w)))

            need_backward |= self._append_params(layer, lp, plan, owners)
            plan.need_backward = need_backward
            if need_backward:
                for t in lp.top:
                    blob_need_backward[t] = True
            self._layers.append(layer)
            self.plans.append(plan)
            self.layer_modules[module_key(lp.name, keys, self.layer_modules)] = layer
        if total >= BUILD_PROGRESS_FROM:
            for listener in BUILD_LISTENERS:
                listener(total, total)

        for name in self.blobs:
            self.blob_loss_weights.setdefault(name, 0.0)
        self.blob_loss_weights = OrderedDict((n, self.blob_loss_weights[n]) for n in self.blobs)
        plan_backward(self)
        self.outputs = sorted(available)  # Caffe iterates a std::set: outputs come out sorted by name

    def _top_shapes(self, layer: Layer, bottom_shapes) -> list[tuple]:
        try:
            return layer.infer_top_shapes(bottom_shapes)
        except CaffeError:
            raise
        except Exception as e:  # torch's own shape errors, with the layer's context around them
            raise LayerError(f'{layer.type} layer "{layer.layer_name}": cannot run on bottoms of shape '
                             f'{", ".join(shape_str(s) for s in bottom_shapes) or "(none)"}: {e}') from e

    def _loss_weights(self, layer: Layer, lp: caffe_pb2.LayerParameter) -> list[float]:
        if layer.is_loss and not lp.loss_weight:
            lp.loss_weight.append(1.0)  # LossLayer's default, kept in the LayerParameter as Caffe does
        if lp.loss_weight and len(lp.loss_weight) != len(lp.top):
            layer.fail(f"loss_weight must be unspecified or specified once per top blob "
                       f"({len(lp.top)} tops, {len(lp.loss_weight)} loss_weight values)")
        return list(lp.loss_weight) if lp.loss_weight else [0.0] * len(lp.top)

    def _append_params(self, layer: Layer, lp, plan: LayerPlan, owners: dict) -> bool:
        """Caffe's AppendParam: multipliers, sharing by name, and which params need a gradient."""
        n = len(layer.blobs)
        if len(lp.param) > n:
            layer.fail(f"Too many params specified for layer: {len(lp.param)} param specs for {n} blobs")
        need_backward = False
        for i in range(n):
            spec = lp.param[i] if i < len(lp.param) else caffe_pb2.ParamSpec()
            propagate = spec.lr_mult != 0
            need_backward |= propagate
            plan.param_propagate_down.append(propagate)
            param = layer.blobs[i]
            owner = owners.get(spec.name) if spec.name else None
            if owner is None:
                entry = LearnableParam(lp.name, i, param, spec.lr_mult, spec.decay_mult, spec.name)
                self.learnable.append(entry)
                if spec.name:
                    owners[spec.name] = (entry, spec, tuple(param.shape), param)
                continue
            entry, owner_spec, owner_shape, owner_param = owners[spec.name]
            if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                if math.prod(owner_shape) != param.numel():
                    layer.fail(f"cannot share param '{spec.name}': owner count {math.prod(owner_shape)} != "
                               f"{param.numel()}")
                if owner_shape != tuple(param.shape):
                    layer.fail(f"sharing param '{spec.name}' between shapes {shape_str(owner_shape)} and "
                               f"{shape_str(param.shape)} (PERMISSIVE mode) is not supported yet")
            elif owner_shape != tuple(param.shape):
                layer.fail(f"cannot share param '{spec.name}' owned by layer '{entry.layer}': shape mismatch, "
                           f"owner {shape_str(owner_shape)} vs {shape_str(param.shape)}; use share_mode: "
                           "PERMISSIVE to share by count")
            for field_name in ("lr_mult", "decay_mult"):
                if spec.HasField(field_name):
                    if owner_spec.HasField(field_name):
                        if getattr(spec, field_name) != getattr(owner_spec, field_name):
                            layer.fail(f"shared param '{spec.name}' has mismatched {field_name}")
                    else:
                        setattr(entry, field_name, getattr(spec, field_name))
            layer.blobs[i] = owner_param
        return need_backward

    # -------------------------------------------------------------------------------------------- module plumbing
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for blob in self.blobs.values():
            blob.apply(fn)
        self._tape.clear()
        return self

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.blobs.values():
            return b.tensor.device
        return torch.device("cpu")

    def layer_index(self, name: str) -> int:
        for i, layer in enumerate(self._layers):
            if layer.layer_name == name:
                return i
        raise CaffeError(f"net {self.name!r} has no layer named {name!r}")

    # ----------------------------------------------------------------------------------------------- running layers
    def _run_layer(self, i: int, bottoms: list[torch.Tensor]) -> tuple:
        layer = self._layers[i]
        try:
            tops = layer(*bottoms)
        except CaffeError:
            raise
        except Exception as e:
            shapes = ", ".join(f"'{b}' {shape_str(t.shape)}" for b, t in zip(self.plans[i].bottoms, bottoms))
            raise LayerError(f'{layer.type} layer "{layer.layer_name}" failed on bottoms {shapes or "(none)"}: '
                             f"{e}") from e
        return (tops,) if isinstance(tops, torch.Tensor) else tuple(tops)

    def forward(self, **inputs: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Run the whole net as one differentiable torch graph.  Keyword arguments set input blobs (others keep
        their current data); returns the net outputs by name.  The total weighted loss is `self.loss(outs)`."""
        env: dict[str, torch.Tensor] = {}
        for name in self.inputs:
            env[name] = inputs.pop(name) if name in inputs else self.blobs[name].tensor.detach()
        if inputs:
            raise CaffeError(f"unknown input blob(s) {sorted(inputs)}; the net's inputs are {self.inputs}")
        self.sync.push()
        blobs = self.blobs
        for name in self.inputs:
            blobs[name].set_tensor(env[name])
        env = self._compiled(self, env) if self._compiled is not None else self._execute(env)
        for name, value in env.items():
            blobs[name].set_tensor(value)
        return OrderedDict((name, env[name]) for name in self.outputs)

    def _steps(self) -> list[tuple]:
        """The forward pass planned once: (index, layer, bottoms, bottoms that keep their graph, tops, eager)."""
        if self._plan is None:
            self._plan = [(i, layer, tuple(plan.bottoms), tuple(plan.bottom_need_backward), tuple(plan.tops),
                           layer.runs_eagerly)
                          for i, (layer, plan) in enumerate(zip(self._layers, self.plans)) if layer.type != "Input"]
        return self._plan

    def _execute(self, env: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every layer in order on `env` (blob name -> tensor), with no side effect on the net's blobs: the
        function `compile` hands to torch.compile."""
        for i, layer, bottoms, keep, tops, eager in self._steps():
            xs = [env[b] if k else env[b].detach() for b, k in zip(bottoms, keep)]
            outs = _run_eagerly(self, i, xs) if eager else self._run_layer(i, xs)
            for t, value in zip(tops, outs):
                env[t] = value
        return env

    def compile(self, keep_blobs: bool = False, **options) -> NetGraph:
        """Compile the torch path (`forward` / `Net.run`, and so the solver's training step) with torch.compile;
        `options` go to torch.compile (e.g. mode="reduce-overhead" for CUDA graphs on GPU with static shapes,
        mode="max-autotune"; dynamic defaults to False, one graph per input shape).  Layers that run Python on
        the host (data layers, numpy Python layers, HDF5Output) stay outside the compiled graph and run eagerly
        between its pieces; TorchLayer Python layers are traced like built-in ones.  The pycaffe per-layer path
        (`Net.forward/backward`) is not affected.  Returns self.

        A compiled pass updates only the blobs anyone outside it needs: the net's outputs, the blobs with a loss
        weight and the tops of the eager layers.  Every other blob keeps its last value (`refresh_blobs()`
        recomputes them, `net.forward()` too); `keep_blobs=True` updates them all, at the price of making every
        intermediate result an output of the compiled graph (it can then fuse less: LeNet's compiled
        forward+backward was 1.6x slower that way)."""
        options.setdefault("dynamic", False)
        self._compiled = torch.compile(self._unrolled(keep_blobs), **options)
        return self

    def refresh_blobs(self) -> None:
        """Recompute every blob from the current inputs and data-layer tops without running the eager layers
        again (a compiled pass leaves intermediate blobs stale; no data is consumed, no gradient recorded)."""
        env = {name: blob.tensor.detach() for name, blob in self.blobs.items()}
        with torch.no_grad():
            for i, layer, bottoms, _, tops, eager in self._steps():
                if eager:
                    continue
                for t, value in zip(tops, self._run_layer(i, [env[b] for b in bottoms])):
                    env[t] = value
        for name, value in env.items():
            self.blobs[name].set_tensor(value)

    def _unrolled(self, keep_blobs: bool = True):
        """`_execute` as straight-line code, one statement per layer.  torch.compile gives up on a whole loop when
        a graph break happens inside it (an eager layer is one), but splits straight-line code cleanly around
        the break and compiles the rest.  Without `keep_blobs` it returns only the blobs `compile` lists."""
        # Blobs live in local variables: writing into the caller's `env` dict would be a side effect torch.compile
        # replays after the graph, making every intermediate blob a graph output.
        local: dict[str, str] = {}
        fresh = (f"b{k}" for k in itertools.count())
        lines = ["def execute(net, env):"]  # the net as an argument: a copied net runs its own layers
        for name in self.inputs:
            local[name] = next(fresh)
            lines.append(f"    {local[name]} = env[{name!r}]")
        kept = set(self.outputs) | {n for n, w in self.blob_loss_weights.items() if w}
        for i, _, bottoms, keep, tops, eager in self._steps():
            xs = ", ".join(local[b] if k else f"{local[b]}.detach()" for b, k in zip(bottoms, keep))
            lines.append(f"    outs = {'eager' if eager else 'run'}(net, {i}, [{xs}])")
            for j, t in enumerate(tops):
                local[t] = next(fresh)  # an in-place top gets a new variable too
                lines.append(f"    {local[t]} = outs[{j}]")
            if eager:
                kept.update(tops)
        returned = local if keep_blobs else [n for n in local if n in kept]
        lines.append("    return {" + ", ".join(f"{n!r}: {local[n]}" for n in returned) + "}")
        scope = {"eager": _run_eagerly, "run": NetGraph._run_layer}
        exec(compile("\n".join(lines), f"<caffelike net {self.name!r}>", "exec"), scope)
        return scope["execute"]

    def loss(self, values: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Caffe's net loss: sum over blobs with a loss weight of weight * sum(blob)."""
        total = None
        for name, w in self.blob_loss_weights.items():
            if w == 0:
                continue
            t = values[name] if values is not None and name in values else self.blobs[name].tensor
            term = t.sum() * w
            total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=self.device)

    def run_forward(self, start: int = 0, end: int | None = None) -> float:
        """Caffe's ForwardFromTo over layers [start, end], each layer a separate small graph so that
        run_backward can go layer by layer; returns the loss of the layers run."""
        end = len(self._layers) - 1 if end is None else end
        self.sync.push()
        record = torch.is_grad_enabled() and any(plan.need_backward for plan in self.plans[start:end + 1])
        if record:
            return self._forward_range(start, end, True)
        with torch.no_grad():  # once for the whole range: pycaffe inference pays no per-layer grad switching
            return self._forward_range(start, end, False)

    def _forward_range(self, start: int, end: int, record: bool) -> float:
        blobs, tape, loss = self.blobs, self._tape, 0.0
        for i in range(start, end + 1):
            layer, plan = self._layers[i], self.plans[i]
            if layer.type == "Input":
                continue
            if record and plan.need_backward:
                tape[i] = self._record(i)
                tops = tape[i][1]
            else:
                if record:
                    with torch.no_grad():
                        tops = self._run_layer(i, [blobs[b].tensor.detach() for b in plan.bottoms])
                else:
                    tops = self._run_layer(i, [blobs[b].tensor.detach() for b in plan.bottoms])
                tape.pop(i, None)
            for t, value, w in zip(plan.tops, tops, plan.loss_weights):
                blobs[t].set_tensor(value)
                if w != 0:
                    loss += w * float(value.detach().sum())
        return loss

    def _record(self, i: int) -> tuple[list[torch.Tensor], tuple]:
        """Run layer i on what its bottom blobs hold, recording autograd history: (bottoms, tops)."""
        plan = self.plans[i]
        bottoms = []
        for b, nb in zip(plan.bottoms, plan.bottom_need_backward):
            t = self.blobs[b].tensor.detach()
            if nb and t.is_floating_point():
                t.requires_grad_(True)
            bottoms.append(t)
        with torch.enable_grad():
            return bottoms, self._run_layer(i, bottoms)

    def run_backward(self, start: int | None = None, end: int = 0) -> None:
        """Caffe's BackwardFromTo: layers from `start` down to `end`, each reading its tops' diffs, overwriting
        its bottoms' diffs and adding into its parameters' diffs."""
        start = len(self._layers) - 1 if start is None else start
        self.sync.push()
        replayed = []
        for i in range(start, end - 1, -1):
            plan = self.plans[i]
            layer = self._layers[i]
            if not plan.need_backward or layer.type == "Input":
                continue
            if i not in self._tape:
                # Caffe's Backward reads whatever the blobs hold; with no forward recorded (pycaffe's
                # net.backward() right after setting a diff) the layer is replayed from its bottoms' data,
                # its top blobs left as they are.
                self._tape[i] = self._record(i)
                replayed.append(i)
            bottoms, tops = self._tape[i]
            outs, seeds = [], []
            for name, t in zip(plan.tops, tops):
                if t.requires_grad:
                    outs.append(t)
                    seeds.append(self.blobs[name].diff_tensor.to(t.dtype))
            wrt_bottoms = [j for j, (b, nb) in enumerate(zip(bottoms, plan.bottom_need_backward))
                           if nb and b.requires_grad]
            wrt_params = [p for p, down in zip(layer.blobs, plan.param_propagate_down) if down and p.requires_grad]
            targets = [bottoms[j] for j in wrt_bottoms] + wrt_params
            if not outs or not targets:
                grads = [None] * len(targets)
            else:
                grads = torch.autograd.grad(outs, targets, seeds, retain_graph=True, allow_unused=True)
            for j, g in zip(wrt_bottoms, grads):
                blob = self.blobs[plan.bottoms[j]]
                blob.set_diff(torch.zeros_like(bottoms[j]) if g is None else g.detach())
            for p, g in zip(wrt_params, grads[len(wrt_bottoms):]):
                if g is None:
                    continue
                if p.grad is None:
                    # In the parameter's own layout: a channels_last weight view (core/layout.py) hands back a
                    # channels_last gradient, and pycaffe's `diff` and the solver expect the parameter's.
                    p.grad = torch.empty_like(p).copy_(g.detach())
                else:
                    p.grad.add_(g)
        for i in replayed:  # a replay answers this backward only: the next one reads the blobs again
            del self._tape[i]

    def reshape(self) -> None:
        """Propagate input shapes through every layer (Caffe's Net::Reshape) without computing anything."""
        for i, (layer, plan) in enumerate(zip(self._layers, self.plans)):
            if layer.type == "Input":
                continue
            shapes = [tuple(self.blobs[b].tensor.shape) for b in plan.bottoms]
            for t, s in zip(plan.tops, self._top_shapes(layer, shapes)):
                blob = self.blobs[t]
                if tuple(blob.tensor.shape) != tuple(s):
                    ref = blob.tensor
                    blob.set_tensor(torch.zeros(s, dtype=ref.dtype, device=ref.device))
                    w = self.blob_loss_weights.get(t, 0.0)
                    if w:
                        blob.set_diff(torch.full(s, float(w), dtype=ref.dtype, device=ref.device))

    def clear_param_diffs(self) -> None:
        for p in self.parameters():
            if p.grad is not None:
                p.grad.zero_()

    def param_blobs(self) -> OrderedDict[str, list[ParamBlob]]:
        out: OrderedDict[str, list[ParamBlob]] = OrderedDict()
        for layer in self._layers:
            if len(layer.blobs):
                out[layer.layer_name] = [ParamBlob(f"{layer.layer_name}[{i}]", layer, i, self.sync)
                                         for i in range(len(layer.blobs))]
        return out
