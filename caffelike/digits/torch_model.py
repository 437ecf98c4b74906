"""DIGITS' Torch model contract in PyTorch: a model file `def network(params) -> dict`, trained by caffelike's
own Solver on a DIGITS dataset folder (docs/torch_models.md).

    params: ngpus, nclasses, input_shape (C, H, W; None when the model is only drawn); item or attribute access,
            DIGITS' `inputShape` too.
    dict:   model (nn.Module, required), loss (default: NLL on log-probabilities), label_hook(input, label),
            fine_tune_hook(model), train_batch_size, validation_batch_size, crop_size,
            disable_auto_data_parallelism; DIGITS' camelCase spellings (trainBatchSize, labelHook, ...) accepted.

One engine: `build_net` writes a NetParameter - Data layers on the dataset's train/val LMDBs with its mean, a
TorchModule layer running the model (its parameters are the net's learnable blobs), a TorchLoss layer, Accuracy
in TEST; on a generic dataset a second Data layer for the label vectors, MSE by default, no Accuracy - and
caffelike.digits.torch_training's `TorchModelSolver` is the ordinary Solver over it, whose snapshots are the
module's state_dict (`<prefix>_iter_N.pt`, loadable with torch.load(weights_only=True)) beside Caffe's
`.solverstate`.
"""
from __future__ import annotations

import json
import logging
import os
import traceback
import types

import torch
from torch import nn

from caffelike.digits.generic_dataset import GENERIC_FORMAT
from caffelike.errors import CaffeError, shape_str
from caffelike.format.blobproto import blob_to_array
from caffelike.layers.torch_module import LossSpec, bind, output_shape
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

# snake_case key -> (DIGITS' camelCase spelling, what it must be, check)
_POSITIVE_INT = ("a positive int", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
KEYS = {
    "model": ("model", "a torch.nn.Module", lambda v: isinstance(v, nn.Module)),
    "loss": ("loss", "a callable loss(output, target) (an nn.Module or a function)", callable),
    "label_hook": ("labelHook", "a callable label_hook(input, label)", callable),
    "fine_tune_hook": ("fineTuneHook", "a callable fine_tune_hook(model) returning the model", callable),
    "train_batch_size": ("trainBatchSize",) + _POSITIVE_INT,
    "validation_batch_size": ("validationBatchSize",) + _POSITIVE_INT,
    "crop_size": ("croplen", "a positive int", _POSITIVE_INT[1]),
    "disable_auto_data_parallelism": ("disableAutoDataParallelism", "a bool", lambda v: isinstance(v, bool)),
}
ALIASES = {camel: snake for snake, (camel, _, _) in KEYS.items()}
ALIASES.update({"cropSize": "crop_size", "cropLen": "crop_size"})


class ModelFileError(CaffeError):
    """A model file that cannot be loaded or does not keep the contract; the message names the file (and key)."""


class NetworkParams(dict):
    """What network(params) receives: ngpus, nclasses, input_shape, as items or attributes (and DIGITS'
    inputShape)."""

    def __init__(self, ngpus: int, nclasses: int, input_shape):
        shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        super().__init__(ngpus=int(ngpus), nclasses=int(nclasses), input_shape=shape, inputShape=shape)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"params has no {name!r} (it has ngpus, nclasses, input_shape)") from None


class TorchModelSpec:
    """A loaded model file: its path and the contract's values (snake_case), defaults filled in."""

    def __init__(self, path: str, values: dict):
        self.path = path
        self.model: nn.Module = values["model"]
        self.default_loss = "loss" not in values
        self.loss = values.get("loss") or nn.NLLLoss()
        self.label_hook = values.get("label_hook")
        self.fine_tune_hook = values.get("fine_tune_hook")
        self.train_batch_size: int | None = values.get("train_batch_size")
        self.validation_batch_size: int | None = values.get("validation_batch_size")
        self.crop_size: int | None = values.get("crop_size")
        self.disable_auto_data_parallelism: bool = values.get("disable_auto_data_parallelism", False)

    def fail(self, message: str):
        raise ModelFileError(f"{self.path}: {message}")


