"""Data-parallel training on torch.distributed with BVLC Caffe's multi-GPU semantics (docs/distributed.md).

One process per device (a GPU over NCCL, or a CPU worker over gloo), each with its own Solver, nets and layer
instances (Python layers included).  What Caffe 1.0 does (tools/caffe.cpp, parallel.cpp, solver.cpp) and this
keeps:
  * rank 0's parameters are broadcast before training, so every rank starts from the same weights;
  * after each backward (over iter_size), the gradients are summed across the ranks and scaled by 1/N before
    the update, so each rank applies the same update: batch_size is per device, the effective batch N x it;
  * rank r seeds with random_seed + r, and TRAIN data layers read every N-th record (layers/data_shard.py);
  * only rank 0 tests, displays and snapshots; on resume every rank restores the same files.
BatchNorm's statistics stay per device (Caffe's), unless `sync_bn`: then the running mean and variance of every
BatchNorm layer (and of torch BatchNorm modules inside TorchModule layers) are averaged across the ranks at each
gradient all-reduce, so TEST and the snapshots see one global estimate (each batch is still normalised with its
own device's batch statistics).

The gradients travel in buckets (flattened per dtype, up to BUCKET_BYTES each, all in flight together) through
`dist.all_reduce`; the buckets also carry each rank's pending signal request, so a Ctrl-C or SIGHUP seen by any
rank makes every rank stop or snapshot after the same iteration.  A collective that fails (a rank died, raised,
or hung past the timeout) ends this rank with a DistributedError that names the rank(s) at fault where the
rendezvous store can tell.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time

import torch
import torch.distributed as dist
from torch import nn

from caffelike.core import runtime
from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")

BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default: few collectives, yet several in flight at once
DEFAULT_TIMEOUT_S = 1800.0  # torch's own default: the others wait this long while rank 0 alone tests
REPORT_WAIT_S = 3.0  # how long a failing rank waits for the others' reports before naming the silent ones
_ACTIONS = ("stop", "snapshot")


class DistributedError(CaffeError):
    """A collective failed: another rank died, raised or hung (or this one cannot join the group)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS's pick), for a rendezvous on this machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def env_launch() -> dict | None:
    """The variables torchrun sets (and `caffelike train --workers/--gpu` sets for its workers): rank,
    world_size, local_rank, local_world_size, host, port; None when this process was not launched so."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        port = int(os.environ.get("MASTER_PORT", "29500"))
    except ValueError as e:
        raise CaffeError(f"RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_PORT must be whole numbers "
                         f"({e})") from None
    if not 0 <= rank < world:
        raise CaffeError(f"RANK {rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return {"rank": rank, "world_size": world, "local_rank": local_rank, "local_world_size": local_world,
            "host": os.environ.get("MASTER_ADDR", "127.0.0.1"), "port": port}


def gpu_ids(flag: str) -> list[int]:
    """The devices of a --gpu flag: '0', '0,1' or 'all' ([] for the CPU)."""
    if flag in (None, "", "cpu", "-1"):
        return []
    if not torch.cuda.is_available():
        raise CaffeError(f"--gpu {flag}: no CUDA device is available to torch on this machine")
    count = torch.cuda.device_count()
    if flag == "all":
        return list(range(count))
    try:
        ids = [int(x) for x in str(flag).split(",") if x.strip()]
    except ValueError:
        raise CaffeError(f"--gpu expects device ids like 0 or 0,1 or 'all', got {flag!r}") from None
    bad = [i for i in ids if not 0 <= i < count]
    if bad or len(set(ids)) != len(ids):
        raise CaffeError(f"--gpu {flag}: each id once, among 0..{count - 1} ({count} devices)")
    return ids


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


class _RankPrefix(logging.Filter):
    """Prefix a non-zero rank's log lines with its rank, once (the filter sits on the logger and its handlers)."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_caffelike_rank", False):
            record.msg = f"[rank {self.rank}] {record.msg}"
            record._caffelike_rank = True
        return True


