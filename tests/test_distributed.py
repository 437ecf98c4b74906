"""Distributed training (issue 15) on CPU processes over gloo: Caffe's multi-GPU numbers, data sharding, pycaffe's
NCCL surface, the `--workers` command line, torchrun with two one-process "nodes", and a rank killed mid-run.

The reference for "2 processes x batch b" is one process with batch 2b reading an LMDB that holds, for each
iteration, rank 0's b records then rank 1's b records (the union of the shards, in the same order).
"""
from __future__ import annotations

import multiprocessing
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from caffelike.layers import data_shard
from caffelike.layers.python import add_python_path
from caffelike.proto import caffe_pb2

import caffelike as caffe
from caffelike.core import runtime
from caffelike.data.dbwriter import LmdbWriter
from caffelike.io import array_to_datum
from caffelike.train.distributed import DistributedError, free_port
from caffelike.train.snapshot import read_state

RECORDS, BATCH, ITERS = 32, 4, 20
SCALE_LAYER = '''
import numpy as np
import caffe


class Scale(caffe.Layer):
    """y = w * x with one learnable scalar w: a Python layer whose self.blobs must be averaged like any blob."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += float(np.sum(top[0].diff * bottom[0].data))
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[0]
'''
NET = '''name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.00390625 }}
        data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "scale" type: "Python" bottom: "data" top: "scaled" python_param {{ module: "dist_scale" layer: "Scale" }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "scaled" top: "ip1"
        inner_product_param {{ num_output: 8 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
'''
SOLVERS = {
    "SGD": 'type: "SGD" base_lr: 0.1 momentum: 0.9',
    "Adam": 'type: "Adam" base_lr: 0.01 momentum: 0.9 momentum2: 0.999',
}


def write_lmdb(path, images, labels, order):
    with LmdbWriter(str(path)) as db:
        for k, i in enumerate(order):
            db.put(f"{k:08d}".encode(), array_to_datum(images[i], int(labels[i])))


def write_solver(folder, name, kind, source, batch, max_iter=ITERS, extra=""):
    (folder / f"{name}_net.prototxt").write_text(NET.format(source=source, batch=batch))
    (folder / f"{name}.prototxt").write_text(
        f'net: "{name}_net.prototxt" {SOLVERS[kind]} weight_decay: 0.0005 lr_policy: "fixed" max_iter: {max_iter} '
        f'display: 5 random_seed: 7 snapshot_prefix: "{name}" solver_mode: CPU {extra}')
    return str(folder / f"{name}.prototxt")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The data (the sharded LMDB and the reference's reordered one), the Python layer, and the solvers."""
    folder = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (RECORDS, 1, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, RECORDS)
    write_lmdb(folder / "train_lmdb", images, labels, range(RECORDS))
    # Iteration k of 2 ranks: rank 0 reads records 2kb, 2kb+2, ...; rank 1 reads 2kb+1, ...
    union = [base + off for base in range(0, RECORDS, 2 * BATCH) for off in [*range(0, 2 * BATCH, 2),
                                                                                 *range(1, 2 * BATCH, 2)]]
    write_lmdb(folder / "union_lmdb", images, labels, union)
    (folder / "dist_scale.py").write_text(SCALE_LAYER)
    for kind in SOLVERS:
        write_solver(folder, f"two_{kind}", kind, "train_lmdb", BATCH)
        write_solver(folder, f"one_{kind}", kind, "union_lmdb", 2 * BATCH)
    return folder


def weights(net) -> dict[str, np.ndarray]:
    return {f"{name}/{i}": b.data.copy() for name, blobs in net.params.items() for i, b in enumerate(blobs)}


def relative_error(a: dict, b: dict) -> float:
    num = sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in a)
    den = sum(float(np.sum(a[k].astype(np.float64) ** 2)) for k in a)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def reference(workdir):
    """One process, batch 2b, the union of the shards: its weights after ITERS iterations, per solver type."""
    out = {}
    cwd = os.getcwd()
    os.chdir(workdir)
    add_python_path(str(workdir))
    try:
        for kind in SOLVERS:
            solver = caffe.get_solver(f"one_{kind}.prototxt")
            solver.step(ITERS)
            out[kind] = weights(solver.net)
    finally:
        os.chdir(cwd)
    return out


# -------------------------------------------------------------------------------------------------- sharding
@pytest.fixture
def solvers(monkeypatch):
    def set_share(rank, count):
        monkeypatch.setitem(runtime._solvers, "count", count)
        monkeypatch.setitem(runtime._solvers, "rank", rank)
    monkeypatch.setitem(runtime._solvers, "shard_seed", 5)
    return set_share


