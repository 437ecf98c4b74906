"""Training runs with caffelike's Solver, data layer included: LeNet on the bundled digits, the way `caffelike
digits` trains (zoo/lenet's solver and train_test net over LMDBs of the 4,000 training digits, PNG-encoded
Datums), and CIFAR-10 quick over an LMDB of raw 3x32x32 Datums (`prepare_cifar`).

Reported: iterations/s and images/s of the solver (forward, backward, SGD update and the Data layer's prefetched
batches, all in), and beside it the Data layer's own images/s on the same LMDB, synchronous and prefetched
(bench/data_pipeline.py's measurement): training is data-bound only if the pipeline is not well ahead.
Testing, display and snapshots are turned off so only training is timed.

End to end against forward+backward alone: interleaved turns of one solver iteration (`Solver.step(1)`: the
Data layer's batch, forward, backward, update) and of forward+backward of the same net with its Data layer
replaced by an Input layer holding a batch already in memory (same weights, shared).  Their ratio is what the
data pipeline and the solver add to the arithmetic.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from bench import data_pipeline, timing


def in_memory_twin(solver):
    """The solver's train net with each Data layer replaced by an Input layer of the same tops and shapes, holding
    the last batch the Data layer produced, sharing the solver net's weights."""
    from caffelike.proto import caffe_pb2

    import caffelike
    from caffelike.format.prototxt import read_net

    param = read_net(solver.param.net)
    for layer in param.layer:
        if layer.type == "Data":
            layer.type = "Input"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            for top in layer.top:
                layer.input_param.shape.add().dim.extend(solver.net.blobs[top].shape)
    twin = caffelike.Net(param, caffe_pb2.TRAIN)
    twin.share_with(solver.net)
    for name in twin.inputs:
        twin.blobs[name].set_tensor(solver.net.blobs[name].tensor.detach().clone())
    return twin


def end_to_end(solver, repeat: int, device: str) -> dict:
    """Interleaved: one solver iteration against forward+backward of the in-memory twin."""
    twin = in_memory_twin(solver)

    def fwd_bwd():
        twin.clear_param_diffs()
        twin.loss(twin.run()).backward()

    t = timing.interleaved({"iteration": lambda: solver.step(1), "fwd+bwd": fwd_bwd}, repeat, 2, device)
    return {"iteration_ms": t["iteration"].median_ms, "fwd_bwd_ms": t["fwd+bwd"].median_ms,
            "iteration_vs_fwd_bwd": t["iteration"].median_ms / t["fwd+bwd"].median_ms,
            "quartiles_ms": {name: [v.q1_ms, v.q3_ms] for name, v in t.items()}}


