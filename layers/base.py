"""The Layer base class and the registry of Caffe layer types.

A layer is one small `torch.nn.Module` that registers its exact Caffe type string.  Its `forward` takes the
bottom tensors and returns the top tensors (one tensor, or a tuple for several tops); backward comes from
autograd.  Learnable and persistent blobs live in `self.blobs` in Caffe's saved order, so `.caffemodel` files
map onto them one to one.

The net calls, once per layer: the constructor (reads the LayerParameter), `setup(bottom_shapes)` (creates the
blobs, which may depend on the bottom shapes, like Caffe's LayerSetUp), then `forward` for every pass.  Top
shapes are derived by running `forward` on meta tensors (`infer_top_shapes`), so a layer whose forward would
change state (BatchNorm's running averages, data cursors) must leave its state alone when `is_meta(x)`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from caffelike.proto import caffe_pb2
from google.protobuf.message import Message
from torch import nn

from caffelike.core.memory import allocation_problem
from caffelike.errors import LayerError, shape_str  # noqa: F401  (the layers' import of it)

_REGISTRY: dict[str, type["Layer"]] = {}


def register(type_name: str) -> Callable[[type["Layer"]], type["Layer"]]:
    """Class decorator: make `cls` the implementation of Caffe layer type `type_name`."""

    def deco(cls: type["Layer"]) -> type["Layer"]:
        if type_name in _REGISTRY:
            raise ValueError(f"layer type {type_name!r} is registered twice "
                             f"({_REGISTRY[type_name].__module__} and {cls.__module__})")
        cls.type = type_name
        _REGISTRY[type_name] = cls
        return cls

    return deco


def layer_class(type_name: str, where: str = "") -> type["Layer"]:
    """The class registered for `type_name`; `where` (the file and the layer's name) prefixes the error."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        at = f"{where}: " if where else ""
        raise LayerError(f"{at}Unknown layer type: {type_name!r} (known types: {', '.join(layer_type_list())})") \
            from None


def layer_type_list() -> list[str]:
    """Registered types, sorted like Caffe's std::map-backed registry."""
    return sorted(_REGISTRY)


def is_compiling() -> bool:
    """True while torch.compile traces (checks that need the values on the host are skipped there)."""
    check = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3; torch._dynamo's before
    return check() if check is not None else torch._dynamo.is_compiling()


def is_meta(t: torch.Tensor) -> bool:
    return t.device.type == "meta"


_SHAPES: dict[tuple, tuple] = {}  # Layer._shape_key -> (top shapes, the `resolved` lookups the meta pass made)
_SHAPES_MAX = 100_000


class Layer(nn.Module):
    """Base of every Caffe layer.

    Class attributes describe the layer to the net, as Caffe's virtual methods do:
    `exact_bottoms/min_bottoms/max_bottoms`, the same for tops, `equal_bottoms_tops`; `is_loss` (LossLayer:
    a default loss_weight of 1 on top 0 and an automatic top when none is given); `backward_free` for layers
    that have no backward in Caffe (their tops carry no gradient); `forbids_in_place` for Split, Flatten,
    Reshape; `runs_eagerly` for layers whose forward is host-side Python work (reading or writing files, a
    numpy Python layer), which `NetGraph.compile` leaves out of the compiled graph.  `no_gradient_to` names the
    bottoms (index, negative from the end -> what they are) whose gradient Caffe's Backward refuses with a fatal
    error, and `backward_not_implemented` marks layers whose Backward is NOT_IMPLEMENTED for every bottom: the
    net refuses at build time to ask them for one.
    """

    type = ""
    exact_bottoms: int | None = None
    min_bottoms: int | None = None
    max_bottoms: int | None = None
    exact_tops: int | None = None
    min_tops: int | None = None
    max_tops: int | None = None
    equal_bottoms_tops = False
    is_loss = False
    backward_free = False
    forbids_in_place = False
    runs_eagerly = False
    no_gradient_to: dict[int, str] = {}
    backward_not_implemented = False

    def __init__(self, param: caffe_pb2.LayerParameter, phase: int):
        super().__init__()
        self.param = param
        self.layer_name = param.name
        self.phase = phase
        # Plain Python values that forward reads instead of the protobuf: torch.compile cannot trace len() or
        # HasField() on protobuf messages, and one such call would split the compiled net into pieces.
        self.num_tops = len(param.top)
        self.resolved: dict = {}
        self.blobs = nn.ParameterList()

    # ----------------------------------------------------------------------------------------------------- net hooks
    def check_blob_counts(self, n_bottom: int, n_top: int) -> None:
        def check(what: str, n: int, exact, lo, hi) -> None:
            if exact is not None and n != exact:
                self.fail(f"takes exactly {exact} {what} blob{'s' if exact != 1 else ''}, got {n}")
            if lo is not None and n < lo:
                self.fail(f"takes at least {lo} {what} blob{'s' if lo != 1 else ''}, got {n}")
            if hi is not None and n > hi:
                self.fail(f"takes at most {hi} {what} blob{'s' if hi != 1 else ''}, got {n}")

        check("bottom", n_bottom, self.exact_bottoms, self.min_bottoms, self.max_bottoms)
        check("top", n_top, self.exact_tops, self.min_tops, self.max_tops)
        if self.equal_bottoms_tops and n_bottom != n_top:
            self.fail(f"needs as many top blobs as bottom blobs, got {n_bottom} bottoms and {n_top} tops")

    def setup(self, bottom_shapes: list[tuple[int, ...]]) -> None:
        """Create `self.blobs` from the bottom shapes (Caffe's LayerSetUp).  Default: no blobs."""

    def gradient_refusal(self, bottom_index: int, n_bottoms: int) -> str | None:
        """Why Caffe's Backward aborts when asked for bottom `bottom_index`'s gradient (None when it does not)."""
        if self.backward_not_implemented:
            return f"{self.type} has no backward in Caffe (NOT_IMPLEMENTED)"
        for j, what in self.no_gradient_to.items():
            if bottom_index == (j if j >= 0 else n_bottoms + j):
                return f"{self.type} cannot backpropagate to {what}"
        return None

    def allow_force_backward(self, bottom_index: int) -> bool:
        """False for bottoms that never get a gradient (labels, selectors), even under force_backward."""
        return not (self.is_loss and bottom_index == 1)

    def infer_top_shapes(self, bottom_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """Top shapes for these bottom shapes (Caffe's Reshape), by a forward pass on meta tensors.  The blobs
        are swapped for meta stand-ins meanwhile, so forward code never meets a mix of meta and real tensors.
        The answer is remembered for layers that differ only in names (the repeated blocks of a deep net): a
        meta pass costs milliseconds, which a net of thousands of layers would otherwise pay for each."""
        key = self._shape_key(bottom_shapes)
        if key in _SHAPES:
            tops, resolved = _SHAPES[key]
            self.resolved.update(resolved)  # what the meta pass would have looked up (forward reads no protobuf)
            return list(tops)
        tops = self._meta_top_shapes(bottom_shapes)
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[key] = (tuple(tops), dict(self.resolved))
        return tops

    def _shape_key(self, bottom_shapes) -> tuple:
        param = caffe_pb2.LayerParameter()
        param.CopyFrom(self.param)
        for field in ("name", "bottom", "top", "loss_weight", "param", "blobs", "propagate_down", "include",
                      "exclude"):
            param.ClearField(field)
        return (type(self), param.SerializeToString(deterministic=True), self.phase, self.num_tops,
                tuple(tuple(int(d) for d in s) for s in bottom_shapes),
                tuple((tuple(p.shape), p.dtype) for p in self.blobs))

    def _meta_top_shapes(self, bottom_shapes) -> list[tuple[int, ...]]:
        dtype = self.blobs[0].dtype if len(self.blobs) else torch.float32
        bottoms = [torch.empty(s, dtype=dtype, device="meta") for s in bottom_shapes]
        real = list(self.blobs)
        try:
            for i, p in enumerate(real):
                self.blobs[i] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
            with torch.no_grad():
                tops = self.forward(*bottoms)
        finally:
            for i, p in enumerate(real):
                self.blobs[i] = p
        if isinstance(tops, torch.Tensor):
            tops = (tops,)
        return [tuple(t.shape) for t in tops]

    # ----------------------------------------------------------------------------------------------------- helpers
    def fail(self, message: str) -> None:
        raise LayerError(f'{self.type} layer "{self.layer_name}": {message}')

    def add_blob(self, shape: Sequence[int], filler: caffe_pb2.FillerParameter | None = None,
                 constant: float | None = None) -> nn.Parameter:
        """Append a blob of `shape`, filled by `filler` (Caffe's default filler is constant 0)."""
        from caffelike.core.fillers import fill

        shape = tuple(int(d) for d in shape)
        problem = allocation_problem(shape)
        if problem:
            self.fail(f"parameter blob {len(self.blobs)} of shape {shape_str(shape)} {problem}")
        if constant is None:
            field = self._filler_field(filler)
            filler = filler if filler is not None else caffe_pb2.FillerParameter()
            self.check_filler(filler, shape, f"parameter blob {len(self.blobs)}" + (f" ({field})" if field else ""))
        try:
            if constant is not None:
                data = torch.full(shape, float(constant))
            else:
                data = fill(shape, filler)
        except LayerError as e:  # the filler's own refusal (a bilinear filler on a 2-D blob): name the layer
            self.fail(f"parameter blob {len(self.blobs)}: {e}")
        except (RuntimeError, MemoryError) as e:
            size = math.prod(shape) * 4
            self.fail(f"cannot allocate parameter blob {len(self.blobs)} of shape {shape_str(shape)} "
                      f"({size:,} bytes as float32): {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        p = nn.Parameter(data)
        self.blobs.append(p)
        return p

    def _filler_field(self, filler) -> str:
        """Which field of this layer's parameters `filler` is ("convolution_param.weight_filler"), for messages;
        "" when it is none of them (a filler the layer made up)."""
        if filler is None:
            return ""
        found = []
        for outer, message in self.param.ListFields():
            if not isinstance(message, Message):  # (a scalar or repeated field)
                continue
            for inner, value in message.ListFields():
                if isinstance(value, caffe_pb2.FillerParameter) and value == filler:
                    found.append(f"{outer.name}.{inner.name}")
        return found[0] if len(found) == 1 else ""

    def check_filler(self, filler: caffe_pb2.FillerParameter, shape: tuple[int, ...], what: str) -> None:
        """Refuse a FillerParameter that Caffe's fillers CHECK-fail on (or that would divide by a zero fan),
        naming the layer, the blob and the field, before torch meets it."""
        kinds = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")
        where = f"{what}: filler type {filler.type!r}"
        if filler.type not in kinds:
            self.fail(f"{what}: Unknown filler name: {filler.type!r} (known: {', '.join(kinds)})")
        if filler.type == "uniform" and not filler.min <= filler.max:
            self.fail(f"{where} needs min <= max, got min {filler.min:g} and max {filler.max:g}")
        if filler.type == "gaussian" and not filler.std >= 0:
            self.fail(f"{where} needs std >= 0, got {filler.std:g}")
        if filler.type in ("xavier", "msra") and count(shape) == 0:
            self.fail(f"{where} cannot fill a blob of shape {shape_str(shape)}: its fan-in/fan-out is 0")

    def optional(self, path: str):
        """The optional field at `path` under the layer's parameter (e.g. "loss_param.ignore_label"), or None
        when it is unset; looked up once, so forward code can ask it under torch.compile (no HasField there)."""
        if path not in self.resolved:
            *parents, leaf = path.split(".")
            msg = self.param
            for name in parents:
                msg = getattr(msg, name)
            self.resolved[path] = getattr(msg, leaf) if msg.HasField(leaf) else None
        return self.resolved[path]

    def canonical_axis(self, axis: int, num_axes: int, what: str = "axis") -> int:
        """Caffe's CanonicalAxisIndex: -num_axes <= axis < num_axes, negatives count from the end."""
        if not -num_axes <= axis < num_axes:
            self.fail(f"{what} {axis} is out of range for a bottom with {num_axes} axes")
        return axis + num_axes if axis < 0 else axis

    def extra_repr(self) -> str:
        return f"{self.type} {self.layer_name!r}"


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Number of elements of `shape[start:end]` (Caffe's Blob::count(start, end))."""
    n = 1
    for d in shape[start:end]:  # a plain loop, not math.prod(generator): torch.compile traces it without a break
        # A symbolic size (torch.export's dynamic batch) stays symbolic: int() would pin it to the traced value.
        n *= d if isinstance(d, torch.SymInt) else int(d)
    return n


def spatial_values(msg, repeated: str, prefix: str | None, num_spatial: int, default: int,
                   layer: Layer) -> list[int]:
    """Resolve Caffe's two spellings of a per-axis value: the repeated field (given once, or once per spatial
    axis) or `<prefix>_h`/`<prefix>_w` (2-D only).  Used by Convolution, Deconvolution and Im2col, e.g.
    `spatial_values(p, "kernel_size", "kernel", 2, 0, self)`."""
    listed = [int(v) for v in getattr(msg, repeated)]
    if prefix is not None and (msg.HasField(f"{prefix}_h") or msg.HasField(f"{prefix}_w")):
        if num_spatial != 2:
            layer.fail(f"{prefix}_h/{prefix}_w can only be used with 2 spatial axes, got {num_spatial}")
        if listed:
            layer.fail(f"either {repeated} or {prefix}_h/{prefix}_w should be specified, not both")
        if not (msg.HasField(f"{prefix}_h") and msg.HasField(f"{prefix}_w")):
            layer.fail(f"{prefix}_h and {prefix}_w must both be given")
        return [int(getattr(msg, f"{prefix}_h")), int(getattr(msg, f"{prefix}_w"))]
    if not listed:
        return [default] * num_spatial
    if len(listed) == 1:
        return listed * num_spatial
    if len(listed) != num_spatial:
        layer.fail(f"{repeated} must be given once or once per spatial axis ({num_spatial}), "
                   f"got {len(listed)} values")
    return listed