def labels_read(net, batches):
    out = []
    for _ in range(batches):
        net.forward()
        out.extend(int(v) for v in net.blobs["label"].data)
    return out


def data_net(source, phase, batch=2, layer="Data", extra=""):
    params = (f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}' if layer == "Data" else
              f'image_data_param {{ source: "{source}" batch_size: {batch} {extra} }}')
    text = f'layer {{ name: "d" type: "{layer}" top: "data" top: "label" {params} }}'
    from google.protobuf import text_format
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


@pytest.fixture
def seven_records(tmp_path):
    images = np.zeros((7, 1, 2, 2), np.uint8)
    write_lmdb(tmp_path / "seven", images, np.arange(7), range(7))
    return str(tmp_path / "seven")


def test_train_data_keeps_every_nth_record_of_the_running_index(seven_records, solvers):
    # 7 records, 2 ranks: the running index decides, so the shares rotate from one pass to the next (Caffe's).
    stream = [i % 7 for i in range(28)]
    for rank in range(2):
        solvers(rank, 2)
        assert labels_read(data_net(seven_records, caffe.TRAIN), 7) == stream[rank::2][:14]
    solvers(1, 2)
    assert labels_read(data_net(seven_records, caffe.TEST), 2) == [0, 1, 2, 3]  # TEST is never split


@pytest.mark.parametrize("prefetch_first", [False, True])
def test_skip_batches_under_sharding_continues_where_reading_would_be(seven_records, solvers, prefetch_first):
    solvers(1, 3)
    expected = labels_read(data_net(seven_records, caffe.TRAIN), 6)
    net = data_net(seven_records, caffe.TRAIN)
    if prefetch_first:  # (skipping through the prefetcher's plans rather than the database cursor)
        assert labels_read(net, 1) == expected[:2]
        net.layer_list[0].skip_batches(3)
        assert labels_read(net, 2) == expected[8:12]
    else:
        net.layer_list[0].skip_batches(4)
        assert labels_read(net, 2) == expected[8:12]
    assert data_shard.records_to_advance(5, 4, 1, 3) == 2 + 3 * 3 + 1


def test_image_data_shards_are_disjoint_with_a_shared_shuffle(tmp_path, solvers):
    from PIL import Image

    lines = []
    for i in range(10):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(f"{tmp_path}/{i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines))
    seen = []
    for rank in range(2):
        solvers(rank, 2)
        runtime.set_random_seed(100 + rank)  # the ranks' own generators differ, as Caffe seeds them
        net = data_net(str(tmp_path / "list.txt"), caffe.TRAIN, batch=1, layer="ImageData",
                       extra="shuffle: true is_color: false")
        seen.append(labels_read(net, 5))
    assert sorted(seen[0] + seen[1]) == list(range(10))  # one pass shared out: each image once


def test_hdf5_rows_are_sharded(tmp_path, solvers):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.arange(6, dtype=np.float32).reshape(6, 1)
        f["label"] = np.arange(6, dtype=np.float32)
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))
    from google.protobuf import text_format
    text = (f'layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: '
            f'"{tmp_path}/list.txt" batch_size: 2 }} }}')
    solvers(1, 2)
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TRAIN)
    assert labels_read(net, 3) == [1, 3, 5, 1, 3, 5]


# ------------------------------------------------------------------------------- pycaffe's NCCL, two processes
def nccl_worker(rank, count, uid, folder, prefix, options):
    """BVLC's python/train.py, one worker (run in a forked process).  options: iters, sync_bn, restore (a
    .solverstate every rank resumes from), stop_at (rank 1 alone sees a Ctrl-C at that iteration)."""
    torch.set_num_threads(1)  # (a forked child must not enter the parent's OpenMP pool)
    os.chdir(folder)
    folder = pathlib.Path(folder)
    add_python_path(str(folder))
    caffe.set_mode_cpu()
    caffe.set_solver_count(count)
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.get_solver(f"{prefix}.prototxt")
    if options.get("restore"):
        solver.restore(options["restore"])
    nccl = caffe.NCCL(solver, uid, sync_bn=options.get("sync_bn", False))
    nccl.bcast()
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    if rank == 1 and "stop_at" in options:
        solver.requested_action = lambda: "stop" if solver.iter == options["stop_at"] else None
    if rank == 1 and "fail_at" in options:
        def fail(s):
            if s.iter == options["fail_at"]:
                raise RuntimeError("boom in rank 1's hook")
        solver.add_hook("on_forward", fail)
    try:
        solver.step(options.get("iters", solver.param.max_iter) - solver.iter)
    except Exception as e:  # noqa: BLE001 - as `caffelike train` does: the failing rank tells the others why
        if not isinstance(e, DistributedError):
            nccl.group.report_failure(f"{type(e).__name__}: {e}")
        (folder / f"{prefix}_error{rank}.txt").write_text(str(e))
        raise SystemExit(3) from None
    if options.get("snapshot"):
        solver._snapshot_shared()
    np.savez(f"{prefix}_rank{rank}.npz", iter=solver.iter, **weights(solver.net))
    torch.distributed.destroy_process_group()


