"""Throughput of the Data layer on the fixture MNIST LMDB (PNG-encoded Datums): decode + DataTransformer
(scale 0.00390625, as in BVLC's lenet_train_test), batch 64, read synchronously (prefetch: 0) and prefetched by
worker threads (prefetch: 4), which hand the building to worker processes by default
(caffelike.data.build_pool; CAFFELIKE_DATA_PROCESSES=0 keeps it on the threads).

    python bench/data_pipeline.py [--batches 100] [--batch-size 64] [--workers N]

Prints images/s for each mode, the per-image cost of each stage (Datum parse, PNG decode, transform), what a
batch's trip back from a worker process costs the training process (shared memory against the pipe), and the
images/s that LeNet training on the same LMDB consumes (SGD, batch 64, CPU), measured in the same run: the
pipeline keeps up when it produces faster than training consumes.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import time

import numpy as np
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

import caffelike as caffe
from caffelike.data import build_pool, decoded_cache, prefetch
from caffelike.data.datum import DatumDB, datum_pixels, parse_datum
from caffelike.data.transformer import DataTransformer

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "data" / "mnist_train_lmdb"


def data_layer(batch_size: int, depth: int, source=SOURCE, layer=None):
    """A TRAIN-phase Data layer: LeNet's over `source`, or a copy of the LayerParameter `layer` (bench/training.py
    measures the training net's own), with `depth` batches prefetched."""
    if layer is None:
        text = (f'layer {{ name: "mnist" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.00390625 }} '
                f'data_param {{ source: "{source}" batch_size: {batch_size} backend: LMDB }} }}')
        param = text_format.Parse(text, caffe_pb2.NetParameter())
    else:
        param = caffe_pb2.NetParameter()
        param.layer.add().CopyFrom(layer)
        param.layer[0].ClearField("include")
    param.layer[0].data_param.prefetch = depth
    net = caffe.Net(param, caffe.TRAIN)
    return net.layer_list[0]


def images_per_second(batch_size: int, batches: int, depth: int, source=SOURCE, layer=None) -> float:
    """Images/s the Data layer (see `data_layer`) delivers."""
    layer = data_layer(batch_size, depth, source, layer)
    with torch.no_grad():
        layer()  # start-up (threads, first batches) is not what we measure
        start = time.perf_counter()
        for _ in range(batches):
            layer()
        elapsed = time.perf_counter() - start
    layer.close()
    return batches * batch_size / elapsed


def stage_costs(n: int = 2000) -> dict[str, float]:
    """Microseconds per image of each stage, single-threaded."""
    db = DatumDB(str(SOURCE))
    records = db.read(n)
    t = DataTransformer(caffe_pb2.TransformationParameter(scale=0.00390625), caffe.TRAIN)
    t0 = time.perf_counter()
    datums = [parse_datum(v) for _, v in records]
    t1 = time.perf_counter()
    pixels = [datum_pixels(d) for d in datums]
    t2 = time.perf_counter()
    out = np.empty((1, 28, 28), np.float32)
    for p in pixels:
        t(p, out=out)
    t3 = time.perf_counter()
    db.close()
    return {"parse": (t1 - t0) / n * 1e6, "decode": (t2 - t1) / n * 1e6, "transform": (t3 - t2) / n * 1e6}


def training_images_per_second(iterations: int = 40) -> float:
    """Images/s consumed by `caffe train`-style LeNet training (the sgd_step trace's net and solver)."""
    from caffelike.format.prototxt import read_solver
    from caffelike.train.solver import Solver

    folder = SOURCE.parents[1] / "traces" / "sgd_step"
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        param = read_solver("solver.prototxt")
        param.display = param.snapshot = param.test_interval = 0
        param.ClearField("test_iter")
        param.snapshot_after_train = False
        solver = Solver(param)
        solver.step(5)  # warm-up
        start = time.perf_counter()
        solver.step(iterations)
        elapsed = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    return iterations * 64 / elapsed


class _Constant:
    """A worker-process builder that only returns a batch of `shape` (and its labels): what a batch's trip back
    costs, without the building."""

    def __init__(self, shape):
        self.batch = np.ones(shape, np.float32), np.zeros(shape[0], np.float32)

    def __call__(self, job):
        return self.batch


def return_trip_cpu_us(shape, through_slots: bool, batches: int = 300) -> float:
    """CPU time of the training process (all its threads) per batch of `shape` handed back by a worker process,
    through a shared-memory slot or pickled through the pipe."""
    slot_bytes = (int(np.prod(shape)) + shape[0]) * 4 if through_slots else None
    pool = build_pool.BuildPool(_Constant(shape), 1, "bench", slot_bytes=slot_bytes)
    try:
        for _ in range(20):
            pool.run(None)
        start = time.process_time()
        for _ in range(batches):
            pool.run(None)
        return (time.process_time() - start) / batches * 1e6
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="prefetch worker threads (default: "
                    "caffelike.data.prefetch.default_workers, which gives 1 for 28x28 images)")
    args = ap.parse_args()
    prefetch.WORKERS = args.workers
    torch.set_num_threads(1)
    # Every record decoded, as in a first epoch: the fixture LMDB's 1,000 records would otherwise be served
    # from the decoded-image cache after the first pass (caffelike.data.decoded_cache).
    os.environ[decoded_cache.ENV] = "0"
    costs = stage_costs()
    print(f"per image: parse {costs['parse']:.1f} us, PNG decode {costs['decode']:.1f} us, "
          f"transform {costs['transform']:.1f} us")
    sync = images_per_second(args.batch_size, args.batches, 0)
    print(f"synchronous (prefetch: 0): {sync:10.0f} images/s")
    ahead = images_per_second(args.batch_size, args.batches, 4)
    processes = build_pool.processes_for(True, 4, 28 * 28)
    print(f"prefetched  (prefetch: 4, {prefetch.default_workers(4, 28 * 28)} worker threads driving {processes} "
          f"worker processes): {ahead:10.0f} images/s ({ahead / sync:.2f}x)")
    for name, shape in (("LeNet b64", (64, 1, 28, 28)), ("CIFAR-10 b100", (100, 3, 32, 32))):
        pipe, slot = (return_trip_cpu_us(shape, through) for through in (False, True))
        print(f"a {name} batch back from a worker process costs the training process {slot:.0f} us of CPU "
              f"through shared memory, {pipe:.0f} us pickled through the pipe")
    consumed = training_images_per_second()
    print(f"LeNet training consumes:   {consumed:10.0f} images/s -> the prefetched pipeline runs at "
          f"{ahead / consumed:.1f}x what training needs")


if __name__ == "__main__":
    main()
