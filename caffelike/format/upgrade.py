"""Caffe's format upgrades (src/caffe/util/upgrade_proto.cpp), applied to caffe_pb2 messages in place.

`upgrade_net` is UpgradeNetAsNeeded: every net Caffe reads, text or binary, goes through it, so an old prototxt or
caffemodel comes out in today's format before anything else looks at it.  The steps run in Caffe's order:

  (a) V0 -> V1   `layers { layer { type: "conv" ... } }`: padding layers folded into the next conv/pool, the V0
                 type strings mapped to V1 enums, the flat V0 fields moved into their per-type `*_param`.
  (b) data       deprecated scale/mean_file/crop_size/mirror of V1 Data/ImageData/WindowData -> transform_param.
  (c) V1 -> V2   `layers { type: CONVOLUTION }` -> `layer { type: "Convolution" }`, blobs_lr/weight_decay/param
                 names -> ParamSpec.
  (d) input      net-level input/input_shape/input_dim -> one Input layer named "input", placed first.
  (e) BatchNorm  a BatchNorm layer declaring three params gets lr_mult = decay_mult = 0 on each.

`upgrade_solver` is UpgradeSolverAsNeeded (solver_type enum -> type string) plus upgrade_net on inline nets.

Deliberate differences from Caffe, all on input Caffe mishandles or only logs about:
  * Caffe logs and carries on where a V0 field has no home in the layer's type, and leaves a layer without a
    type when a V1 type is NONE; both are errors here, as is a padding layer whose top feeds more than one
    layer (Caffe would pad every consumer) and a mismatched input/input_dim count (Caffe reads past the end).
  * The V0 step keeps every net-level field; Caffe rebuilds the net keeping only name, input, input_dim and
    force_backward (V0 nets had nothing else).
  * BatchNorm params that already have lr_mult = decay_mult = 0 are not "upgraded" again, so upgrading an
    upgraded net reports no change.
"""
from __future__ import annotations

import logging
from typing import Callable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from caffelike.errors import PrototxtError
from caffelike.proto import caffe_pb2

__all__ = [
    "V1_TYPE_NAMES", "upgrade_net", "upgrade_solver", "net_needs_upgrade", "needs_v0_upgrade",
    "needs_data_upgrade", "needs_v1_upgrade", "needs_input_upgrade", "needs_batchnorm_upgrade",
]

log = logging.getLogger(__name__)

_V1 = caffe_pb2.V1LayerParameter

# ------------------------------------------------------------------------------------------------------ type tables
# V1 enum name -> current type string (UpgradeV1LayerType).  NONE has no type: a layer carrying it is an error.
_V1_NAME_TO_TYPE = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution",
    "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power",
    "RELU": "ReLU", "SIGMOID": "Sigmoid", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

#: V1 LayerType enum value -> the type string a current-format layer uses.
V1_TYPE_NAMES: dict[int, str] = {_V1.LayerType.Value(k): v for k, v in _V1_NAME_TO_TYPE.items()}

# V0 type string -> V1 enum (UpgradeV0LayerType).  "padding" never gets here: it is folded away first.
_V0_TYPES: dict[str, int] = {
    "accuracy": _V1.ACCURACY, "bnll": _V1.BNLL, "concat": _V1.CONCAT, "conv": _V1.CONVOLUTION,
    "data": _V1.DATA, "dropout": _V1.DROPOUT, "euclidean_loss": _V1.EUCLIDEAN_LOSS, "flatten": _V1.FLATTEN,
    "hdf5_data": _V1.HDF5_DATA, "hdf5_output": _V1.HDF5_OUTPUT, "im2col": _V1.IM2COL, "images": _V1.IMAGE_DATA,
    "infogain_loss": _V1.INFOGAIN_LOSS, "innerproduct": _V1.INNER_PRODUCT, "lrn": _V1.LRN,
    "multinomial_logistic_loss": _V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": _V1.POOLING, "relu": _V1.RELU,
    "sigmoid": _V1.SIGMOID, "softmax": _V1.SOFTMAX, "softmax_loss": _V1.SOFTMAX_LOSS, "split": _V1.SPLIT,
    "tanh": _V1.TANH, "window_data": _V1.WINDOW_DATA,
}

# ------------------------------------------------------------------------------------------------ V0 field homes
# V0 field -> {V0 type that may carry it: "sub_param.field" in the V1 layer}.  A path without a dot names a whole
# message copied over.  A V0 field set on a type missing from its row is an error.
_CONV, _IP, _POOL, _LRN = "convolution_param", "inner_product_param", "pooling_param", "lrn_param"
_DATA, _HDF5, _IMAGES, _WINDOW = "data_param", "hdf5_data_param", "image_data_param", "window_data_param"

