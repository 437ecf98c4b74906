"""Caffe's global mode (CPU or GPU), device and random seed, as pycaffe's set_mode_* functions set them; the
multi-solver settings (solver count and rank, multiprocess), has_nccl, and pycaffe's Timer.  (caffe.NCCL is
caffelike.train.nccl: it needs the solver.)"""
from __future__ import annotations

import random
import time

import numpy as np
import torch

from caffelike.errors import CaffeError

_state = {"mode": "cpu", "device_id": 0, "version": 0}


def mode_version() -> int:
    """Bumped by every set_mode_*/set_device call, so nets know when to follow the global mode."""
    return _state["version"]


def set_mode_cpu() -> None:
    _state["mode"] = "cpu"
    _state["version"] += 1


def set_mode_gpu() -> None:
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available to torch on this machine")
    _state["mode"] = "gpu"
    _state["version"] += 1


def set_device(device_id: int) -> None:
    if torch.cuda.is_available() and not 0 <= device_id < torch.cuda.device_count():
        raise CaffeError(f"set_device: device {device_id} does not exist ({torch.cuda.device_count()} CUDA devices)")
    _state["device_id"] = int(device_id)
    _state["version"] += 1


def set_random_seed(seed: int) -> None:
    """Seed every generator caffelike draws from (fillers, dropout, data shuffles)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def current_device() -> torch.device:
    if _state["mode"] == "gpu":
        return torch.device("cuda", _state["device_id"])
    return torch.device("cpu")


def parse_gpu_flag(value: str | None) -> torch.device:
    """Caffe's --gpu flag: '0', '0,1' (first id used here), 'all', or empty / 'cpu' for the CPU."""
    if value in (None, "", "cpu", "-1"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CaffeError(f"--gpu {value}: no CUDA device is available to torch on this machine")
    if value == "all":
        return torch.device("cuda", 0)
    try:
        first = int(str(value).split(",")[0])
    except ValueError:
        raise CaffeError(f"--gpu expects device ids like 0 or 0,1 or 'all', got {value!r}") from None
    if not 0 <= first < torch.cuda.device_count():
        raise CaffeError(f"--gpu {value}: device {first} does not exist ({torch.cuda.device_count()} devices)")
    return torch.device("cuda", first)


# ------------------------------------------------------------------------------ multi-solver state and NCCL
# pycaffe's caffe.solver_count()/solver_rank()/set_multiprocess(): Caffe keeps them as process-wide settings that
# BVLC's multi-GPU train.py sets in each worker, and so does caffelike.train.distributed.  Like Caffe's, they are
# read where it matters: the Solver seeds with random_seed + rank and lets only rank 0 test and snapshot, and a
# TRAIN-phase data layer on rank r of N keeps the records whose running index i has i % N == r.
_solvers = {"count": 1, "rank": 0, "multiprocess": False, "shard_seed": 0}


def _whole_number(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} takes an integer, got {type(value).__name__} {value!r}")
    return int(value)


def solver_count() -> int:
    return _solvers["count"]


def set_solver_count(count: int) -> None:
    count = _whole_number(count, "set_solver_count")
    if count < 1:
        raise ValueError(f"set_solver_count: the count must be at least 1, got {count}")
    _solvers["count"] = count


def solver_rank() -> int:
    return _solvers["rank"]


def set_solver_rank(rank: int) -> None:
    rank = _whole_number(rank, "set_solver_rank")
    if rank < 0:
        raise ValueError(f"set_solver_rank: the rank must be 0 or more, got {rank}")
    _solvers["rank"] = rank


def root_solver() -> bool:
    """Caffe::root_solver(): the solver that tests, displays and snapshots (rank 0)."""
    return _solvers["rank"] == 0


def multiprocess() -> bool:
    return _solvers["multiprocess"]


def set_multiprocess(value: bool) -> None:
    _solvers["multiprocess"] = bool(value)


def shard_seed() -> int:
    """The seed of the shuffles of sharded data layers (ImageData, HDF5Data with shuffle): the same on every
    rank, so that each pass is one permutation split between the ranks rather than N unrelated ones (the ranks'
    own generators differ: they are seeded with random_seed + rank)."""
    return _solvers["shard_seed"]


def set_shard_seed(seed: int) -> None:
    _solvers["shard_seed"] = _whole_number(seed, "set_shard_seed") % 2**63


def has_nccl() -> bool:
    """pycaffe's caffe.has_nccl(): True when torch.distributed is available, which is what caffe.NCCL and
    multi-process training run on (NCCL between GPUs, gloo between CPU processes)."""
    import torch.distributed as dist

    return bool(dist.is_available())


# ---------------------------------------------------------------------------------------------------- Timer
class Timer:
    """pycaffe's caffe.Timer: `start()`, `stop()` and `ms`, the milliseconds between them.

    As Caffe's Timer: start() on a running timer and stop() on a stopped one do nothing; reading `ms` while it
    runs stops it first; a timer never started reads 0.  In GPU mode start and stop wait for the device's queued
    work (Caffe times with CUDA events), so a timed forward pass includes its kernels.
    """

    def __init__(self):
        self._start = 0.0
        self._elapsed_ms = 0.0
        self.running = False
        self.has_run_at_least_once = False

    @staticmethod
    def _now() -> float:
        if _state["mode"] == "gpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        if not self.running:
            self._start = self._now()
            self.running = True
            self.has_run_at_least_once = True

    def stop(self) -> None:
        if self.running:
            self._elapsed_ms = (self._now() - self._start) * 1000.0
            self.running = False

    @property
    def ms(self) -> float:
        if not self.has_run_at_least_once:
            return 0.0
        if self.running:
            self.stop()
        return self._elapsed_ms

    @property
    def seconds(self) -> float:
        return self.ms / 1000.0

    def __repr__(self) -> str:
        state = "running" if self.running else f"{self._elapsed_ms:.3f} ms"
        return f"<Timer {state}>"