class Distributed:
    """One rank's view of the process group, and what the Solver consults: `reduce_gradients` (an on_backward
    hook), `barrier` (around snapshots), `agreed_action` (the signal request every rank acts on)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, *, store=None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, sync_bn: bool = False, where: str = ""):
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.store, self.timeout_s, self.sync_bn, self.where = store, float(timeout_s), sync_bn, where
        self.solver = None
        self._agreed: str | None = None
        self._key = f"caffelike/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --------------------------------------------------------------------------------------------- joining
    @classmethod
    def start(cls, rank: int, world_size: int, device: torch.device, host: str, port: int, *,
              timeout_s: float = DEFAULT_TIMEOUT_S, sync_bn: bool = False) -> Distributed:
        """Join (rank 0: host) the rendezvous at host:port and the process group: NCCL for a GPU, gloo for the
        CPU.  Sets Caffe's solver count and rank, and quiets this rank's log unless it is rank 0."""
        device = torch.device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL binds each rank's communicator to the current device
        timeout = datetime.timedelta(seconds=timeout_s)
        # Under torchrun the agent already serves the store at MASTER_ADDR:MASTER_PORT; otherwise rank 0 does.
        hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
        where = f"{host}:{port}"
        try:
            store = dist.TCPStore(host, port, world_size, is_master=hosts, timeout=timeout)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        except (RuntimeError, ValueError, OSError) as e:
            raise DistributedError(f"rank {rank} of {world_size}: cannot join the {backend} process group at "
                                   f"{where} within {timeout_s:g} s ({_first_line(e)})") from None
        runtime.set_solver_count(world_size)
        runtime.set_solver_rank(rank)
        runtime.set_multiprocess(True)
        self = cls(rank, world_size, device, store=store, timeout_s=timeout_s, sync_bn=sync_bn, where=where)
        self.quiet_log()
        log.info("Process group ready: %d ranks over %s (rendezvous %s), this is rank %d on %s", world_size, backend,
                 where, rank, device)
        return self

    def agree_on_seed(self, seed: int) -> int:
        """The shard seed (runtime.shard_seed) every rank uses for sharded shuffles: `seed` when >= 0, else one
        rank 0 draws."""
        value = torch.tensor([seed if seed >= 0 else int(torch.randint(0, 2**62, (1,)))], dtype=torch.int64,
                             device=self.device)
        self._collective("the agreement on a data seed", lambda: dist.broadcast(value, src=0))
        runtime.set_shard_seed(int(value.item()))
        return int(value.item())

    def quiet_log(self) -> None:
        """Caffe logs from the root solver: other ranks keep their warnings and errors, prefixed with the rank."""
        if self.rank == 0:
            return
        logger = logging.getLogger("caffelike")
        prefix = _RankPrefix(self.rank)
        self._quieted = (prefix, logger.level, list(logger.handlers))
        logger.setLevel(logging.WARNING)
        logger.addFilter(prefix)
        for handler in logger.handlers:
            handler.addFilter(prefix)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
        quieted = getattr(self, "_quieted", None)
        if quieted is not None:  # a process that goes on (a test, a notebook) gets its log back as it was
            prefix, level, handlers = quieted
            logger = logging.getLogger("caffelike")
            logger.setLevel(level)
            logger.removeFilter(prefix)
            for handler in handlers:
                handler.removeFilter(prefix)
            self._quieted = None

    # ----------------------------------------------------------------------------------------------- solver
    def attach(self, solver, first: bool = True) -> None:
        """Make `solver` one of the group's: rank 0's parameters broadcast, then the gradients averaged at
        every iteration (as the first on_backward hook, so later hooks see the averaged gradients)."""
        solver.distributed = self
        self.solver = solver
        self.broadcast_parameters(solver.net)
        hooks = solver.hooks["on_backward"]
        if first:
            hooks.insert(0, self._reduce_hook)
        else:
            hooks.append(self._reduce_hook)

    def _reduce_hook(self, solver) -> None:
        self.reduce_gradients(solver)

    def agreed_action(self) -> str | None:
        """The signal request ('stop', 'snapshot' or None) the ranks agreed on at the last all-reduce; read once."""
        action, self._agreed = self._agreed, None
        return action

    @staticmethod
    def _net_blobs(net) -> list[torch.Tensor]:
        """Every parameter blob of the net once (shared blobs are one tensor), BatchNorm statistics included."""
        seen, out = set(), []
        for layer in net.layer_list:
            for blob in layer.blobs:
                if id(blob) not in seen:
                    seen.add(id(blob))
                    out.append(blob)
        return out

    @staticmethod
    def _bn_statistics(net) -> list[torch.Tensor]:
        """The running mean and variance of Caffe's BatchNorm layers and of torch BatchNorm modules."""
        out = []
        for layer in net.layer_list:
            if layer.type == "BatchNorm":
                out.extend(layer.blobs[:2])
            for m in layer.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                    out.extend(t for t in (m.running_mean, m.running_var) if t is not None)
        return out

    def broadcast_parameters(self, net) -> None:
        """Caffe's NCCL::Broadcast: every rank takes rank 0's parameter blobs (and torch modules' buffers)."""
        tensors = self._net_blobs(net)
        for layer in net.layer_list:
            tensors.extend(b for b in layer.buffers() if b.is_floating_point() and b.numel())
        with torch.no_grad():
            self._bucketed(tensors, lambda flat: dist.broadcast(flat, src=0, async_op=True),
                           "the broadcast of rank 0's parameters")

    def reduce_gradients(self, solver) -> None:
        """Sum every learnable blob's gradient over the ranks and scale it by 1/N (Caffe's NCCL
        on_gradients_ready), together with the ranks' signal requests and, with sync_bn, BatchNorm's
        statistics (averaged)."""
        grads = []
        for entry in solver.net.learnable:
            p = entry.param
            if not p.requires_grad:
                continue  # (BatchNorm's statistics: no gradient to average)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        action = solver.requested_action()
        control = torch.tensor([float(action == a) for a in _ACTIONS], dtype=torch.float32, device=self.device)
        stats = self._bn_statistics(solver.net) if self.sync_bn else []
        scale = 1.0 / self.world_size
        with torch.no_grad():
            self._bucketed(grads, self._all_reduce, "the all-reduce of the gradients", scale=scale,
                           then=(([control], None), (stats, scale)))
        wanted = [a for a, v in zip(_ACTIONS, control.tolist()) if v > 0]
        self._agreed = wanted[0] if wanted else None

    @staticmethod
    def _all_reduce(flat: torch.Tensor):
        return dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True)

    def _bucketed(self, tensors, start, what: str, scale: float | None = None, then=()) -> None:
        """Run the collective `start(flat)` over `tensors` flattened into buckets (one dtype each, at most
        BUCKET_BYTES, all launched before any is waited for), optionally scale the results, and copy them back.
        `then` adds further (tensors, scale) groups that travel in their own buckets."""
        groups = [(list(tensors), scale), *[(list(t), s) for t, s in then]]
        buckets = []
        for group, group_scale in groups:
            current, size, kind = [], 0, None
            for t in group:
                key = (t.dtype, t.device)
                nbytes = t.numel() * t.element_size()
                if current and (key != kind or size + nbytes > BUCKET_BYTES):
                    buckets.append((current, group_scale))
                    current, size = [], 0
                current.append(t)
                size += nbytes
                kind = key
            if current:
                buckets.append((current, group_scale))

        def run():
            flats = [torch.cat([t.reshape(-1) for t in b]) for b, _ in buckets]
            works = [start(flat) for flat in flats]
            for work in works:
                if work is not None:
                    work.wait()
            return flats

        flats = self._collective(what, run)
        for (bucket, bucket_scale), flat in zip(buckets, flats):
            if bucket_scale is not None:
                flat.mul_(bucket_scale)
            offset = 0
            for t in bucket:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n

    def barrier(self, what: str) -> None:
        def run():
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

        self._collective(f"the barrier after {what}", run)

    # ------------------------------------------------------------------------------------------------ faults
    def _collective(self, what: str, fn):
        try:
            return fn()
        except (RuntimeError, ValueError) as e:  # (torch's DistBackendError and DistError are RuntimeErrors)
            raise DistributedError(self.diagnose(what, e)) from None

    def report_failure(self, message: str) -> None:
        """Tell the other ranks, through the rendezvous store, why this rank is stopping; then leave the group
        (so that their collectives fail now rather than at the timeout) and give them a moment to read it."""
        # (Each step may fail once the group or the store's host is gone: the process is ending anyway.)
        with contextlib.suppress(Exception):
            if self.store is not None:
                self.store.set(f"{self._key}failed/{self.rank}", message[:4000])
        with contextlib.suppress(Exception):
            self.close()
        with contextlib.suppress(Exception):
            if self.store is not None:
                self._wait_for_reports(set(), {})

    def _wait_for_reports(self, answered: set, failed: dict) -> list[int]:
        """Poll the store (at most REPORT_WAIT_S) for the other ranks' failure reports or acknowledgements;
        return the ranks that gave neither."""
        deadline = time.monotonic() + REPORT_WAIT_S
        while True:
            for r in range(self.world_size):
                if r == self.rank or r in failed or r in answered:
                    continue
                if self.store.check([f"{self._key}failed/{r}"]):
                    failed[r] = self.store.get(f"{self._key}failed/{r}").decode("utf-8", "replace")
                elif self.store.check([f"{self._key}stalled/{r}"]):
                    answered.add(r)
            silent = [r for r in range(self.world_size) if r != self.rank and r not in failed and r not in answered]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.1)

    def diagnose(self, what: str, error: BaseException) -> str:
        """Why `what` failed, as far as the rendezvous store can tell: the ranks that reported an error, and
        those that did not answer (dead or hung)."""
        it = getattr(self.solver, "iter", None)
        head = (f"rank {self.rank} of {self.world_size}: {what}" + (f" at iteration {it}" if it is not None else "")
                + f" failed ({_first_line(error)})")
        if self.store is None:
            return head
        failed: dict[int, str] = {}
        try:
            self.store.set(f"{self._key}stalled/{self.rank}", str(it))
            silent = self._wait_for_reports(set(), failed)
        except Exception:  # noqa: BLE001 - the store is unreachable
            return (f"{head}; the rendezvous store at {self.where} is unreachable: the rank that hosts it (rank 0, "
                    "or torchrun's agent) has died")
        parts = [head] + [f"rank {r} failed: {msg}" for r, msg in sorted(failed.items())]
        if silent:
            parts.append(f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} did not answer: died "
                         f"or hung (collectives time out after {self.timeout_s:g} s: --dist-timeout)")
        return "; ".join(parts)
