"""Training a PyTorch model file (docs/torch_models.md): the SolverParameter from a solver file and/or DIGITS' form
(`solver_param`), the ordinary Solver over the net `caffelike.digits.torch_model.build_net` writes, with
state_dict snapshots (`TorchModelSolver`), and `make_solver`, what `caffelike train --network` calls.
"""
from __future__ import annotations

import logging
import math
import os

import torch
from torch import nn

from caffelike.core import runtime
from caffelike.digits.model_files import set_lr_policy
from caffelike.digits.torch_model import (
    TorchModelSpec,
    _one_line,
    build_net,
    check_model,
    input_shape,
    is_generic,
    label_count,
    load_model_file,
    load_weights,
    read_dataset,
)
from caffelike.errors import CaffeError, OutputError
from caffelike.format.blobproto import array_to_blob
from caffelike.format.files import atomic_write, atomic_write_with
from caffelike.format.prototxt import read_solver
from caffelike.proto import caffe_pb2
from caffelike.train.snapshot import read_state, restore_progress
from caffelike.train.solver import Solver

log = logging.getLogger("caffelike")

NET_FIELDS = ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param")
# DIGITS' form: each lr policy's defaults as the form shows them - points in percent of the training, the
# exp/inv/sigmoid gammas per percent, the sigmoid's positive - which model_files.set_lr_policy turns into Caffe's.
POLICY_DEFAULTS = {"fixed": {}, "step": {"stepsize": 33, "gamma": 0.1}, "multistep": {"stepvalue": (50, 85),
                   "gamma": 0.5}, "exp": {"gamma": 0.95}, "inv": {"gamma": 0.1, "power": 0.5},
                   "poly": {"power": 3.0}, "sigmoid": {"stepsize": 50, "gamma": 0.1}}


def solver_param(dataset: dict, *, train_batch: int, val_batch: int, solver_file: str | None = None,
                 epochs: float | None = None, solver_type: str | None = None, base_lr: float | None = None,
                 lr_policy: str | None = None, weight_decay: float | None = None, momentum: float | None = None,
                 snapshot_prefix: str | None = None, random_seed: int | None = None) -> caffe_pb2.SolverParameter:
    """The SolverParameter: from `solver_file` (its net fields refused: the model file is the net), or DIGITS'
    form (epochs, solver type, base lr, lr policy with DIGITS' defaults).  Flags given override the file.
    max_iter comes from `epochs` when given; test_iter covers the validation set once; testing and (without a
    file) snapshots happen every epoch.  With N processes (docs/distributed.md) an iteration reads N batches."""
    per_epoch = math.ceil(dataset["counts"]["train"] / (train_batch * runtime.solver_count()))
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
        name = lr_policy or p.lr_policy
        if name not in POLICY_DEFAULTS:
            raise CaffeError(f"unknown lr policy {name!r}; DIGITS' policies are {', '.join(POLICY_DEFAULTS)}")
        set_lr_policy(p, {"policy": name, **POLICY_DEFAULTS[name]})
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
    if spec.disable_auto_data_parallelism and runtime.solver_count() > 1:
        spec.fail("sets disable_auto_data_parallelism, but this run has "
                  f"{runtime.solver_count()} processes (--gpu with several ids, or --workers): train it on one device")
    train_batch = batch_size or spec.train_batch_size or 64
    val_batch = val_batch_size or spec.validation_batch_size or train_batch
    param = solver_param(data, train_batch=train_batch, val_batch=val_batch, solver_file=solver_file,
                         epochs=epochs, solver_type=solver_type, base_lr=base_lr, lr_policy=lr_policy,
                         weight_decay=weight_decay, momentum=momentum, snapshot_prefix=snapshot_prefix,
                         random_seed=random_seed)
    net, bound = build_net(spec, data, train_batch=train_batch, val_batch=val_batch, crop=crop, mean=mean,
                           mirror=mirror)
    return TorchModelSolver(param, spec, net, bound, solver_file=solver_file)

