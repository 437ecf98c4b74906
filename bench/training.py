"""A LeNet training run on the bundled digits, the way `caffelike digits` trains: zoo/lenet's solver and
train_test net over LMDBs of the 4,000 training digits (PNG-encoded Datums), with caffelike's Solver.

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


def run(iterations: int, warmup: int = 5, pipeline_batches: int = 50, device: str = "cpu") -> dict:
    from caffelike.cli.digits import prepare
    from caffelike.core import runtime
    from caffelike.format.prototxt import read_solver
    from caffelike.train.solver import Solver

    with tempfile.TemporaryDirectory(prefix="caffelike-bench-digits-") as folder:
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
        try:
            solver.step(warmup)  # threads start, first batches are read
            _, elapsed = timing.timed(lambda: solver.step(iterations), device)
            batch = int(solver.net.blobs["data"].tensor.shape[0])
            loss = solver.smoothed_loss
            versus = end_to_end(solver, iterations, device)
        finally:
            for layer in solver.net.layer_list:
                if hasattr(layer, "close"):
                    layer.close()
        source = os.path.join(folder, "mnist_train_lmdb")
        sync = data_pipeline.images_per_second(batch, pipeline_batches, 0, source)
        ahead = data_pipeline.images_per_second(batch, pipeline_batches, 4, source)
    return {"net": "zoo/lenet lenet_train_test.prototxt + lenet_solver.prototxt (SGD, inv lr)", "batch": batch,
            "iterations": iterations, "seconds": elapsed, "iters_per_s": iterations / elapsed,
            "images_per_s": iterations * batch / elapsed, "smoothed_loss": loss, "lmdb_prepare_s": prepare_s,
            "pipeline_sync_images_per_s": sync, "pipeline_prefetch_images_per_s": ahead,
            "pipeline_vs_training": ahead / (iterations * batch / elapsed), **versus}
