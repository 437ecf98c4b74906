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
`TorchModelSolver` is the ordinary Solver over it, whose snapshots are the module's state_dict
(`<prefix>_iter_N.pt`, loadable with torch.load(weights_only=True)) beside Caffe's `.solverstate`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import traceback
import types

import torch
from torch import nn

from caffelike.digits.generic_dataset import GENERIC_FORMAT
from caffelike.errors import CaffeError, OutputError, shape_str
from caffelike.format.blobproto import array_to_blob, blob_to_array
from caffelike.format.files import atomic_write, atomic_write_with
from caffelike.format.prototxt import read_solver
from caffelike.layers.torch_module import LossSpec, bind, output_shape
from caffelike.proto import caffe_pb2
from caffelike.train.snapshot import read_state, restore_progress
from caffelike.train.solver import Solver

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


def _mean_values(mean_file: str) -> list[float]:
    bp = caffe_pb2.BlobProto()
    with open(mean_file, "rb") as f:
        bp.ParseFromString(f.read())
    mean = blob_to_array(bp, where=mean_file)
    return [float(c) for c in mean.reshape(-1, *mean.shape[-2:]).mean(axis=(1, 2))]


def _data_layer(name: str, phase: int, source: str, batch_size: int, mean: str, mean_file: str, crop: int,
                mirror: bool, tops=("data", "label")) -> caffe_pb2.LayerParameter:
    lp = caffe_pb2.LayerParameter(name=name, type="Data", top=list(tops))
    lp.include.add(phase=phase)
    lp.data_param.source = source
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    lp.data_param.batch_size = batch_size
    if mean == "image":
        lp.transform_param.mean_file = mean_file
    elif mean == "pixel":
        lp.transform_param.mean_value.extend(_mean_values(mean_file))
    if crop:
        lp.transform_param.crop_size = crop
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
    mean_file = os.path.join(folder, dataset.get("files", {}).get("mean", "mean.binaryproto"))
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
def load_weights(spec: TorchModelSpec, path: str) -> nn.Module:
    """Fine-tuning (--weights): the state_dict at `path` goes into the model.  Without a fine_tune_hook every
    entry must fit; with one, the entries whose name and shape fit are loaded, the others left as built, and
    the hook adapts the model (DIGITS' fineTuneHook).  Returns the model to train."""
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
            raise CaffeError(f"{path} does not fit the model of {spec.path} ({'; '.join(problems)}); give the "
                             "model file a fine_tune_hook to adapt it")
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


# ------------------------------------------------------------------------------------------------------ solver
NET_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param")
# DIGITS' form: each lr policy's defaults, in percent of the training where they name a point in it.
POLICY_DEFAULTS = {"fixed": {}, "step": {"stepsize": 33, "gamma": 0.1}, "multistep": {"stepvalue": (50, 85),
                   "gamma": 0.5}, "exp": {"gamma": 0.95}, "inv": {"gamma": 0.1, "power": 0.5},
                   "poly": {"power": 3.0}, "sigmoid": {"stepsize": 50, "gamma": -0.1}}