def prepare_cifar(folder: str, max_iter: int) -> str:
    """zoo/cifar10_quick's train_test net and solver over an LMDB shaped like CIFAR-10's: raw (not encoded)
    3x32x32 uint8 Datums, as BVLC's convert_cifar_data writes, with a mean.binaryproto.  No CIFAR-10 is
    bundled, so the images are the 4,000 training digits padded to 32x32 and tinted per channel: the same
    bytes per record and the same transform (mean_file subtraction) as the real data set.  Returns the solver."""
    import numpy as np

    from caffelike import zoo
    from caffelike.data.bundled import mnist_5k, mnist_split
    from caffelike.data.datum import array_to_datum
    from caffelike.data.dbwriter import LmdbWriter
    from caffelike.format.prototxt import read_net, read_solver
    from caffelike.io import array_to_blobproto

    images, labels = mnist_5k()
    train, _ = mnist_split()
    digits = np.asarray(images[train], dtype=np.float32).reshape(-1, 28, 28)
    tint = np.array([1.0, 0.6, 0.3], dtype=np.float32)[None, :, None, None]
    pixels = np.zeros((len(digits), 3, 32, 32), dtype=np.uint8)
    pixels[:, :, 2:30, 2:30] = (digits[:, None] * tint).astype(np.uint8)
    source, mean_file = os.path.join(folder, "cifar_train_lmdb"), os.path.join(folder, "mean.binaryproto")
    with LmdbWriter(source) as db:
        for i, (image, label) in enumerate(zip(pixels, labels[train])):
            db.put(f"{i:05d}".encode(), array_to_datum(image, int(label)))
    with open(mean_file, "wb") as f:
        f.write(array_to_blobproto(pixels.mean(axis=0, dtype=np.float64)[None].astype(np.float32))
                .SerializeToString())
    net = read_net(zoo.path("cifar10_quick", "cifar10_quick_train_test.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = source
            layer.transform_param.mean_file = mean_file
    net_file = os.path.join(folder, "cifar10_quick_train_test.prototxt")
    with open(net_file, "w") as f:
        f.write(str(net))
    solver = read_solver(zoo.path("cifar10_quick", "cifar10_quick_solver.prototxt"))
    solver.net, solver.max_iter, solver.random_seed = net_file, max_iter, 1701
    solver.snapshot_prefix = os.path.join(folder, "cifar10_quick")
    solver.solver_mode = solver.CPU
    solver_file = os.path.join(folder, "cifar10_quick_solver.prototxt")
    with open(solver_file, "w") as f:
        f.write(str(solver))
    return solver_file


def prepare_lenet(folder: str, max_iter: int) -> str:
    from caffelike.cli.digits import prepare

    return prepare(folder, max_iter)


NETS = {
    "lenet": (("zoo/lenet lenet_train_test.prototxt + lenet_solver.prototxt (SGD, inv lr), the bundled digits "
               "(PNG-encoded Datums)"), prepare_lenet),
    "cifar10_quick": (("zoo/cifar10_quick train_test + solver (SGD, fixed lr, mean_file), raw 3x32x32 Datums "
                       "made from the bundled digits"), prepare_cifar),
}


def run(iterations: int, warmup: int = 5, pipeline_batches: int = 50, device: str = "cpu", net: str = "lenet",
        processes: int | None = None) -> dict:
    """Train `net` (a key of NETS) for warmup + iterations, timing the iterations; `processes` sets the data
    layers' worker processes (caffelike.data.build_pool.PROCESSES: None for the default, 0 for threads only)."""
    from caffelike.core import runtime
    from caffelike.data import build_pool
    from caffelike.format.prototxt import read_solver
    from caffelike.train.solver import Solver

    described, prepare = NETS[net]
    kept, build_pool.PROCESSES = build_pool.PROCESSES, processes
    with tempfile.TemporaryDirectory(prefix="caffelike-bench-training-") as folder:
        try:
            start = time.perf_counter()
            solver_file = prepare(folder, warmup + iterations)
            prepare_s = time.perf_counter() - start
            param = read_solver(solver_file)
            param.display = param.snapshot = param.test_interval = 0
            param.ClearField("test_iter")
            param.snapshot_after_train = False
            if device.startswith("cuda"):
                runtime.set_device(torch.device(device).index or 0)
                runtime.set_mode_gpu()
            solver = Solver(param, solver_file=solver_file)
            data_layer = next(layer for layer in solver.net.layer_list if layer.type == "Data")
            try:
                solver.step(warmup)  # threads and processes start, first batches are read
                _, elapsed = timing.timed(lambda: solver.step(iterations), device)
                batch = int(solver.net.blobs["data"].tensor.shape[0])
                loss = solver.smoothed_loss
                used = data_layer._pool.processes if data_layer._pool is not None else 0
                versus = end_to_end(solver, iterations, device)
            finally:
                for layer in solver.net.layer_list:
                    if hasattr(layer, "close"):
                        layer.close()
            sync = data_pipeline.images_per_second(batch, pipeline_batches, 0, layer=data_layer.param)
            ahead = data_pipeline.images_per_second(batch, pipeline_batches, 4, layer=data_layer.param)
        finally:
            build_pool.PROCESSES = kept
    return {"net": net, "described": described, "batch": batch, "data_processes": used,
            "iterations": iterations, "seconds": elapsed, "iters_per_s": iterations / elapsed,
            "images_per_s": iterations * batch / elapsed, "smoothed_loss": loss, "lmdb_prepare_s": prepare_s,
            "pipeline_sync_images_per_s": sync, "pipeline_prefetch_images_per_s": ahead,
            "pipeline_vs_training": ahead / (iterations * batch / elapsed), **versus}