def _where_raised(path: str, e: BaseException) -> str:
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == path]
    return f" (line {lines[-1]})" if lines else ""


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def load_model_file(path: str, *, nclasses: int, input_shape=None, ngpus: int = 0) -> TorchModelSpec:
    """Run the model file `path` (the user's own code: only the file the user named) and call its
    network(params); returns the checked contract.  Every fault is a one-line ModelFileError naming the file."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the model file ({e.strerror or e})") from None
    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        raise ModelFileError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    module = types.ModuleType(f"caffelike_model_{os.path.splitext(os.path.basename(path))[0]}")
    module.__file__ = path
    try:
        exec(code, module.__dict__)
    except BaseException as e:  # SystemExit included: the user's code must not end the run
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ModelFileError(f"{path}: running the model file raised {_one_line(e)}{_where_raised(path, e)}") from e
    network = getattr(module, "network", None)
    if network is None:
        raise ModelFileError(f"{path}: defines no function network(params) (the model file must define "
                             "`def network(params): return {'model': ...}`)")
    if not callable(network):
        raise ModelFileError(f"{path}: network is a {type(network).__name__}, not a function network(params)")
    params = NetworkParams(ngpus, nclasses, input_shape)
    try:
        returned = network(params)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ModelFileError(f"{path}: network(params) raised {_one_line(e)}{_where_raised(path, e)}") from e
    return TorchModelSpec(path, _check_contract(path, returned))


def _check_contract(path: str, returned) -> dict:
    if not isinstance(returned, dict):
        raise ModelFileError(f"{path}: network(params) returned a {type(returned).__name__}; it must return a dict "
                             "with at least 'model' (an nn.Module)")
    values, spelled = {}, {}
    for key, value in returned.items():
        name = ALIASES.get(key, key)
        if name not in KEYS:
            known = ", ".join(f"{k} ({KEYS[k][0]})" if KEYS[k][0] != k else k for k in KEYS)
            raise ModelFileError(f"{path}: unknown key {key!r} in the dict network(params) returned (known keys: "
                                 f"{known})")
        if name in values:
            raise ModelFileError(f"{path}: the dict network(params) returned gives {name!r} twice (as "
                                 f"{spelled[name]!r} and {key!r})")
        if value is None and name != "model":
            continue  # DIGITS' nil: not given
        _, what, ok = KEYS[name]
        if not ok(value):
            raise ModelFileError(f"{path}: key {key!r} must be {what}, got {value!r} ({type(value).__name__})")
        values[name], spelled[name] = value, key
    if values.get("model") is None:
        raise ModelFileError(f"{path}: network(params) returned no model (the dict needs 'model': an nn.Module)")
    return values


# ------------------------------------------------------------------------------------------------ the dataset
def read_dataset(folder: str) -> dict:
    """The summary of a DIGITS dataset folder (`caffelike dataset create`'s dataset.json), with its path."""
    folder = os.path.abspath(os.fspath(folder))
    summary_file = os.path.join(folder, "dataset.json")
    try:
        with open(summary_file, encoding="utf-8") as f:
            summary = json.load(f)
    except OSError:
        raise CaffeError(f"{folder}: not a dataset folder (no dataset.json; make one with `caffelike dataset "
                         "create`)") from None
    except ValueError as e:
        raise CaffeError(f"{summary_file}: not valid JSON ({e})") from None
    if summary.get("format") not in ("digits-image-classification", GENERIC_FORMAT):
        raise CaffeError(f"{summary_file}: format {summary.get('format')!r} is not supported (only "
                         f"digits-image-classification and {GENERIC_FORMAT} datasets)")
    return dict(summary, path=folder)


def is_generic(dataset: dict) -> bool:
    """A DIGITS generic (regression) dataset: inputs and label vectors in separate LMDBs."""
    return dataset.get("format") == GENERIC_FORMAT


def label_count(dataset: dict) -> int:
    """params.nclasses: the classes of a classification dataset, the label vectors' length K of a generic one."""
    return int(dataset["label_dim"]) if is_generic(dataset) else len(dataset["labels"])


def dataset_mean_file(dataset: dict) -> str:
    """The dataset's mean.binaryproto, which training subtracts."""
    return os.path.join(dataset["path"], dataset.get("files", {}).get("mean", "mean.binaryproto"))


def _mean_values(mean_file: str) -> list[float]:
    bp = caffe_pb2.BlobProto()
    with open(mean_file, "rb") as f:
        bp.ParseFromString(f.read())
    mean = blob_to_array(bp, where=mean_file)
    return [float(c) for c in mean.reshape(-1, *mean.shape[-2:]).mean(axis=(1, 2))]


def transform_param(mean: str, mean_file: str, crop: int = 0) -> caffe_pb2.TransformationParameter:
    """The mean subtraction (image, pixel or none) and crop that training applies to the inputs (no mirror)."""
    tp = caffe_pb2.TransformationParameter()
    if mean == "image":
        tp.mean_file = mean_file
    elif mean == "pixel":
        tp.mean_value.extend(_mean_values(mean_file))
    if crop:
        tp.crop_size = crop
    return tp


def _data_layer(name: str, phase: int, source: str, batch_size: int, mean: str, mean_file: str, crop: int,
                mirror: bool, tops=("data", "label")) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name=name, type="Data", top=list(tops))
    lp.include.add(phase=phase)
    lp.data_param.source = source
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    lp.data_param.batch_size = batch_size
    lp.transform_param.CopyFrom(transform_param(mean, mean_file, crop))
    if mirror and phase == caffe_pb2.TRAIN:
        lp.transform_param.mirror = True
    return lp


