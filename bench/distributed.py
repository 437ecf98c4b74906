"""Data-parallel training throughput: LeNet on the bundled digits (zoo/lenet, batch 64 per process, as
`caffelike digits` trains it) with 1 process, then with N CPU processes over gloo (docs/distributed.md).

    python bench/distributed.py [--procs 1,2] [--iters 40] [--warmup 5] [--threads-per-proc T]

Each configuration runs in fresh processes (multiprocessing's spawn), joined through caffe.NCCL as BVLC's
python/train.py would, and times `solver.step(iters)` between two barriers after `warmup` iterations; testing,
display and snapshots are off.  Reported: images/s over all processes (N x batch x iters / seconds) and the
scaling efficiency, images/s with N / (N x images/s with 1).  Each process has one intra-op thread by default
(one core each, so N processes can use N cores: the ideal efficiency is 1); `--threads-per-proc 0` shares the
cores out instead (cores / N threads each).  On a machine shared with other work, the figures move a lot: run
it twice.  Nothing here is a test.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `caffelike` importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker(rank: int, count: int, uid: str, solver_file: str, iters: int, warmup: int, threads: int, results):
    import torch

    import caffelike as caffe
    from caffelike.format.prototxt import read_solver

    torch.set_num_threads(threads)
    caffe.set_mode_cpu()
    caffe.set_solver_count(count)
    caffe.set_solver_rank(rank)
    param = read_solver(solver_file)
    param.display = param.snapshot = param.test_interval = 0
    param.ClearField("test_iter")
    param.snapshot_after_train = False
    param.max_iter = warmup + iters
    solver = caffe.Solver(param, solver_file=solver_file)
    nccl = None
    if count > 1:
        nccl = caffe.NCCL(solver, uid)
        nccl.bcast()
        solver.add_callback(nccl)
        reduce, spent = nccl.group.reduce_gradients, [0.0]

        def timed_reduce(s):  # the time a rank spends in the gradient all-reduce (waiting for the others too)
            t = time.perf_counter()
            reduce(s)
            spent[0] += time.perf_counter() - t

        nccl.group.reduce_gradients = timed_reduce
    solver.step(warmup)  # prefetch threads started, first batches read
    if nccl is not None:
        nccl.group.barrier("the warm-up")
    if nccl is not None:
        spent[0] = 0.0
    start = time.perf_counter()
    solver.step(iters)
    if nccl is not None:
        nccl.group.barrier("the timed iterations")
    elapsed = time.perf_counter() - start
    if rank == 0:
        batch = int(solver.net.blobs["data"].tensor.shape[0])
        results.put({"procs": count, "threads": threads, "seconds": elapsed,
                     "images_per_s": count * batch * iters / elapsed, "batch": batch,
                     "allreduce_ms": 1000 * spent[0] / iters if nccl is not None else 0.0})
    if nccl is not None:
        torch.distributed.destroy_process_group()


def measure(count: int, solver_file: str, iters: int, warmup: int, threads: int) -> dict:
    import caffelike as caffe

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    uid = caffe.NCCL.new_uid()
    procs = [ctx.Process(target=worker, args=(r, count, uid, solver_file, iters, warmup, threads, results))
             for r in range(count)]
    for p in procs:
        p.start()
    out = results.get(timeout=1800)
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a worker failed: exit codes {[p.exitcode for p in procs]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", default="1,2", help="process counts to compare (the first is the baseline)")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads-per-proc", type=int, default=1, help="intra-op threads per process (0: cores / "
                                                                         "processes)")
    args = parser.parse_args()
    from caffelike.cli.digits import prepare

    counts = [int(c) for c in args.procs.split(",")]
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="caffelike-bench-dist-") as folder:
        solver_file = prepare(folder, args.warmup + args.iters)
        for count in counts:
            threads = args.threads_per_proc or max(1, cores // count)
            rows.append(measure(count, solver_file, args.iters, args.warmup, threads))
    base = rows[0]["images_per_s"] / rows[0]["procs"]
    print(f"LeNet, batch {rows[0]['batch']} per process, {args.iters} iterations, {cores} cores")
    print(f"{'processes':>9} {'threads each':>12} {'images/s':>10} {'vs first':>9} {'efficiency':>10} "
          f"{'all-reduce ms/iter':>18}")
    for r in rows:
        print(f"{r['procs']:>9} {r['threads']:>12} {r['images_per_s']:>10.0f} "
              f"{r['images_per_s'] / rows[0]['images_per_s']:>8.2f}x {r['images_per_s'] / (r['procs'] * base):>10.2f} "
              f"{r['allreduce_ms']:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