def forked_weights(folder, prefix, codes=None, **options):
    run_forked(nccl_worker, 2, caffe.NCCL.new_uid(), str(folder), prefix, options, codes=codes)
    if codes:
        return None
    return [dict(np.load(folder / f"{prefix}_rank{r}.npz")) for r in range(2)]


def run_forked(target, count, *args, timeout=180, codes=None):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=target, args=(rank, count, *args)) for rank in range(count)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == (codes or [0] * count)


@pytest.mark.parametrize("kind", list(SOLVERS))
def test_two_processes_equal_one_with_twice_the_batch(workdir, reference, kind):
    ranks = forked_weights(workdir, f"two_{kind}")
    for name in ranks[0]:  # every rank applied the same updates: bitwise the same weights
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    assert ranks[0]["scale/0"][0] != 1.0  # the Python layer's blob was trained
    assert relative_error(reference[kind], without_iter(ranks[0])) <= 1e-5


def without_iter(values: dict) -> dict:
    return {k: v for k, v in values.items() if k != "iter"}


def test_resuming_on_every_rank_continues_the_same_run(workdir, reference):
    first = forked_weights(workdir, "two_SGD", iters=10, snapshot=True)
    assert int(first[0]["iter"]) == 10 and (workdir / "two_SGD_iter_10.solverstate").exists()
    resumed = forked_weights(workdir, "two_SGD", restore="two_SGD_iter_10.solverstate")
    assert relative_error(reference["SGD"], without_iter(resumed[0])) <= 1e-5


def test_a_signal_on_one_rank_stops_every_rank_after_the_same_iteration(workdir):
    ranks = forked_weights(workdir, "two_SGD", stop_at=6)
    assert int(ranks[0]["iter"]) == int(ranks[1]["iter"]) == 7  # agreed at the all-reduce of iteration 6


def test_sync_bn_averages_batchnorm_statistics(workdir):
    text = (workdir / "two_SGD_net.prototxt").read_text().replace(
        'layer { name: "relu"', 'layer { name: "bn" type: "BatchNorm" bottom: "ip1" top: "ip1" }\nlayer { name: "relu"')
    (workdir / "bn_net.prototxt").write_text(text)
    (workdir / "bn.prototxt").write_text((workdir / "two_SGD.prototxt").read_text().replace("two_SGD", "bn"))
    apart = forked_weights(workdir, "bn", iters=3)
    assert not np.array_equal(apart[0]["bn/0"], apart[1]["bn/0"])  # Caffe's: per device
    synced = forked_weights(workdir, "bn", iters=3, sync_bn=True)
    for name in synced[0]:
        np.testing.assert_array_equal(synced[0][name], synced[1][name], err_msg=name)


def test_an_error_on_one_rank_is_named_on_the_others(workdir):
    forked_weights(workdir, "two_SGD", codes=[3, 3], fail_at=4, iters=10)
    assert (workdir / "two_SGD_error1.txt").read_text() == "boom in rank 1's hook"
    error = (workdir / "two_SGD_error0.txt").read_text()
    assert error.startswith("rank 0 of 2: the all-reduce of the gradients at iteration 4 failed")
    assert "rank 1 failed: RuntimeError: boom in rank 1's hook" in error


def test_launch_plans(monkeypatch):
    from argparse import Namespace

    from caffelike.cli import launch
    from caffelike.errors import CaffeError

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch.plan(Namespace(gpu="", workers=3)) == ("spawn", 3, [])
    assert launch.plan(Namespace(gpu="", workers=1)) == ("single", 1, [])
    if not torch.cuda.is_available():
        with pytest.raises(CaffeError, match="no CUDA device"):
            launch.plan(Namespace(gpu="0,1", workers=0))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.plan(Namespace(gpu="", workers=0)) == ("worker", 2, [])
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(CaffeError, match="outside"):
        launch.plan(Namespace(gpu="", workers=0))


