"""pycaffe's net_spec: write a Caffe net as Python calls and get its NetParameter.

    from caffelike.net_spec import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data, n.label = L.Data(source="mnist_train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2,
                             transform_param=dict(scale=1. / 256))
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label)
    net_param = n.to_proto()          # caffe_pb2.NetParameter; str(net_param) is the prototxt

`L.<Type>(*bottoms, **kwargs)` describes one layer of type `<Type>` (any string; it is not checked against the
layer registry, so nets for other Caffe forks can be written too).  It returns the layer's Top, a tuple of Tops when
`ntop` > 1, or the layer itself (a Function) when `ntop=0`.  Keyword arguments, as pycaffe reads them:
  ntop=k          how many tops the layer has (default 1);
  in_place=True   the tops are the bottoms (`relu1: bottom "ip1" top "ip1"`);
  *param=...      a name ending in "param" goes straight onto the LayerParameter (`param=[dict(lr_mult=1)]`,
                  `transform_param=dict(...)`, `loss_param=...`);
  other=...       a field of the type's own `<type>_param` (found by param_name_dict(): ConvolutionParameter ->
                  convolution_param), else a field of the LayerParameter itself (`loss_weight`, `include`,
                  `exclude`, `propagate_down`, `name`, ...).
Values follow assign_proto's rules: a list fills a repeated field, a list of dicts a repeated message, a dict a
message, and a scalar given for a repeated field becomes a one-element list (`kernel_size=5`, `include=dict(...)`).
`P.<Type>.<VALUE>` is an enum value of `<Type>Parameter` (`P.Pooling.MAX`, `P.Data.LMDB`); enum fields also take
the value's name as a string (`pool="MAX"`).

NetSpec names what is assigned to it: `n.conv1 = L.Convolution(...)` gives a layer "conv1" with top "conv1"; a
layer is named after its first top.  Anything not assigned is auto-named `<Type><k>`, counting per type.
`to_proto(*tops)` builds the NetParameter for some tops without a NetSpec (all names automatic).

Deliberate differences from pycaffe, none of which changes a net pycaffe builds:
- A keyword that names no field is a NetSpecError raised by the `L.<Type>(...)` call, naming the layer type, the
  field and the closest spellings; a value of the wrong type names the full field path.  pycaffe fails later,
  inside to_proto, with protobuf's AttributeError.
- Deconvolution and Im2col put their keywords into convolution_param, LSTM and RNN into recurrent_param (the
  messages those layers read).  pycaffe's lookup misses them and fails unless the `*_param` is spelled out.
- An empty dict for a message field (`relu_param=dict()`) marks the message present, as `relu_param {}` does in
  a prototxt; pycaffe leaves it unset.  An empty list sets nothing (pycaffe raises IndexError).
- A ready-made message (`weight_filler=caffe_pb2.FillerParameter(type="xavier")`) is copied in.
- Assigning a multi-top tuple to one NetSpec attribute is an error that says to unpack it.
"""
from __future__ import annotations

import difflib
from collections import Counter, OrderedDict

from google.protobuf import message as _message

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "L", "P", "to_proto", "assign_proto",
           "param_name_dict", "NetSpecError"]


class NetSpecError(CaffeError):
    """A NetSpec layer description that does not fit Caffe's schema."""