def build_net(spec: TorchModelSpec, dataset: dict, *, train_batch: int, val_batch: int, crop: int = 0,
              mean: str = "image", mirror: bool = False) -> tuple[caffe_pb2.NetParameter, list]:
    """The NetParameter that trains `spec`'s model on `dataset` (read_dataset's summary), and the bound objects
    the net's layers name (keep them alive while nets are built from it)."""
    if mean not in ("image", "pixel", "none"):
        raise CaffeError(f"mean must be image, pixel or none, got {mean!r}")
    folder = dataset["path"]
    mean_file = dataset_mean_file(dataset)
    net = caffe_pb2.NetParameter(name=os.path.splitext(os.path.basename(spec.path))[0])
    generic = is_generic(dataset)
    tops = ("data",) if generic else ("data", "label")
    splits = [("train", caffe_pb2.TRAIN, train_batch)]
    if dataset["counts"].get("val"):
        splits.append(("val", caffe_pb2.TEST, val_batch))
    for split, phase, batch in splits:
        net.layer.append(_data_layer(f"{split}-data", phase, os.path.join(folder, f"{split}_db"), batch, mean,
                                     mean_file, crop, mirror, tops))
        if generic:  # the label vectors: a second Data layer over the label LMDB, record i beside input i
            labels = _data_layer(f"{split}-labels", phase, os.path.join(folder, f"{split}_labels_db"), batch,
                                 "none", mean_file, 0, False, ("label-vector",))
            net.layer.append(labels)
    if generic:  # (N, K, 1, 1) -> (N, K)
        net.layer.add(name="label-flatten", type="Flatten", bottom=["label-vector"], top=["label"])
    loss_spec = LossSpec(spec.loss, spec.label_hook, class_labels=not generic)
    model_layer = net.layer.add(name="model", type="TorchModule", bottom=["data"], top=["output"])
    model_layer.python_param.param_str = bind(spec.model, "model")
    for p in spec.model.parameters():  # a frozen parameter (requires_grad False) is neither trained nor decayed
        model_layer.param.add(lr_mult=1.0 if p.requires_grad else 0.0, decay_mult=1.0 if p.requires_grad else 0.0)
    loss_layer = net.layer.add(name="loss", type="TorchLoss", bottom=["output", "label"], top=["loss"])
    if spec.label_hook is not None:
        loss_layer.bottom.append("data")
    loss_layer.python_param.param_str = bind(loss_spec, "loss")
    if spec.label_hook is None and not generic and _classifies(spec, dataset, crop, train_batch):
        acc = net.layer.add(name="accuracy", type="Accuracy", bottom=["output", "label"], top=["accuracy"])
        acc.include.add(phase=caffe_pb2.TEST)
    return net, [spec.model, loss_spec]