_V0_FIELD_HOMES: dict[str, dict[str, str]] = {
    "num_output": {"conv": f"{_CONV}.num_output", "innerproduct": f"{_IP}.num_output"},
    "biasterm": {"conv": f"{_CONV}.bias_term", "innerproduct": f"{_IP}.bias_term"},
    "weight_filler": {"conv": f"{_CONV}.weight_filler", "innerproduct": f"{_IP}.weight_filler"},
    "bias_filler": {"conv": f"{_CONV}.bias_filler", "innerproduct": f"{_IP}.bias_filler"},
    "pad": {"conv": f"{_CONV}.pad", "pool": f"{_POOL}.pad"},
    "kernelsize": {"conv": f"{_CONV}.kernel_size", "pool": f"{_POOL}.kernel_size"},
    "stride": {"conv": f"{_CONV}.stride", "pool": f"{_POOL}.stride"},
    "group": {"conv": f"{_CONV}.group"},
    "pool": {"pool": f"{_POOL}.pool"},  # V0 and current PoolMethod share their numbers
    "dropout_ratio": {"dropout": "dropout_param.dropout_ratio"},
    "local_size": {"lrn": f"{_LRN}.local_size"},
    "alpha": {"lrn": f"{_LRN}.alpha"},
    "beta": {"lrn": f"{_LRN}.beta"},
    "k": {"lrn": f"{_LRN}.k"},
    "source": {"data": f"{_DATA}.source", "hdf5_data": f"{_HDF5}.source", "images": f"{_IMAGES}.source",
               "window_data": f"{_WINDOW}.source", "infogain_loss": "infogain_loss_param.source"},
    "batchsize": {"data": f"{_DATA}.batch_size", "hdf5_data": f"{_HDF5}.batch_size",
                  "images": f"{_IMAGES}.batch_size", "window_data": f"{_WINDOW}.batch_size"},
    "rand_skip": {"data": f"{_DATA}.rand_skip", "images": f"{_IMAGES}.rand_skip"},
    "shuffle_images": {"images": f"{_IMAGES}.shuffle"},
    "new_height": {"images": f"{_IMAGES}.new_height"},
    "new_width": {"images": f"{_IMAGES}.new_width"},
    "concat_dim": {"concat": "concat_param.concat_dim"},
    "det_fg_threshold": {"window_data": f"{_WINDOW}.fg_threshold"},
    "det_bg_threshold": {"window_data": f"{_WINDOW}.bg_threshold"},
    "det_fg_fraction": {"window_data": f"{_WINDOW}.fg_fraction"},
    "det_context_pad": {"window_data": f"{_WINDOW}.context_pad"},
    "det_crop_mode": {"window_data": f"{_WINDOW}.crop_mode"},
    "hdf5_output_param": {"hdf5_output": "hdf5_output_param"},
}
# V0 fields any type may carry: they become the V1 layer's transform_param whatever the type.
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}
# Copied to the V1 field of the same name.
_V0_COPIED_FIELDS = ("blobs", "blobs_lr", "weight_decay")
# Handled apart (name, type) or, like Caffe, dropped because no layer ever read them (new_num, new_channels).
_V0_OTHER_FIELDS = ("name", "type", "new_num", "new_channels")

# ------------------------------------------------------------------------------------------------ V1 field tables
# Deprecated transformation fields inside the data params of these V1 types (UpgradeNetDataTransformation).
_DATA_PARAM_OF_TYPE = {_V1.DATA: _DATA, _V1.IMAGE_DATA: _IMAGES, _V1.WINDOW_DATA: _WINDOW}
_DEPRECATED_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Every *_param of V1LayerParameter; each is copied verbatim into the field of the same name (UpgradeV1LayerParameter).
V1_COPIED_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param", "data_param",
    "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param", "hdf5_output_param",
    "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param", "sigmoid_param",
    "softmax_param", "slice_param", "tanh_param", "threshold_param", "window_data_param", "transform_param",
    "loss_param",
)

# deprecated SolverParameter.solver_type -> SolverParameter.type
_SOLVER_TYPE_NAMES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}


# ------------------------------------------------------------------------------------------------------- helpers
def _fail(source: str, message: str) -> PrototxtError:
    return PrototxtError(f"{source}: {message}")


def _layer_label(name: str, index: int) -> str:
    return f'layer "{name}"' if name else f"layer #{index} (unnamed)"