def param_name_dict() -> dict[str, str]:
    """Message type stem -> LayerParameter field stem, e.g. "Convolution" -> "convolution" (ConvolutionParameter
    is the type of convolution_param), "InnerProduct" -> "inner_product", "Transformation" -> "transform"."""
    out = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                out[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return out


# Layer types that read another type's message; pycaffe's lookup only knows the message names.
_SHARED_PARAMS = {"Deconvolution": "convolution", "Im2col": "convolution", "LSTM": "recurrent", "RNN": "recurrent"}
_param_names = {**param_name_dict(), **_SHARED_PARAMS}


# ------------------------------------------------------------------------------------------------ assign_proto
def _suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _fill_message(msg, val, where: str) -> None:
    """Fill the message `msg` from a dict (recursively) or a message of the same type."""
    if isinstance(val, dict):
        msg.SetInParent()
        for key, item in val.items():
            _assign(msg, key, item, where)
    elif isinstance(val, _message.Message) and val.DESCRIPTOR is msg.DESCRIPTOR:
        msg.CopyFrom(val)
    else:
        fields = ", ".join(f.name for f in list(msg.DESCRIPTOR.fields)[:4])
        raise NetSpecError(f"{where} is a {msg.DESCRIPTOR.name} message: give it a dict of its fields "
                           f"({fields}, ...), not {type(val).__name__} {val!r}")


def _assign(msg, name: str, val, where: str) -> None:
    """assign_proto with the field path `where` for error messages."""
    field = msg.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NetSpecError(f"{where}: {msg.DESCRIPTOR.name} has no field {name!r}"
                           f"{_suggest(name, msg.DESCRIPTOR.fields_by_name)}")
    path = f"{where}.{name}"
    if field.is_repeated and not isinstance(val, (list, tuple)):
        val = [val]
    elif not field.is_repeated and isinstance(val, (list, tuple)):
        raise NetSpecError(f"{path} holds one value, not a list ({val!r})")
    container = getattr(msg, name)
    if field.message_type is not None:
        if field.is_repeated:
            for i, item in enumerate(val):
                _fill_message(container.add(), item, f"{path}[{i}]")
        else:
            _fill_message(container, val, path)
        return
    try:
        if field.is_repeated:
            container.extend(val)
        else:
            setattr(msg, name, val)
    except (TypeError, ValueError) as e:
        expected = _field_kind(field)
        raise NetSpecError(f"{path} takes {expected}: {e} (got {val!r})") from None


def _field_kind(field) -> str:
    if field.enum_type is not None:
        return f"a {field.enum_type.name} value ({', '.join(v.name for v in field.enum_type.values)})"
    return {
        field.CPPTYPE_INT32: "an integer", field.CPPTYPE_INT64: "an integer",
        field.CPPTYPE_UINT32: "a non-negative integer", field.CPPTYPE_UINT64: "a non-negative integer",
        field.CPPTYPE_FLOAT: "a number", field.CPPTYPE_DOUBLE: "a number",
        field.CPPTYPE_BOOL: "a bool", field.CPPTYPE_STRING: "a string",
    }.get(field.cpp_type, "a value")


def assign_proto(proto, name: str, val) -> None:
    """Set field `name` of message `proto` from a Python value: lists fill repeated fields (of messages when the
    items are dicts), dicts fill messages, scalars are assigned, and a scalar for a repeated field is taken as a
    one-element list."""
    _assign(proto, name, val, proto.DESCRIPTOR.name)


def _assign_layer_kwarg(layer, type_name: str, key: str, val, where: str) -> None:
    """Route one L.<Type>(...) keyword: *param names onto the layer, else `<type>_param`, else the layer."""
    if not key.endswith("param"):
        stem = _param_names.get(type_name)
        if stem is not None:
            sub = getattr(layer, stem + "_param")
            if key in sub.DESCRIPTOR.fields_by_name:
                _assign(sub, key, val, f"{where}.{stem}_param")
                return
        if key not in layer.DESCRIPTOR.fields_by_name:
            known = list(layer.DESCRIPTOR.fields_by_name)
            if stem is not None:
                sub_desc = getattr(layer, stem + "_param").DESCRIPTOR
                known += list(sub_desc.fields_by_name)
                inside = f"in {stem}_param ({sub_desc.name}) or in LayerParameter"
            else:
                inside = f"in LayerParameter (caffe.proto has no {type_name}Parameter for {type_name}'s own fields)"
            raise NetSpecError(f"{where}: no field {key!r} {inside}{_suggest(key, known)}")
    _assign(layer, key, val, where)


# ------------------------------------------------------------------------------------------------ Top, Function
class Top:
    """One output blob of a layer: the `n`-th top of Function `fn`."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)

    def __repr__(self) -> str:
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer: its type, its input Tops and its keyword parameters (ntop and in_place taken out)."""

    def __init__(self, type_name: str, inputs, params: dict):
        for index, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                # pycaffe's wording, exactly (scripts and BVLC's test_net_spec match it); the hint is a note.
                error = TypeError(f"{type_name} input {index} is not a Top (type is {type(inp)})")
                if isinstance(inp, tuple) and hasattr(error, "add_note"):
                    error.add_note(f"L.{type_name}: a layer with ntop > 1 returns a tuple of tops; pass one of "
                                   "them, or unpack it (L.Silence(*tops, ntop=0))")
                raise error
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if not isinstance(self.ntop, int) or self.ntop < 0:
            raise NetSpecError(f"L.{type_name}: ntop must be a non-negative integer, got {self.ntop!r}")
        if self.in_place and not self.inputs:
            raise NetSpecError(f"L.{type_name}: in_place=True needs a bottom to compute in place")
        # Apply the keywords now, so that a misspelt field fails on the user's own line.
        self._template = caffe_pb2.LayerParameter(type=type_name)
        for key, val in self.params.items():
            _assign_layer_kwarg(self._template, type_name, key, val, f"L.{type_name}(...)")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _get_top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._get_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._get_name(names, autonames)
        # Keywords come last, as in pycaffe: name= or type= override, top=/bottom= append.
        layer.MergeFrom(self._template)
        layers[self] = layer

    def to_proto(self) -> caffe_pb2.NetParameter:
        return to_proto(self)

    def __repr__(self) -> str:
        return f"<Function {self.type_name} ntop={self.ntop}>"


def to_proto(*tops) -> caffe_pb2.NetParameter:
    """The NetParameter of every layer needed to compute `tops` (Tops, or ntop=0 Functions), auto-named."""
    layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
    autonames: Counter = Counter()
    names: dict = {}
    for top in tops:
        _check_node(top, "to_proto")._to_proto(layers, names, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def _check_node(value, where: str):
    if isinstance(value, (Top, Function)):
        return value
    if isinstance(value, tuple):
        raise NetSpecError(f"{where}: got a tuple of {len(value)} tops; unpack a multi-top layer, e.g. "
                           "n.data, n.label = L.Data(..., ntop=2)")
    raise NetSpecError(f"{where}: expected a Top from L.<Type>(...), got {type(value).__name__}")


class NetSpec:
    """Named tops: assign `n.name = L.<Type>(...)` (or `n["name"] = ...`); to_proto() names every layer and top
    after the attribute it was assigned to, in assignment order."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = _check_node(value, f"NetSpec.{name}")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top {name!r}{_suggest(name, self.tops)}") from None

    def __setitem__(self, name: str, value) -> None:
        self.__setattr__(name, value)

    def __getitem__(self, name: str):
        return self.tops[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tops

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {value: name for name, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
        for value in self.tops.values():
            value._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


# --------------------------------------------------------------------------------------- the L and P objects
class Layers:
    """`L.<Type>(*bottoms, **kwargs)` describes a layer of Caffe type `<Type>` (see the module docstring)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("_"):  # no Caffe type does; keeps dunder and IPython probes off the layer table
            raise AttributeError(type_name)

        def layer_fn(*args, **kwargs):
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = layer_fn.__qualname__ = type_name
        return layer_fn


class _EnumScope:
    """The enum values of one `<Type>Parameter` message, e.g. P.Pooling.MAX."""

    def __init__(self, msg_class):
        object.__setattr__(self, "_msg", msg_class)

    def __getattr__(self, value_name: str):
        if value_name.startswith("_"):
            raise AttributeError(value_name)
        msg = self._msg
        try:
            return getattr(msg, value_name)
        except AttributeError:
            enums = "; ".join(f"{e.name}: {', '.join(v.name for v in e.values)}" for e in msg.DESCRIPTOR.enum_types)
            raise AttributeError(f"{msg.DESCRIPTOR.name} has no enum value {value_name!r} "
                                 f"({enums or 'it has no enums'})") from None


class Parameters:
    """`P.<Type>.<VALUE>` is the enum value `caffe_pb2.<Type>Parameter.<VALUE>`, e.g. P.Pooling.MAX."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("_"):  # no Caffe type does; keeps dunder and IPython probes off the layer table
            raise AttributeError(type_name)
        msg = getattr(caffe_pb2, type_name + "Parameter", None)
        if msg is None:
            messages = [n[:-len("Parameter")] for n in caffe_pb2.DESCRIPTOR.message_types_by_name
                        if n.endswith("Parameter")]
            raise AttributeError(f"caffe.proto has no message {type_name}Parameter{_suggest(type_name, messages)}")
        return _EnumScope(msg)


layers = L = Layers()
params = P = Parameters()