def input_shape(dataset: dict, crop: int = 0) -> tuple[int, int, int]:
    return (int(dataset["channels"]), crop or int(dataset["height"]), crop or int(dataset["width"]))


def _classifies(spec: TorchModelSpec, dataset: dict, crop: int, batch: int) -> bool:
    shape = output_shape(spec.model, (batch, *input_shape(dataset, crop)))
    return len(shape) == 2 and shape[1] == len(dataset["labels"])


def check_model(spec: TorchModelSpec, dataset: dict, crop: int = 0) -> tuple[int, ...]:
    """Refuse, naming the file, a model that cannot run on the dataset's (cropped) images, or whose output the
    default loss cannot score; returns the output shape for a batch of 2."""
    shape = (2, *input_shape(dataset, crop))
    try:
        out = output_shape(spec.model, shape)
    except Exception as e:
        spec.fail(f"the model cannot run on the dataset's input of shape {shape_str(shape)} (N, C, H, W"
                  f"{', cropped' if crop else ''}): {_one_line(e)}")
    n = label_count(dataset)
    if spec.default_loss and spec.label_hook is None and is_generic(dataset):
        if out != (2, n):
            spec.fail(f"the model's output has shape {shape_str(out)} for input {shape_str(shape)}; the default "
                      f"loss of a generic dataset (MSE) needs (N, {n}), one column per value of its label vectors")
    elif spec.default_loss and spec.label_hook is None and out != (2, n):
        spec.fail(f"the model's output has shape {shape_str(out)} for input {shape_str(shape)}; the default loss "
                  f"(NLL on log-probabilities) needs (N, {n}), one column per class of the dataset")
    return out


# ----------------------------------------------------------------------------------------------------- weights
def load_weights(spec: TorchModelSpec, path: str,
                 advice: str = "give the model file a fine_tune_hook to adapt it") -> nn.Module:
    """Fine-tuning (--weights): the state_dict at `path` goes into the model.  Without a fine_tune_hook every
    entry must fit; with one, the entries whose name and shape fit are loaded, the others left as built, and
    the hook adapts the model (DIGITS' fineTuneHook).  Returns the model to train.  `advice` ends the error
    of a file that does not fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CaffeError(f"{path}: cannot load weights ({_one_line(e)}); --weights takes a state_dict .pt file "
                         "such as a snapshot") from None
    if not isinstance(state, dict):
        raise CaffeError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    mine = spec.model.state_dict()
    bad = [f"{k} {shape_str(v.shape)} vs the model's {shape_str(mine[k].shape)}" for k, v in state.items()
           if k in mine and tuple(v.shape) != tuple(mine[k].shape)]
    missing = [k for k in mine if k not in state]
    extra = [k for k in state if k not in mine]
    if spec.fine_tune_hook is None:
        if bad or missing or extra:
            problems = ([f"mismatching shapes: {', '.join(bad)}"] if bad else []) + \
                       ([f"missing from the file: {', '.join(missing)}"] if missing else []) + \
                       ([f"not in the model: {', '.join(extra)}"] if extra else [])
            raise CaffeError(f"{path} does not fit the model of {spec.path} ({'; '.join(problems)}); {advice}")
        spec.model.load_state_dict(state)
        return spec.model
    fits = {k: v for k, v in state.items() if k in mine and tuple(v.shape) == tuple(mine[k].shape)}
    spec.model.load_state_dict(fits, strict=False)
    if len(fits) != len(state) or missing:
        log.info("Fine-tuning from %s: %d of %d entries loaded; left as built: %s", path, len(fits), len(state),
                 ", ".join(sorted(set(mine) - set(fits))) or "none")
    try:
        model = spec.fine_tune_hook(spec.model)
    except Exception as e:
        spec.fail(f"fine_tune_hook raised {_one_line(e)}{_where_raised(spec.path, e)}")
    if model is None:
        model = spec.model  # a hook that adapts the model in place
    if not isinstance(model, nn.Module):
        spec.fail(f"fine_tune_hook returned a {type(model).__name__}, not an nn.Module")
    spec.model = model
    return model