def _is_repeated(field: FieldDescriptor) -> bool:
    # protobuf >= 5 says so directly and 7 dropped `label`; older releases only have `label`.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _assign(target: Message, path: str, value) -> None:
    """Set `target.<path>` to `value`: append to a repeated field, copy a message, set a scalar."""
    *parents, last = path.split(".")
    for part in parents:
        target = getattr(target, part)
    field = target.DESCRIPTOR.fields_by_name[last]
    if _is_repeated(field):
        getattr(target, last).append(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(target, last).CopyFrom(value)
    else:
        setattr(target, last, value)


# -------------------------------------------------------------------------------------------------- predicates
def needs_v0_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Any `layers` entry wraps a V0 `layer { }` block."""
    return any(entry.HasField("layer") for entry in net.layers)


def needs_data_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """A V1 Data/ImageData/WindowData layer still keeps scale/mean_file/crop_size/mirror in its data param."""
    for layer in net.layers:
        param_name = _DATA_PARAM_OF_TYPE.get(layer.type)
        if param_name and layer.HasField(param_name):
            param = getattr(layer, param_name)
            if any(param.HasField(f) for f in _DEPRECATED_TRANSFORM_FIELDS):
                return True
    return False


def needs_v1_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """The net still has V1 `layers` entries."""
    return len(net.layers) > 0


def needs_input_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """The net declares legacy net-level inputs (`input`, `input_shape` or `input_dim`)."""
    return len(net.input) > 0 or len(net.input_shape) > 0 or len(net.input_dim) > 0


def _batchnorm_needs_fix(layer: caffe_pb2.LayerParameter) -> bool:
    if layer.type != "BatchNorm" or len(layer.param) != 3:
        return False
    return any(not (p.HasField("lr_mult") and p.lr_mult == 0 and p.HasField("decay_mult") and p.decay_mult == 0)
               for p in layer.param)


def needs_batchnorm_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """A BatchNorm layer declares the three params of the old definition and some are not yet frozen."""
    return any(_batchnorm_needs_fix(layer) for layer in net.layer)


# ------------------------------------------------------------------------------------------ (a) V0 -> V1 layers
def _fold_padding_layers(net: caffe_pb2.NetParameter, source: str) -> list[tuple[int, caffe_pb2.V1LayerParameter]]:
    """(index, copy) of the net's V0 entries but the padding layers, whose pad moves into the conv/pool they feed.

    A padding layer must take one blob, give one blob, and feed exactly one conv or pool layer taking one blob;
    that layer's bottom is rewired to the padding layer's input.
    """
    producer: dict[str, int] = {name: -1 for name in net.input}  # blob -> index of the entry that last wrote it
    absorbed_by: dict[int, str] = {}  # padding entry index -> label of the layer it was folded into
    kept = []
    for i, entry in enumerate(net.layers):
        v0 = entry.layer
        label = _layer_label(v0.name or entry.name, i)
        if not entry.HasField("layer"):
            raise _fail(source, f"{label}: a V0 net needs every `layers` entry to hold a V0 `layer {{ }}` block")
        kept_entry = None
        if v0.type != "padding":
            kept_entry = caffe_pb2.V1LayerParameter()
            kept_entry.CopyFrom(entry)
            kept.append((i, kept_entry))
        for j, blob in enumerate(entry.bottom):
            if blob not in producer:
                raise _fail(source, f'{label} takes bottom blob "{blob}", which no earlier layer or input produces')
            src_index = producer[blob]
            if src_index < 0 or net.layers[src_index].layer.type != "padding":
                continue
            pad_entry = net.layers[src_index]
            pad_label = _layer_label(pad_entry.layer.name, src_index)
            _check_padding_fold(source, pad_label, pad_entry, label, entry)
            if src_index in absorbed_by:
                raise _fail(source, f"padding {pad_label} feeds both {absorbed_by[src_index]} and {label}; "
                                    f"its pad can be folded into exactly one conv or pool layer")
            absorbed_by[src_index] = label
            kept_entry.layer.pad = pad_entry.layer.pad
            kept_entry.bottom[j] = pad_entry.bottom[0]
        for blob in entry.top:
            producer[blob] = i
    return kept


def _check_padding_fold(source: str, pad_label: str, pad_entry: caffe_pb2.V1LayerParameter, label: str,
                        entry: caffe_pb2.V1LayerParameter) -> None:
    consumer_type = entry.layer.type
    if consumer_type not in ("conv", "pool"):
        raise _fail(source, f'padding {pad_label} feeds {label} of type "{consumer_type}"; '
                            f"only a conv or pool layer can absorb a padding layer")
    if len(entry.bottom) != 1:
        raise _fail(source, f"{label} takes padding {pad_label}'s output among {len(entry.bottom)} bottoms; "
                            f"a padded conv/pool layer takes exactly 1")
    if len(pad_entry.bottom) != 1 or len(pad_entry.top) != 1:
        raise _fail(source, f"padding {pad_label} must take exactly 1 bottom and give exactly 1 top, "
                            f"got {len(pad_entry.bottom)} and {len(pad_entry.top)}")


def _v0_to_v1(entry: caffe_pb2.V1LayerParameter, index: int, source: str) -> caffe_pb2.V1LayerParameter:
    """One V0 entry as a V1 layer (UpgradeV0LayerParameter)."""
    v0 = entry.layer
    label = _layer_label(v0.name, index)
    if not v0.HasField("type"):
        raise _fail(source, f"V0 {label} has no type")
    if v0.type not in _V0_TYPES:
        known = ", ".join(sorted([*_V0_TYPES, "padding"]))
        raise _fail(source, f'V0 {label} has unknown type "{v0.type}" (known V0 types: {known})')
    out = caffe_pb2.V1LayerParameter(bottom=entry.bottom, top=entry.top, type=_V0_TYPES[v0.type])
    if v0.HasField("name"):
        out.name = v0.name
    for field, value in v0.ListFields():
        name = field.name
        if name in _V0_OTHER_FIELDS:
            continue
        if name in _V0_COPIED_FIELDS:
            getattr(out, name).extend(value)
        elif name in _V0_TRANSFORM_FIELDS:
            setattr(out.transform_param, _V0_TRANSFORM_FIELDS[name], value)
        else:
            homes = _V0_FIELD_HOMES[name]
            if v0.type not in homes:
                raise _fail(source, f'V0 {label} of type "{v0.type}" sets "{name}", which only '
                                    f'{", ".join(homes)} layers take')
            _assign(out, homes[v0.type], value)
    return out


def _upgrade_v0(net: caffe_pb2.NetParameter, source: str) -> None:
    kept = _fold_padding_layers(net, source)
    upgraded = [_v0_to_v1(entry, i, source) for i, entry in kept]
    del net.layers[:]
    net.layers.extend(upgraded)


# ----------------------------------------------------------------------------------- (b) data transformation
def _upgrade_data(net: caffe_pb2.NetParameter, source: str) -> None:
    for layer in net.layers:
        param_name = _DATA_PARAM_OF_TYPE.get(layer.type)
        if not param_name or not layer.HasField(param_name):
            continue
        param = getattr(layer, param_name)
        for field in _DEPRECATED_TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


# ------------------------------------------------------------------------------------------ (c) V1 -> V2 layers
def _v1_type_name(layer: caffe_pb2.V1LayerParameter, index: int, source: str) -> str:
    label = _layer_label(layer.name, index)
    if not layer.HasField("type"):
        raise _fail(source, f"V1 {label} has no type")
    if layer.type not in V1_TYPE_NAMES:
        raise _fail(source, f"V1 {label} has type {_V1.LayerType.Name(layer.type)}, which names no layer")
    return V1_TYPE_NAMES[layer.type]


def _fill_param_specs(v1: caffe_pb2.V1LayerParameter, out: caffe_pb2.LayerParameter) -> None:
    """param names, blob_share_mode, blobs_lr and weight_decay, index by index, into ParamSpecs."""
    lists = {"name": v1.param, "share_mode": v1.blob_share_mode, "lr_mult": v1.blobs_lr,
             "decay_mult": v1.weight_decay}
    for _ in range(max(len(values) for values in lists.values())):
        out.param.add()
    for spec_field, values in lists.items():
        for spec, value in zip(out.param, values):
            setattr(spec, spec_field, value)  # V1 and ParamSpec DimCheckMode share their numbers


def _v1_to_v2(v1: caffe_pb2.V1LayerParameter, type_name: str, out: caffe_pb2.LayerParameter) -> None:
    """Fill the empty `out` from `v1` (UpgradeV1LayerParameter)."""
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    out.type = type_name
    out.blobs.extend(v1.blobs)  # legacy num/channels/height/width stay as they are
    _fill_param_specs(v1, out)
    out.loss_weight.extend(v1.loss_weight)
    for name in V1_COPIED_PARAMS:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))


def _upgrade_v1(net: caffe_pb2.NetParameter, source: str) -> None:
    type_names = [_v1_type_name(layer, i, source) for i, layer in enumerate(net.layers)]  # all checked first
    for v1, type_name in zip(net.layers, type_names):
        _v1_to_v2(v1, type_name, net.layer.add())
    net.ClearField("layers")


# ---------------------------------------------------------------------------------------------- (d) net inputs
def _input_shapes(net: caffe_pb2.NetParameter, source: str) -> list[list[int]] | None:
    """One dim list per input, or None when the inputs come without shapes (old caffemodels)."""
    n = len(net.input)
    if net.input_shape and net.input_dim:
        raise _fail(source, "the net gives both input_shape and input_dim; give one of them")
    if net.input_shape:
        if len(net.input_shape) != n:
            raise _fail(source, f"the net has {n} input(s) but {len(net.input_shape)} input_shape(s); "
                                f"give one input_shape per input")
        return [list(shape.dim) for shape in net.input_shape]
    if net.input_dim:
        if len(net.input_dim) != 4 * n:
            raise _fail(source, f"the net has {n} input(s) but {len(net.input_dim)} input_dim values; "
                                f"give 4 (num, channels, height, width) per input")
        dims = list(net.input_dim)
        return [dims[4 * i: 4 * i + 4] for i in range(n)]
    return None


def _upgrade_input(net: caffe_pb2.NetParameter, source: str) -> None:
    shapes = _input_shapes(net, source)
    if shapes is not None:
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=net.input)
        for dims in shapes:
            layer.input_param.shape.add(dim=dims)
        net.layer.insert(0, layer)  # first, so every consumer comes after it
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


# ------------------------------------------------------------------------------------------------ (e) BatchNorm
def _upgrade_batchnorm(net: caffe_pb2.NetParameter, source: str) -> None:
    # The old BatchNorm definition asked users to declare its three statistics blobs with lr_mult 0; the layer now
    # freezes them itself, and Caffe rewrites any three-param declaration so that it cannot make them learn.
    for layer in net.layer:
        if _batchnorm_needs_fix(layer):
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# --------------------------------------------------------------------------------------------------- the driver
_STEPS: tuple[tuple[str, Callable, Callable], ...] = (
    ("V0 layers", needs_v0_upgrade, _upgrade_v0),
    ("data transformation parameters", needs_data_upgrade, _upgrade_data),
    ("V1 layers", needs_v1_upgrade, _upgrade_v1),
    ("net-level inputs", needs_input_upgrade, _upgrade_input),
    ("BatchNorm params", needs_batchnorm_upgrade, _upgrade_batchnorm),
)


def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """True when `upgrade_net` would change `net`."""
    return any(needs(net) for _, needs, _ in _STEPS)


def _check_before_upgrade(net: caffe_pb2.NetParameter, source: str) -> None:
    """Checks that would otherwise fail half-way, after earlier steps had already rewritten the net."""
    if net.layer and net.layers:
        raise _fail(source, "the net has both `layer` (current format) and `layers` (V1/V0 format) entries; "
                            "Caffe refuses to upgrade such a net. Rewrite the `layers` entries as `layer { type: "
                            '"..." }` blocks')
    if needs_input_upgrade(net):
        _input_shapes(net, source)


def upgrade_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> bool:
    """Bring `net` to the current format in place, as Caffe does on every read.  True if anything changed.

    `source` (usually the file name) prefixes error messages.  Raises PrototxtError on input Caffe cannot upgrade.
    """
    _check_before_upgrade(net, source)
    changed = False
    for what, needs, step in _STEPS:
        if needs(net):
            log.info("%s: upgrading deprecated %s", source, what)
            step(net, source)
            changed = True
    return changed


# ------------------------------------------------------------------------------------------------------- solver
def upgrade_solver(solver: caffe_pb2.SolverParameter, source: str = "<solver>") -> bool:
    """solver_type enum -> type string, then upgrade_net on every inline net.  True if anything changed."""
    changed = False
    if solver.HasField("solver_type"):
        type_name = _SOLVER_TYPE_NAMES[solver.solver_type]
        if solver.HasField("type") and solver.type != type_name:
            enum_name = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
            raise _fail(source, f'the solver sets both solver_type: {enum_name} and type: "{solver.type}"; '
                                f"give only type")
        log.info("%s: upgrading deprecated solver_type to type %r", source, type_name)
        solver.type = type_name
        solver.ClearField("solver_type")
        changed = True
    if solver.HasField("net_param"):
        changed |= upgrade_net(solver.net_param, f"{source} (net_param)")
    if solver.HasField("train_net_param"):
        changed |= upgrade_net(solver.train_net_param, f"{source} (train_net_param)")
    for i, test_net in enumerate(solver.test_net_param):
        changed |= upgrade_net(test_net, f"{source} (test_net_param #{i})")
    return changed
