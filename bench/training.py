"""A LeNet training run on the bundled digits, the way `caffelike digits` trains: zoo/lenet's solver and
train_test net over LMDBs of the 4,000 training digits (PNG-encoded Datums), with caffelike's Solver.

Reported: iterations/s and images/s of the solver (forward, backward, SGD update and the Data layer's prefetched
batches, all in), and beside it the Data layer's own images/s on the same LMDB, synchronous and prefetched
(bench/data_pipeline.py's measurement): training is data-bound only if the pipeline is not well ahead.
Testing, display and snapshots are turned off so only training is timed.
"""
from __future__ import annotations

import os
import tempfile
import time

import torch

from bench import data_pipeline, timing


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
            "pipeline_vs_training": ahead / (iterations * batch / elapsed)}