def solver_param(dataset: dict, *, train_batch: int, val_batch: int, solver_file: str | None = None,
                 epochs: float | None = None, solver_type: str | None = None, base_lr: float | None = None,
                 lr_policy: str | None = None, weight_decay: float | None = None, momentum: float | None = None,
                 snapshot_prefix: str | None = None, random_seed: int | None = None) -> caffe_pb2.SolverParameter:
    """The SolverParameter: from `solver_file` (its net fields refused: the model file is the net), or DIGITS'
    form (epochs, solver type, base lr, lr policy with DIGITS' defaults).  Flags given override the file.
    max_iter comes from `epochs` when given; test_iter covers the validation set once; testing and (without a
    file) snapshots happen every epoch."""
    per_epoch = math.ceil(dataset["counts"]["train"] / train_batch)
    if solver_file:
        p = read_solver(solver_file)
        given = [f for f in NET_FIELDS if (len(getattr(p, f)) if f.startswith("test_") else p.HasField(f))]
        if given:
            raise CaffeError(f"{solver_file}: {', '.join(given)} cannot be used with --network (the model file is "
                             "the net and --dataset its data); remove them from the solver file")
    else:
        p = caffe_pb2.SolverParameter(type="SGD", base_lr=0.01, lr_policy="step", momentum=0.9, display=0)
        epochs = 30 if epochs is None else epochs
    if solver_type is not None:
        p.type = solver_type
    if base_lr is not None:
        p.base_lr = base_lr
    if epochs is not None:
        if not epochs > 0:
            raise CaffeError(f"--epochs must be > 0, got {epochs:g}")
        p.max_iter = max(1, round(epochs * per_epoch))
    if not p.max_iter:
        raise CaffeError(f"{solver_file}: no max_iter; give max_iter in the file or --epochs")
    if lr_policy is not None or not solver_file:
        p.lr_policy = lr_policy or p.lr_policy
        for field, value in POLICY_DEFAULTS.get(p.lr_policy, {}).items():
            if field == "stepvalue":
                del p.stepvalue[:]
                p.stepvalue.extend(max(1, math.ceil(v * p.max_iter / 100)) for v in value)
            elif field == "stepsize":
                p.stepsize = max(1, math.ceil(value * p.max_iter / 100))
            else:
                setattr(p, field, value)
    if not solver_file:
        p.weight_decay = p.base_lr / 100  # DIGITS' rule (as caffelike.digits.model_files)
        p.snapshot = per_epoch
        p.display = max(1, min(per_epoch // 8, math.ceil(5000 / train_batch)))
        if p.type in ("AdaGrad", "RMSProp"):
            p.momentum = 0.0
        elif p.type == "AdaDelta":
            p.momentum = 0.95
    if weight_decay is not None:
        p.weight_decay = weight_decay
    if momentum is not None:
        p.momentum = momentum
    if dataset["counts"].get("val"):
        if not p.test_iter:
            p.test_iter.append(math.ceil(dataset["counts"]["val"] / val_batch))
        if not p.test_interval:
            p.test_interval = min(per_epoch, p.max_iter)
    else:
        del p.test_iter[:]
    if snapshot_prefix:
        p.snapshot_prefix = snapshot_prefix
    elif not solver_file and not p.snapshot_prefix:
        p.snapshot_prefix = "snapshot"
    if random_seed is not None:
        p.random_seed = random_seed
    return p


class TorchModelSolver(Solver):
    """The ordinary Solver over the net `build_net` writes; `self.model` is the trained nn.Module.  Snapshots:
    `<prefix>_iter_N.pt` (the model's state_dict, CPU tensors, for torch.load(weights_only=True)) and
    `<prefix>_iter_N.solverstate` (Caffe's, its learned_net naming the .pt)."""

    def __init__(self, param: caffe_pb2.SolverParameter, spec: TorchModelSpec, net: caffe_pb2.NetParameter,
                 bound: list, solver_file: str | None = None):
        self.spec = spec
        self.model = spec.model
        self._bound = bound  # the objects the net's TorchModule/TorchLoss layers name, alive with the solver
        param.net_param.CopyFrom(net)
        super().__init__(param, solver_file=solver_file)

    def snapshot(self) -> tuple[str, str]:
        try:
            model, state = self._write_snapshot()
        except OutputError as e:
            prefix = self.param.snapshot_prefix
            self.param.snapshot_prefix = os.path.join(os.getcwd(), os.path.basename(prefix) or "snapshot")
            log.warning("%s; writing the snapshot to %s_iter_%d.* instead", e, self.param.snapshot_prefix,
                        self.iter)
            model, state = self._write_snapshot()
        self._fire("on_snapshot", model, state)
        return model, state

    def _write_snapshot(self) -> tuple[str, str]:
        model = self.snapshot_filename(".pt")
        log.info("Snapshotting to state_dict file %s", model)
        weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        atomic_write_with(model, lambda tmp: torch.save(weights, tmp), suffix=".pt")
        state = self.snapshot_filename(".solverstate")
        msg = caffe_pb2.SolverState(iter=self.iter, learned_net=model, current_step=self.current_step)
        for h in self.rule.history:
            array_to_blob(h.detach().cpu().numpy(), msg.history.add())
        log.info("Snapshotting solver state to binary proto file %s", state)
        atomic_write(state, msg.SerializeToString())
        return model, state

    def restore(self, path: str) -> None:
        it, learned_net, current_step, history = read_state(path)
        if learned_net:
            weights = learned_net
            if not os.path.exists(weights):  # written relative to another working directory: try beside the state
                beside = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(learned_net))
                weights = beside if os.path.exists(beside) else learned_net
            try:
                values = torch.load(weights, map_location="cpu", weights_only=True)
                self.model.load_state_dict(values)
            except Exception as e:
                raise CaffeError(f"{path}: cannot restore the weights from its learned_net {learned_net!r}: "
                                 f"{_one_line(e)}") from None
        restore_progress(self, path, it, current_step, history)


def make_solver(network: str, dataset: str, *, solver_file: str | None = None, epochs: float | None = None,
                solver_type: str | None = None, base_lr: float | None = None, lr_policy: str | None = None,
                batch_size: int | None = None, val_batch_size: int | None = None, crop_size: int | None = None,
                mean: str = "image", mirror: bool = False, weight_decay: float | None = None,
                momentum: float | None = None, snapshot_prefix: str | None = None, random_seed: int | None = None,
                weights: str | None = None, ngpus: int = 0) -> TorchModelSolver:
    """`caffelike train --network model.py --dataset DIR`: load the model file against the dataset, fine-tune
    from `weights` if given, and return the solver (call .solve(), or .restore(state) first to resume).
    Flags win over the model file's values (batch sizes, crop), which win over DIGITS' defaults."""
    data = read_dataset(dataset)
    if random_seed is not None:  # the model's initial weights too
        torch.manual_seed(random_seed)
    shape = input_shape(data, crop_size or 0)
    spec = load_model_file(network, nclasses=label_count(data), input_shape=shape, ngpus=ngpus)
    if spec.default_loss and is_generic(data):
        spec.loss = nn.MSELoss()  # DIGITS' regression criterion for generic datasets
    crop = crop_size or spec.crop_size or 0
    if crop > min(int(data["height"]), int(data["width"])):
        raise CaffeError(f"crop size {crop} is larger than the images of {data['path']} "
                         f"({data['height']}x{data['width']})")
    if weights:
        load_weights(spec, weights)
    check_model(spec, data, crop)
    if spec.disable_auto_data_parallelism is False and ngpus > 1:
        log.warning("multi-GPU data parallelism is not implemented yet: training on one device")
    train_batch = batch_size or spec.train_batch_size or 64
    val_batch = val_batch_size or spec.validation_batch_size or train_batch
    param = solver_param(data, train_batch=train_batch, val_batch=val_batch, solver_file=solver_file,
                         epochs=epochs, solver_type=solver_type, base_lr=base_lr, lr_policy=lr_policy,
                         weight_decay=weight_decay, momentum=momentum, snapshot_prefix=snapshot_prefix,
                         random_seed=random_seed)
    net, bound = build_net(spec, data, train_batch=train_batch, val_batch=val_batch, crop=crop, mean=mean,
                           mirror=mirror)
    return TorchModelSolver(param, spec, net, bound, solver_file=solver_file)