def test_other_ranks_log_only_warnings_prefixed_with_their_rank():
    import logging

    from caffelike.train.distributed import Distributed

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    logger = logging.getLogger("caffelike")
    level, filters, keep = logger.level, list(logger.filters), Keep()
    logger.addHandler(keep)
    group = Distributed(1, 2, torch.device("cpu"))
    try:
        group.quiet_log()
        logger.info("Iteration 5, loss = 1")
        logger.warning("something odd")
        assert keep.lines == ["[rank 1] something odd"]
    finally:
        group.close()  # the process goes on: its log is given back as it was
        logger.removeHandler(keep)
    assert (logger.level, logger.filters, keep.filters) == (level, filters, [])


# ------------------------------------------------------------------------------------------ the command line
def caffelike_cmd(*args):
    return [sys.executable, "-m", "caffelike", "train", *args]


def final_weights(folder, prefix, iters=ITERS):
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        net = caffe.Net(f"{prefix}_net.prototxt", caffe.TEST, weights=f"{prefix}_iter_{iters}.caffemodel")
        return weights(net)
    finally:
        os.chdir(cwd)


def test_workers_flag_trains_like_one_process_with_the_union(workdir, reference):
    run = subprocess.run(caffelike_cmd("--solver", "two_SGD.prototxt", "--workers", "2", "--python-path", "."),
                         cwd=workdir, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert relative_error(reference["SGD"], final_weights(workdir, "two_SGD")) <= 1e-5
    log = run.stderr
    assert log.count("Optimization Done.") == 2  # one log, rank 0's (its solver's line and the command's)
    assert "rank 0 of 2 reads the records whose running index i has i % 2 == 0" in log
    assert "Iteration 5 (" in log and "[rank 1]" not in log  # rank 1 had nothing to warn about


def test_torchrun_with_two_single_process_nodes(workdir, reference):
    # torchrun --nnodes 2 --nproc-per-node 1 twice on this machine (static rendezvous on 127.0.0.1): its agents
    # set RANK, WORLD_SIZE, MASTER_ADDR/PORT... and serve the store; `-m caffelike train` runs in each worker.
    port = free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "caffelike", "train", "--solver", "two_Adam.prototxt", "--python-path", "."]
        procs.append(subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert relative_error(reference["Adam"], final_weights(workdir, "two_Adam")) <= 1e-5
    assert "Optimization Done." in outs[0] and "Optimization Done." not in outs[1]  # rank 0 (node 0) logs


def child_pids(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=True).stdout
    return [int(x) for x in out.split()]


def rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    return int(env[b"RANK"])


def test_killing_a_rank_ends_the_job_and_the_last_snapshot_loads(workdir):
    solver = write_solver(workdir, "long", "SGD", "train_lmdb", BATCH, max_iter=10**7, extra="snapshot: 10")
    log_path = workdir / "long.log"  # (a file, not a pipe: nobody reads the log while the job runs)
    with open(log_path, "w") as log_file:
        launcher = subprocess.Popen(caffelike_cmd("--solver", solver, "--workers", "2", "--python-path", ".",
                                                  "--dist-timeout", "30"),
                                    cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "long_iter_20.solverstate").exists():
            assert launcher.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        victim = next(pid for pid in child_pids(launcher.pid) if rank_of(pid) == 1)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if launcher.poll() is None:
            for pid in child_pids(launcher.pid):
                os.kill(pid, signal.SIGKILL)
            launcher.kill()
            launcher.wait()
    err = log_path.read_text()
    assert launcher.returncode != 0
    assert "rank 1 (pid" in err and "killed by SIGKILL" in err, err[-3000:]  # the launcher names the rank
    # Rank 0's next collective (an all-reduce, or the barrier after a snapshot) fails and names the silent rank.
    assert re.search(r"rank 0 of 2: the (all-reduce of the gradients|barrier after the snapshot) at iteration \d+ "
                     r"failed .*rank 1 did not answer: died or hung", err), err[-3000:]
    states = sorted(workdir.glob("long_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    it, learned, _, history = read_state(str(states[-1]))
    assert it % 10 == 0 and it >= 20 and len(history) == 5  # (momentum: one blob per learnable blob)
    cwd = os.getcwd()
    os.chdir(workdir)
    add_python_path(str(workdir))
    try:
        caffe.Net("long_net.prototxt", caffe.TEST, weights=learned)  # the last snapshot is whole
    finally:
        os.chdir(cwd)
