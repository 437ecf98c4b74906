"""`caffelike digits`: train BVLC's LeNet on the bundled MNIST digits and report its test accuracy.

It does what a Caffe user does by hand: write the digits into two LMDBs of PNG-encoded Datums (4,000 to train
on, 1,000 held out), then `caffe train --solver=lenet_solver.prototxt` with zoo/lenet's solver and net.  With
`--pretrained` it skips training and scores zoo/lenet's shipped weights through the deploy net instead.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from caffelike import zoo
from caffelike.core import runtime
from caffelike.data.bundled import mnist_5k, mnist_split
from caffelike.format.prototxt import read_net, read_solver
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("--out", default="digits_run", help="folder for the LMDBs, prototxts and snapshots")
    p.add_argument("--max_iter", type=int, default=0, help="training iterations (default: the solver's, 1000)")
    p.add_argument("--gpu", default="", help="GPU id to use; omit for the CPU")
    p.add_argument("--pretrained", action="store_true", help="score zoo/lenet's shipped weights, no training")


def write_digit_lmdb(path: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Digits as PNG-encoded Datums under DIGITS-style keys '%08d_%d' (index, label)."""
    from caffelike.data.dbwriter import LmdbWriter, image_to_datum

    with LmdbWriter(path) as db:
        for i, (image, label) in enumerate(zip(images, labels)):
            datum = image_to_datum(image, int(label), gray=True, encoded=True, encode_type="png")
            db.put(f"{i:08d}_{int(label)}".encode(), datum)
    log.info("Wrote %d digits to %s", len(images), path)


def prepare(out: str, max_iter: int) -> str:
    """The LMDBs and the solver/net prototxts in `out`; returns the solver file."""
    os.makedirs(out, exist_ok=True)
    images, labels = mnist_5k()
    train, held_out = mnist_split()
    sources = {}
    for name, mask in (("mnist_train_lmdb", train), ("mnist_test_lmdb", held_out)):
        path = os.path.abspath(os.path.join(out, name))
        if not os.path.exists(path):
            order = np.random.default_rng(1701).permutation(int(mask.sum()))  # mix the classes, as DIGITS does
            write_digit_lmdb(path, images[mask][order], labels[mask][order])
        sources[name] = path
    net = read_net(zoo.path("lenet", "lenet_train_test.prototxt"))
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.source = sources[layer.data_param.source]
    net_file = os.path.join(out, "lenet_train_test.prototxt")
    with open(net_file, "w") as f:
        f.write(str(net))
    solver = read_solver(zoo.path("lenet", "lenet_solver.prototxt"))
    solver.net = os.path.abspath(net_file)
    solver.snapshot_prefix = os.path.abspath(os.path.join(out, "lenet"))
    if max_iter:
        solver.max_iter = max_iter
        solver.snapshot = 0
        solver.test_interval = min(solver.test_interval, max_iter)
    solver_file = os.path.join(out, "lenet_solver.prototxt")
    with open(solver_file, "w") as f:
        f.write(str(solver))
    return solver_file


def train(args) -> int:
    from caffelike.cli.progress import solver_bar
    from caffelike.digits.curves import write_curves
    from caffelike.train.solver import Solver

    solver_file = prepare(args.out, args.max_iter)
    solver = Solver(solver_file, trust_python=True)  # files this command just wrote
    with solver_bar(solver):
        solver.solve()
    curves = f"{solver.param.snapshot_prefix}_curves.png"
    write_curves(solver, curves)
    accuracy = solver.history["test"]["accuracy"][-1][1]
    print(f"LeNet trained for {solver.iter} iterations on 4000 bundled MNIST digits ({args.out}).")
    print(f"test accuracy on the 1000 held-out digits: {accuracy:.4f}")
    print(f"weights: {solver.param.snapshot_prefix}_iter_{solver.iter}.caffemodel  curves: {curves}")
    return 0


def score_pretrained() -> int:
    from caffelike.net import Net

    model, weights = zoo.path("lenet", "lenet.prototxt"), zoo.path("lenet", "lenet_mnist5k.caffemodel")
    net = Net(model, caffe_pb2.TEST, weights=weights)
    images, labels = mnist_5k()
    _, held_out = mnist_split()
    images, labels = images[held_out], labels[held_out]
    net.blobs["data"].reshape(len(images), 1, 28, 28)
    net.blobs["data"].data[...] = images.astype(np.float32)[:, None] * 0.00390625
    predictions = net.forward()["prob"].argmax(axis=1)
    accuracy = float((predictions == labels).mean())
    sample = np.linspace(0, len(images) - 1, num=20).astype(int)  # spans every class
    print(f"LeNet ({model}) with {weights} on {len(images)} held-out bundled digits")
    print("sample labels:      " + " ".join(str(int(v)) for v in labels[sample]))
    print("sample predictions: " + " ".join(str(int(v)) for v in predictions[sample]))
    print(f"test accuracy: {accuracy:.4f}")
    return 0


def run(args) -> int:
    device = runtime.parse_gpu_flag(args.gpu)
    if device.type == "cuda":
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    return score_pretrained() if args.pretrained else train(args)
