"""`caffelike tutorial occlusion --out DIR`: NVIDIA DIGITS' "Using Python layers" tutorial, end to end.

1. a DIGITS image-classification dataset from the bundled digits (or the full MNIST, or a folder of classes);
2. DIGITS' model files for plain LeNet and for LeNet with the BlankSquare Python layer (zoo/digits-lenet,
   zoo/digits-occlusion), trained the way DIGITS trains them (`caffe train` in the job folder);
3. both validation accuracies (the occluded model's is lower, as the tutorial observes) and their curves;
4. the "Test a single image" report of the occlusion model, where the `scaled` activation shows the zeroed square;
5. `summary.json` with the numbers and the paths (relative to DIR).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random

from caffelike import zoo
from caffelike.core import runtime
from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")

MODELS = {
    "plain_lenet": (("digits-lenet", "lenet.prototxt"), None),
    "occlusion_lenet": (("digits-occlusion", "lenet_blank_square.prototxt"),
                        ("digits-occlusion", "digits_python_layers.py")),
}


def add_arguments(p) -> None:
    p.add_argument("name", choices=["occlusion"], help="which tutorial (DIGITS' python-layer occlusion example)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per model (DIGITS' default is 30)")
    p.add_argument("--mnist-idx", default="", help="a folder with the MNIST IDX files, instead of the bundled digits")
    p.add_argument("--folder", default="", help="a folder of class sub-folders, instead of the bundled digits")
    p.add_argument("--max-per-class", type=int, default=0, help="use at most N images per class")
    p.add_argument("--seed", type=int, default=1701, help="seed for the dataset split, the fillers and the squares")
    p.add_argument("--gpu", default="", help="GPU id to use; omit for the CPU")


@contextlib.contextmanager
def working_directory(path: str):
    """DIGITS runs `caffe train` inside the job folder: relative snapshot prefixes land there."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def build_dataset(args, out: str) -> dict:
    from caffelike.cli.progress import ProgressBar
    from caffelike.digits.dataset import FolderSource, create_dataset, mnist_idx_source

    if args.mnist_idx:
        source = mnist_idx_source(args.mnist_idx)
    elif args.folder:
        source = FolderSource(args.folder)
    else:
        source = "bundled"
    with ProgressBar("Creating dataset", unit="img") as bar:
        return create_dataset(out, source, seed=args.seed, max_per_class=args.max_per_class or None,
                              progress=bar.advance_to)


def train_model(name: str, dataset: str, job: str, epochs: int, seed: int) -> dict:
    from caffelike.cli.progress import solver_bar
    from caffelike.digits.curves import write_curves
    from caffelike.digits.model_files import write_model_files
    from caffelike.train.solver import Solver

    network, python_layer = MODELS[name]
    info = write_model_files(zoo.path(*network), dataset, job, epochs=epochs, random_seed=seed,
                             python_layer=zoo.path(*python_layer) if python_layer else None)
    log.info("Training %s in %s (%d iterations)", name, job, info["max_iter"])
    random.seed(seed)  # BlankSquare draws its squares from Python's random, as in DIGITS
    with working_directory(job):
        solver = Solver(info["files"]["solver"], trust_python=True)  # the job folder and module are ours
        with solver_bar(solver, f"Training {name}"):
            solver.solve()
        write_curves(solver, "curves.png")
    accuracy = solver.history["test"].get("accuracy")
    if not accuracy:
        raise CaffeError(f"{name}: training produced no validation accuracy (empty validation set?)")
    return {"solver": solver, "val_accuracy": accuracy[-1][1], "weights":
            os.path.join(job, f"snapshot_iter_{solver.iter}.caffemodel"), "deploy": info["files"]["deploy"],
            "curves": os.path.join(job, "curves.png")}


def combined_curves(results: dict, path: str) -> None:
    from caffelike.digits.curves import plot_training

    train, test = {}, {}
    for name, r in results.items():
        history = r["solver"].history
        train[f"{name} loss"] = history["train"]["loss"]
        for output, series in history["test"].items():
            test[f"{name} val {output}"] = series
    plot_training(path, train, test, results["occlusion_lenet"]["solver"].history["lr"])


def first_record(db_path: str):
    """(key, uint8 CHW pixels) of the first Datum of an LMDB."""
    from caffelike.data.datum import DatumDB, datum_pixels, parse_datum

    db = DatumDB(db_path)
    try:
        key, value = db.peek()
        return key.decode(), datum_pixels(parse_datum(value, key.decode()))
    finally:
        db.close()


def run(args) -> int:
    from caffelike.digits.classify import classify_pixels
    from caffelike.digits.report import write_report
    from caffelike.net import Net
    from caffelike.proto import caffe_pb2

    device = runtime.parse_gpu_flag(args.gpu)
    if device.type == "cuda":
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    dataset = os.path.join(out, "dataset")
    if not os.path.exists(os.path.join(dataset, "labels.txt")):
        build_dataset(args, dataset)
    results = {name: train_model(name, dataset, os.path.join(out, name), args.epochs, args.seed)
               for name in MODELS}
    curves = os.path.join(out, "curves.png")
    combined_curves(results, curves)

    # "Test a single image" on the occlusion model, with visualizations and statistics: the first validation
    # image, read back from the dataset as the net saw it in training.
    key, pixels = first_record(os.path.join(dataset, "val_db"))
    image = f"val_db/{key}"
    occ = results["occlusion_lenet"]
    with working_directory(os.path.dirname(occ["deploy"])):  # where DIGITS keeps digits_python_layers.py
        net = Net(occ["deploy"], caffe_pb2.TEST, weights=occ["weights"], trust_python=True)
        top5 = classify_pixels(net, pixels, mean=os.path.join(dataset, "mean.binaryproto"),
                               labels=os.path.join(dataset, "labels.txt"))
    report = write_report(net, os.path.join(out, "report"), top5, pixels,
                          info={"model": "occlusion LeNet (BlankSquare Python layer)", "image": image})

    summary = {
        "plain_val_accuracy": results["plain_lenet"]["val_accuracy"],
        "occluded_val_accuracy": occ["val_accuracy"],
        "report_html": os.path.relpath(report, out),
        "curves_png": os.path.relpath(curves, out),
        "model_curves_png": {n: os.path.relpath(r["curves"], out) for n, r in results.items()},
        "weights": {n: os.path.relpath(r["weights"], out) for n, r in results.items()},
        "epochs": args.epochs,
        "classified_image": image,
        "top5": [[p.label, float(p.probability)] for p in top5],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"plain LeNet validation accuracy:     {summary['plain_val_accuracy']:.4f}")
    print(f"occlusion LeNet validation accuracy: {summary['occluded_val_accuracy']:.4f}"
          + ("  (lower, as the tutorial observes)" if summary["occluded_val_accuracy"] <
             summary["plain_val_accuracy"] else ""))
    print(f"curves: {curves}\nreport: {report}\nsummary: {os.path.join(out, 'summary.json')}")
    return 0
