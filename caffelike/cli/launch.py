"""`caffelike train --workers N` / `--gpu 0,1` / `--gpu all`: one worker process per rank, as torchrun would start
them (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each running the same command;
and, in a worker (or under torchrun), joining the process group before the solver is built.

The launcher only watches: rank 0 writes the log, the others only their warnings and errors.  When a worker
fails, the others end on their own (their next collective fails, or times out); those still running after a
grace period are terminated, and the launcher says which rank failed first and how.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from caffelike.errors import CaffeError
from caffelike.train import distributed

log = logging.getLogger("caffelike")

GRACE_S = 15.0  # after a worker fails, how long the others have to end on their own


def add_arguments(p) -> None:
    g = p.add_argument_group("several processes (docs/distributed.md)")
    g.add_argument("--workers", type=int, default=0,
                   help="train with N CPU processes over gloo (each reads every N-th record; batch_size is per "
                        "process); several GPUs are --gpu 0,1 or --gpu all (NCCL)")
    g.add_argument("--sync-bn", "--sync_bn", action="store_true", dest="sync_bn",
                   help="average BatchNorm's running statistics across the processes at every iteration (Caffe "
                        "keeps them per device)")
    g.add_argument("--dist-timeout", "--dist_timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                   dest="dist_timeout", help="seconds before a collective waiting for a dead or hung process fails "
                                             "(keep it above rank 0's longest test pass: the others wait meanwhile)")


def plan(args) -> tuple[str, int, list[int]]:
    """('worker', ...) when launched by torchrun or by a launcher; ('spawn', n, gpu ids) when this command must
    start n workers; ('single', 1, []) otherwise."""
    env = distributed.env_launch()
    if env is not None and env["world_size"] > 1:
        return "worker", env["world_size"], []
    ids = distributed.gpu_ids(args.gpu) if args.gpu else []
    if args.workers < 0:
        raise CaffeError(f"--workers must be >= 0, got {args.workers}")
    if args.workers > 1 and ids:
        raise CaffeError("--workers runs CPU processes; for several GPUs give --gpu 0,1 or --gpu all alone")
    if args.workers > 1:
        return "spawn", args.workers, []
    if len(ids) > 1:
        return "spawn", len(ids), ids
    return "single", 1, []


def join(args) -> distributed.Distributed:
    """In a worker: pick this rank's device (--gpu's LOCAL_RANK-th id; 'all' or solver_mode GPU: device
    LOCAL_RANK; else the CPU), join the group, and agree on the data seed.  Sets args.gpu to the one device."""
    import torch

    from caffelike.format.prototxt import read_solver
    from caffelike.proto import caffe_pb2

    env = distributed.env_launch()
    ids = distributed.gpu_ids(args.gpu) if args.gpu else []
    param = read_solver(args.solver) if args.solver else caffe_pb2.SolverParameter()
    explicit_gpu = param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU
    if not ids and explicit_gpu and torch.cuda.is_available():
        ids = list(range(torch.cuda.device_count()))
    if ids:
        if len(ids) == 1 and env["local_world_size"] > 1:
            raise CaffeError(f"--gpu {args.gpu} names one device for {env['local_world_size']} processes on this "
                             "machine: give one id per local process (--gpu 0,1,...) or --gpu all")
        if env["local_rank"] >= len(ids):
            raise CaffeError(f"LOCAL_RANK {env['local_rank']} has no device in --gpu {args.gpu} ({len(ids)} ids)")
        device = torch.device("cuda", ids[env["local_rank"]])
        args.gpu = str(device.index)
    else:
        device = torch.device("cpu")
        args.gpu = ""
    group = distributed.Distributed.start(env["rank"], env["world_size"], device, env["host"], env["port"],
                                          timeout_s=args.dist_timeout, sync_bn=args.sync_bn)
    seed = param.random_seed if param.HasField("random_seed") else getattr(args, "seed", None)
    group.agree_on_seed(-1 if seed is None else seed)
    return group


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def spawn(args, count: int, gpu_ids: list[int]) -> int:
    """Start `count` workers running this same command, wait for them, and return 0 when all succeeded."""
    argv = list(getattr(args, "_argv", None) or sys.argv[1:])
    port = distributed.free_port()
    what = f"GPUs {','.join(map(str, gpu_ids))} (NCCL)" if gpu_ids else "CPU processes (gloo)"
    log.info("Starting %d workers on %s, rendezvous 127.0.0.1:%d", count, what, port)
    procs = []
    for rank in range(count):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(count),
                   LOCAL_WORLD_SIZE=str(count), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "caffelike", *argv], env=env))

    def forward(signum, frame):  # a signal sent to the launcher alone (not the terminal's group) reaches all
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _watch(procs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:  # (an exception in the launcher itself must not leave workers behind)
            if p.poll() is None:
                p.kill()
                p.wait()


def _watch(procs: list[subprocess.Popen]) -> int:
    first_failure: tuple[int, int] | None = None
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0) and first_failure is None:
                first_failure = (rank, code)
                deadline = time.monotonic() + GRACE_S
        if all(c is not None for c in codes):
            break
        if deadline is not None and time.monotonic() > deadline:
            for rank, p in enumerate(procs):
                if p.poll() is None:
                    log.error("rank %d is still running %g s after rank %d failed: terminating it", rank, GRACE_S,
                              first_failure[0])
                    p.terminate()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            break
        time.sleep(0.1)
    if first_failure is None:
        return 0
    rank, code = first_failure
    log.error("Distributed training failed: rank %d (pid %d) %s first", rank, procs[rank].pid, _describe(code))
    others = [f"rank {r} {_describe(p.returncode)}" for r, p in enumerate(procs) if r != rank]
    if others:
        log.error("then: %s", "; ".join(others))
    return 1
