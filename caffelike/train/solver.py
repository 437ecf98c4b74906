"""Caffe's Solver: building the train and test nets from a SolverParameter, the training loop (Solver::Step and
Solve), testing, display, the update (ApplyUpdate: clip, normalise, regularise, rule), snapshots and restore.

Log lines are Caffe's, word for word, so parse_log.py and DIGITS read them.  The pycaffe classes (SGDSolver, ...)
and `get_solver` are at the end.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict

import torch

from caffelike.core import runtime
from caffelike.errors import CaffeError, OutputError
from caffelike.format.files import remove_stale_temporaries
from caffelike.format.prototxt import read_net, read_solver
from caffelike.net import Net
from caffelike.proto import caffe_pb2
from caffelike.train.lr_policy import learning_rate
from caffelike.train.meters import MovingAverageMeter
from caffelike.train.precision import MixedPrecision
from caffelike.train.solver_log import fmt, log_debug_info, log_outputs, output_values
from caffelike.train.updates import make_rule
from caffelike.train.validate import check_solver

log = logging.getLogger("caffelike")

EVENTS = ("on_start", "on_sample", "on_forward", "on_backward", "on_update", "on_end_epoch", "on_test", "on_snapshot",
          "on_end")


class TrainingError(CaffeError):
    """Training cannot go on (a NaN loss, an interrupted restore, ...)."""


def _net_state(phase: int, file_state: caffe_pb2.NetState, solver_state: caffe_pb2.NetState | None):
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(file_state)
    if solver_state is not None:
        state.MergeFrom(solver_state)
    return state


def resolve_path(path: str, solver_file: str | None) -> str:
    """Caffe resolves the solver's file names against the working directory; when that names nothing and the
    file sits beside the solver, use that instead (Caffe would stop with 'file not found')."""
    if os.path.exists(path) or os.path.isabs(path) or solver_file is None:
        return path
    beside = os.path.join(os.path.dirname(os.path.abspath(solver_file)), path)
    return beside if os.path.exists(beside) else path


def default_snapshot_prefix(param: caffe_pb2.SolverParameter, solver_file: str | None) -> None:
    """Caffe's UpgradeSnapshotPrefixProperty: unset -> the solver file without extension; a directory ->
    <dir>/<solver file stem>."""
    if solver_file is None:
        return
    stem = os.path.splitext(solver_file)[0]
    if not param.HasField("snapshot_prefix"):
        param.snapshot_prefix = stem
        log.info("snapshot_prefix was not specified and is set to %s", stem)
    elif os.path.isdir(param.snapshot_prefix):
        param.snapshot_prefix = os.path.join(param.snapshot_prefix, os.path.basename(stem))
        log.info("snapshot_prefix is a directory and is set to %s", param.snapshot_prefix)


class Solver:
    """A Caffe solver.  `param` is a SolverParameter (or a solver prototxt path); `solver_type` overrides
    `param.type` (the pycaffe classes pass their own).  `trust_python` is handed to the nets it builds (see Net)."""

    def __init__(self, param, solver_type: str | None = None, solver_file: str | None = None,
                 trust_python: bool = False):
        if isinstance(param, (str, os.PathLike)):
            solver_file = os.fspath(param)
            param = read_solver(solver_file)
        self.param = param
        self.solver_file = solver_file
        self.trust_python = trust_python
        self.distributed = None  # a caffelike.train.distributed.Distributed when training with other ranks
        if solver_type is not None:
            self.param.type = solver_type
        default_snapshot_prefix(self.param, solver_file)
        check_solver(self.param, solver_file or "SolverParameter")
        log.info("Initializing solver from parameters: \n%s", self.param)
        if self.param.snapshot and runtime.root_solver():  # (as Caffe; solve() checks again for the final one)
            self._check_snapshot_folder()
        if self.param.random_seed >= 0:  # Caffe: each solver of a multi-GPU run seeds with seed + its rank
            runtime.set_random_seed(self.param.random_seed + runtime.solver_rank())
        self.net = self._build_train_net()
        self.test_nets = self._build_test_nets()
        self.iter = 0
        self.current_step = 0
        self.rule = make_rule(self.param, [p.param for p in self.net.learnable])
        self._groups: dict[tuple[float, float], list[int]] | None = None
        self.precision = MixedPrecision()
        self.hooks: dict[str, list] = defaultdict(list)
        self.requested_action = lambda: None  # set by the command line's signal handling
        self.history = {"train": defaultdict(list), "test": defaultdict(list), "lr": []}
        self.loss_meter = MovingAverageMeter(self.param.average_loss)  # the displayed (smoothed) loss
        self._early_exit = False
        for weights in self.param.weights:
            self.copy_weights(weights)

    # ---------------------------------------------------------------------------------------------- building nets
    def _read(self, path: str) -> caffe_pb2.NetParameter:
        return read_net(resolve_path(path, self.solver_file))

    def _build_train_net(self) -> Net:
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(given) != 1:
            raise CaffeError("SolverParameter must specify exactly one train net using one of net, net_param, "
                             f"train_net, train_net_param; got {given or 'none'}")
        if p.HasField("train_net_param"):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(p.train_net_param)
        elif p.HasField("train_net"):
            net_param = self._read(p.train_net)
        elif p.HasField("net_param"):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(p.net_param)
        else:
            net_param = self._read(p.net)
        log.info("Creating training net from %s", given[0])
        return self._make_net(net_param, caffe_pb2.TRAIN, p.train_state if p.HasField("train_state") else None)

    def _make_net(self, net_param, phase, solver_state) -> Net:
        state = _net_state(phase, net_param.state, solver_state)
        net_param.state.CopyFrom(state)
        return Net(net_param, phase=state.phase, level=state.level, trust_python=self.trust_python)

    def _build_test_nets(self) -> list[Net]:
        p = self.param
        generic = [f for f in ("net", "net_param") if p.HasField(f)]
        specific = [("test_net_param", q) for q in p.test_net_param] + [("test_net", f) for f in p.test_net]
        if generic:
            if len(p.test_iter) < len(specific):
                raise CaffeError("test_iter must be specified for each test network: "
                                 f"{len(specific)} test nets, {len(p.test_iter)} test_iter values")
        elif len(p.test_iter) != len(specific):
            what = "a test net" if not specific else f"{len(specific)} test nets"
            raise CaffeError(f"test_iter must be specified for each test network: {len(p.test_iter)} test_iter "
                             f"value(s) but {what} (give test_net/test_net_param, or use net: for train and test)")
        sources = list(specific)
        for _ in range(len(p.test_iter) - len(specific)):
            sources.append((generic[0], p.net_param if generic[0] == "net_param" else p.net))
        if p.test_state and len(p.test_state) != len(sources):
            raise CaffeError(f"test_state must be unspecified or specified once per test net: {len(p.test_state)} "
                             f"test_state for {len(sources)} test nets")
        if sources and p.test_interval <= 0:
            raise CaffeError(f"test_interval must be > 0 when there are test nets, got {p.test_interval}")
        nets = []
        for i, (kind, src) in enumerate(sources):
            if isinstance(src, str):
                net_param = self._read(src)
            else:
                net_param = caffe_pb2.NetParameter()
                net_param.CopyFrom(src)
            log.info("Creating test net (#%d) specified by %s", i, kind)
            nets.append(self._make_net(net_param, caffe_pb2.TEST, p.test_state[i] if p.test_state else None))
        return nets

    def copy_weights(self, paths: str) -> None:
        """Load comma-separated caffemodels into the train net and every test net (caffe train --weights)."""
        for path in [w for w in paths.split(",") if w]:
            log.info("Finetuning from %s", path)
            for net in [self.net, *self.test_nets]:
                net.copy_from(path)

    # --------------------------------------------------------------------------------------------------- hooks
    def add_hook(self, event: str, fn) -> None:
        """Call fn(solver) at `event`: on_start, on_sample (before each forward pass), on_forward (loss known),
        on_backward (gradients ready), on_update (after the update), on_end_epoch (after the update that
        completes a pass over the training data: see `epoch`), on_test (fn(solver, test_net_index,
        outputs)), on_snapshot (fn(solver, model_path, state_path)), on_end."""
        if event not in EVENTS:
            raise CaffeError(f"unknown hook event {event!r}; events are {', '.join(EVENTS)}")
        self.hooks[event].append(fn)

    def add_callback(self, on_start, on_gradients_ready=None) -> None:
        """pycaffe's Solver.add_callback: on_start() before each iteration, on_gradients_ready() before the update;
        or one object with both methods (add_callback(nccl), see caffelike.train.nccl)."""
        if on_gradients_ready is None:
            callback = on_start
            on_start, on_gradients_ready = callback.on_start, callback.on_gradients_ready
        self.hooks["on_start"].append(lambda s: on_start())
        self.hooks["on_backward"].append(lambda s: on_gradients_ready())

    def _fire(self, event: str, *args) -> None:
        for fn in self.hooks[event]:
            fn(self, *args)

    # ---------------------------------------------------------------------------------------------------- loop
    @property
    def lr(self) -> float:
        """pycaffe's SGDSolver.lr (like Caffe's, it advances a multistep policy's step)."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    @property
    def smoothed_loss(self) -> float:
        """Caffe's displayed loss: the mean of the last `average_loss` iteration losses since step() began."""
        return self.loss_meter.value()

    @property
    def epoch(self) -> float | None:
        """Passes over the training data so far: iterations x batch_size x iter_size / records of the train
        net's first data layer that knows its record count (Data, ImageData); None when none does."""
        size = self._epoch_size()
        return None if size is None else self.iter * size[1] / size[0]

    def _epoch_size(self) -> tuple[int, int] | None:
        """(records per epoch, records per iteration), or None."""
        for layer in self.net.layer_list:
            records = getattr(layer, "epoch_records", None)
            if records:  # (with N solvers, each reads every N-th record: N batches per iteration in all)
                return records, layer.batch_size * max(1, self.param.iter_size) * runtime.solver_count()
        return None

    def _epoch_ended(self) -> bool:
        size = self._epoch_size()
        if size is None:
            return False
        records, per_iter = size
        return self.iter * per_iter // records > (self.iter - 1) * per_iter // records

    def forward_backward(self) -> float:
        """One pass over the train net: Caffe's Net::ForwardBackward, gradients accumulating in the params."""
        self._fire("on_sample")
        with self.precision.autocast():
            outs = self.net.run()
            loss = self.net.loss(outs)
        value = float(loss.detach())
        self._fire("on_forward")
        if not math.isfinite(value):
            self._stop_on_nonfinite(value)
        if loss.requires_grad:
            self.precision.scaled(loss.float()).backward()
        return value

    def set_precision(self, name: str) -> None:
        """Train in "bf16" or "fp16" autocast (weights, gradients and updates stay float32), or "fp32" (Caffe's
        arithmetic, the default).  See caffelike.train.precision."""
        self.precision = MixedPrecision(name, self.net.device.type)

    def _stop_on_nonfinite(self, value: float) -> None:
        culprit = ""
        if self.net._compiled is not None:
            self.net.refresh_blobs()  # a compiled pass leaves intermediate blobs stale
        for layer, plan in zip(self.net.layer_list, self.net.plans):
            bad = [t for t in plan.tops if not torch.isfinite(self.net.blobs[t].tensor.detach()).all()]
            if bad:
                culprit = f"; the first non-finite values come from {layer.type} layer \"{layer.layer_name}\" (top " \
                          f"'{bad[0]}')"
                break
        raise TrainingError(f"Iteration {self.iter}: the training loss is {value}{culprit}. Lower base_lr, check the "
                            "data and the initial weights, or set clip_gradients.")

    def step(self, iters: int) -> None:
        """Caffe's Solver::Step: run `iters` iterations (test, forward/backward x iter_size, display, update,
        snapshot)."""
        p = self.param
        stop_iter = self.iter + iters
        self.loss_meter.reset()
        timer, iters_last = time.perf_counter(), self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
                if self._early_exit:
                    break
            self._fire("on_start")
            display = p.display and self.iter % p.display == 0
            loss = sum(self.forward_backward() for _ in range(p.iter_size)) / p.iter_size
            self.loss_meter.add(loss)
            self.history["train"]["loss"].append((self.iter, self.smoothed_loss))
            self._fire("on_backward")
            if display:
                lapse = time.perf_counter() - timer
                per_s = (self.iter - iters_last) / (lapse or 1)
                log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, fmt(per_s),
                         fmt(round(lapse, 3)), p.display, fmt(self.smoothed_loss))
                timer, iters_last = time.perf_counter(), self.iter
                log_outputs(self.net, "Train", output_values(self.net))
                if p.debug_info:
                    log_debug_info(self.net)
            self.apply_update(display)
            self.iter += 1
            self._fire("on_update")
            if self._epoch_ended():
                self._fire("on_end_epoch")
            action = self.requested_action() if self.distributed is None else self.distributed.agreed_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                self._snapshot_shared()
            if action == "stop":
                self._early_exit = True
                break

    def solve(self, resume_file: str | None = None) -> None:
        """Caffe's Solver::Solve: optionally restore, train to max_iter, final snapshot, loss and test."""
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self._early_exit = False
        if p.snapshot_after_train and not p.snapshot and runtime.root_solver():
            self._check_snapshot_folder()  # the weights are written at the end: a bad folder must fail now
        if resume_file:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self._snapshot_shared()
        if self._early_exit:
            log.info("Optimization stopped early.")
            self._fire("on_end")
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = self.net.run_forward()
            self.loss_meter.add(loss)
            log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")
        self._fire("on_end")

    # ---------------------------------------------------------------------------------------------------- test
    def test_all(self) -> None:
        if not runtime.root_solver():
            return  # Caffe: only the root solver (rank 0) tests
        for i in range(len(self.test_nets)):
            if self._early_exit:
                break
            self.test(i)

    def test(self, index: int = 0) -> list[tuple[str, float]]:
        """Caffe's Solver::Test: share the train weights, run test_iter forward passes, log the mean outputs."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, index)
        net = self.test_nets[index]
        net.share_with(self.net, ("the test net", "the train net"))
        sums: list[float] = []
        names: list[str] = []
        loss = 0.0
        n = p.test_iter[index]
        for i in range(n):
            # (With other ranks, rank 0 tests alone: a signal waits for the next all-reduce, which every rank
            # sees, rather than stopping rank 0 while the others wait.)
            action = self.requested_action() if self.distributed is None else None
            if action == "snapshot":
                self.snapshot()
            elif action == "stop":
                self._early_exit = True
            if self._early_exit:
                log.info("Test interrupted.")
                return []
            with torch.no_grad():
                iter_loss = net.run_forward()
            loss += iter_loss
            values = output_values(net)
            if i == 0:
                names, sums = [nm for nm, _ in values], [v for _, v in values]
            else:
                sums = [s + v for s, (_, v) in zip(sums, values)]
        if p.test_compute_loss:
            log.info("Test loss: %s", fmt(loss / n))
        means = [(nm, s / n) for nm, s in zip(names, sums)]
        log_outputs(net, "Test", means)
        for nm, v in means:
            self.history["test"][nm].append((self.iter, v))
        self._fire("on_test", index, means)
        return means

    # -------------------------------------------------------------------------------------------------- update
    def apply_update(self, display: bool = False) -> None:
        """Caffe's SGDSolver::ApplyUpdate: rate, clip, then per parameter normalise, regularise, rule, update."""
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        if display:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
        self.history["lr"].append((self.iter, rate))
        learnable = self.net.learnable
        with torch.no_grad():
            grads = []
            for entry in learnable:
                if entry.param.grad is None:
                    entry.param.grad = torch.zeros_like(entry.param)
                grads.append(entry.param.grad)
            if not self.precision.unscale(grads, self.iter):
                return
            self._clip(grads)
            if p.iter_size > 1 and grads:
                torch._foreach_mul_(grads, 1.0 / p.iter_size)
            for (lr_mult, decay_mult), indices in self._update_groups().items():
                params = [learnable[i].param for i in indices]
                group = [grads[i] for i in indices]
                local_decay = p.weight_decay * decay_mult
                if local_decay:
                    if p.regularization_type == "L2":
                        torch._foreach_add_(group, params, alpha=local_decay)
                    elif p.regularization_type == "L1":
                        torch._foreach_add_(group, torch._foreach_sign(params), alpha=local_decay)
                    else:
                        raise CaffeError(f"Unknown regularization type: {p.regularization_type!r} (L1 or L2)")
                torch._foreach_sub_(params, self.rule.step(indices, group, rate * lr_mult, self.iter))

    def _update_groups(self) -> dict[tuple[float, float], list[int]]:
        """Learnable parameters grouped by (lr_mult, decay_mult), planned once: each group is updated with one
        `_foreach` call per operation (typically two groups, weights and biases)."""
        if self._groups is None:
            self._groups = {}
            for i, entry in enumerate(self.net.learnable):
                self._groups.setdefault((entry.lr_mult, entry.decay_mult), []).append(i)
        return self._groups

    def _clip(self, grads: list[torch.Tensor]) -> None:
        limit = self.param.clip_gradients
        if limit < 0:
            return
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        if norm > limit:
            scale = limit / norm
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(norm), fmt(limit), fmt(scale))
            for g in grads:
                g.mul_(scale)

    # ------------------------------------------------------------------------------------------------ snapshot
    def _check_snapshot_folder(self) -> None:
        """Before any training: the snapshot folder must take files (a snapshot is written every `snapshot`
        iterations, at the end of solve() or on a signal), and temporary files that an interrupted snapshot of
        this prefix left behind are removed."""
        p = self.param
        if not p.snapshot_prefix:
            return
        probe = f"{p.snapshot_prefix}_iter_{0}.tempfile"
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            raise CaffeError(f"Cannot write to snapshot prefix '{p.snapshot_prefix}' ({e.strerror or e}). Make sure "
                             "that the directory exists and is writable.") from None
        for path in remove_stale_temporaries(f"{p.snapshot_prefix}_iter_"):
            log.info("Removed %s, left by an interrupted snapshot", path)

    def _snapshot_shared(self) -> None:
        """Caffe: only the root solver writes snapshots.  With a process group the other ranks wait for it, so
        that once any rank goes on, the snapshot is complete (each file is also written atomically)."""
        if runtime.root_solver():
            self.snapshot()
        if self.distributed is not None:
            self.distributed.barrier("the snapshot")

    def snapshot_filename(self, extension: str) -> str:
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> tuple[str, str]:
        """Write <prefix>_iter_<N>.caffemodel and .solverstate (or the .h5 pair), each atomically."""
        from caffelike.train import snapshot as snap

        hdf5 = self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5
        try:
            model, state = snap.write_snapshot(self, hdf5)
        except OutputError as e:
            # The folder went away or filled up during training: the weights go to the working directory
            # rather than being lost with the run.
            prefix = self.param.snapshot_prefix
            self.param.snapshot_prefix = os.path.join(os.getcwd(), os.path.basename(prefix) or "snapshot")
            log.warning("%s; writing the snapshot to %s_iter_%d.* instead", e, self.param.snapshot_prefix,
                        self.iter)
            model, state = snap.write_snapshot(self, hdf5)
        self._fire("on_snapshot", model, state)
        return model, state

    def restore(self, path: str) -> None:
        from caffelike.train import snapshot as snap

        snap.restore(self, path)


# ------------------------------------------------------------------------------------------------------- pycaffe
def _typed(name: str):
    class TypedSolver(Solver):
        __doc__ = f"pycaffe's {name}Solver(solver_prototxt): a Solver of type {name!r} whatever the file says."

        def __init__(self, solver_file, trust_python: bool = False):
            super().__init__(solver_file, solver_type=name, trust_python=trust_python)

    TypedSolver.__name__ = TypedSolver.__qualname__ = f"{name}Solver"
    return TypedSolver


SGDSolver = _typed("SGD")
NesterovSolver = _typed("Nesterov")
AdaGradSolver = _typed("AdaGrad")
RMSPropSolver = _typed("RMSProp")
AdaDeltaSolver = _typed("AdaDelta")
AdamSolver = _typed("Adam")


def get_solver(solver_file: str, trust_python: bool = False) -> Solver:
    """pycaffe's get_solver: the solver class named by the file's `type` (or deprecated `solver_type`)."""
    return Solver(solver_file, trust_python=trust_python)
