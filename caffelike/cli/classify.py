"""`caffelike classify --model deploy.prototxt --weights w.caffemodel [--mean mean.binaryproto] [--labels
labels.txt] [--gpu N] [--visualize DIR] [--scale S] [--gray|--color] [--python-path DIR]
[--trust-model-dir] IMAGE`
`caffelike classify --network model.py --weights snapshot.pt --dataset DIR [--labels labels.txt] [--mean FILE]
[--mean-mode image|pixel|none] [--crop-size N] [--gpu N] [--visualize DIR] [--gray|--color] IMAGE`

DIGITS' "Test a single image" for a classification model: the image is read as Caffe reads images (gray or
BGR, chosen by the input's channel count unless --gray/--color says), squashed to the deploy net's input size,
the mean image subtracted, multiplied by --scale, run forward, and the top 5 of the last output printed with
their labels.  --visualize DIR also writes DIR/report.html, the page DIGITS shows with "Show visualizations and
statistics" (self-contained), and every picture in it as a PNG.  The preprocessing and the report are in
caffelike.digits.report.

With --network, a PyTorch model file (docs/torch_models.md) and one of its .pt snapshots: the dataset folder it
was trained on gives the input size, the classes, labels.txt and the mean, subtracted and centre-cropped as
training's validation pass did (caffelike.digits.torch_classify).  A log-probability output is exponentiated;
on a generic (regression) dataset the output vector is printed instead of a top 5.  The report's rows come from
forward hooks on every submodule (caffelike.digits.module_report).
"""
from __future__ import annotations

import contextlib
import logging
import os

from caffelike.cli.common import add_trust_flag, positive_int
from caffelike.core import runtime
from caffelike.digits import classify, report
from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", default="", help="the deploy net (prototxt) with one 4-D input blob")
    what.add_argument("--network", default="", help="a PyTorch model file defining network(params) (its code runs: "
                                                    "only name files you trust); needs --dataset")
    p.add_argument("--weights", required=True, help="the trained weights (.caffemodel; a .pt state_dict with "
                                                    "--network)")
    p.add_argument("--dataset", default="", help="with --network: the dataset folder the model was trained on")
    p.add_argument("--mean", default="", help="mean image (mean.binaryproto) to subtract; resized to the "
                                              "input size if it differs (with --network: instead of the dataset's)")
    p.add_argument("--mean-mode", default=None, choices=("image", "pixel", "none"),
                   help="with --network: subtract the mean image (default), its per-channel mean, or nothing, as "
                        "in training (train's --mean)")
    p.add_argument("--crop-size", type=positive_int, default=None,
                   help="with --network: centre crop (default: the model file's crop_size, as in training)")
    p.add_argument("--labels", default="", help="labels.txt, one class name per line")
    p.add_argument("--gpu", default="", help="GPU id to use; omit for the CPU")
    p.add_argument("--visualize", default="", metavar="DIR",
                   help="write DIR/report.html (activations, weights and statistics) and its pictures as PNGs")
    p.add_argument("--scale", type=float, default=None,
                   help="multiply the mean-subtracted pixels by this (transform_param.scale; e.g. 0.00390625 "
                        "for nets trained on pixel/256)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--gray", dest="color", action="store_false", default=None,
                      help="read the image as one gray channel (default: per the net's input channels)")
    mode.add_argument("--color", dest="color", action="store_true", help="read the image as 3 channels (BGR)")
    p.add_argument("--python-path", default="", metavar="DIR",
                   help="folder(s) (os.pathsep-separated) to search for Python-layer modules")
    add_trust_flag(p)
    p.add_argument("image", metavar="IMAGE", help="the image file to classify")


def run(args) -> int:
    from caffelike.layers.python import add_python_path
    from caffelike.net import Net

    if args.network:
        return run_network(args)
    given = [flag for flag, value in (("--dataset", args.dataset), ("--mean-mode", args.mean_mode),
                                      ("--crop-size", args.crop_size)) if value]
    if given:
        raise CaffeError(f"{', '.join(given)} go with --network model files, not with --model deploy nets")
    for folder in filter(None, args.python_path.split(os.pathsep)):
        add_python_path(folder)
    _select_device(args.gpu)
    net = Net(args.model, caffe_pb2.TEST, weights=args.weights, trust_python=args.trust_model_dir)

    name = classify.input_blob(net)
    _, c, h, w = net.blobs[name].data.shape
    color = classify.image_mode(c, args.color, name)
    pixels = classify.load_image(args.image, h, w, color)
    labels = classify.read_labels(args.labels) if args.labels else None
    top = classify.classify_pixels(net, pixels, args.mean or None, labels, args.scale)

    _print_top(f"Predictions for {args.image} (output '{list(net.outputs)[-1]}'):", top)
    if args.visualize:
        info = {"model": args.model, "weights": args.weights, "image": args.image, "mean": args.mean,
                "labels": args.labels, "scale": args.scale}
        path = report.write_report(net, args.visualize, top, pixels, info)
        print(f"report: {path}")
    return 0


def run_network(args) -> int:
    """classify --network: a PyTorch model file with a .pt snapshot, against its dataset folder."""
    from caffelike.digits import module_report, torch_classify

    given = [flag for flag, value in (("--scale", args.scale is not None), ("--python-path", args.python_path),
                                      ("--trust-model-dir", args.trust_model_dir)) if value]
    if given:
        raise CaffeError(f"{', '.join(given)} go with --model deploy nets; a model file does its own scaling in "
                         "its module")
    if not args.dataset:
        raise CaffeError("--network needs --dataset: the dataset folder the model was trained on (its input size, "
                         "classes, labels and mean)")
    device = _select_device(args.gpu)
    mean_mode = args.mean_mode or "image"
    prepared = torch_classify.prepare(args.network, args.weights, args.dataset, args.image,
                                      labels=args.labels or None, mean_file=args.mean or None, mean=mean_mode,
                                      crop_size=args.crop_size, color=args.color, device=device)
    recorder = module_report.Recorder(prepared.model) if args.visualize else contextlib.nullcontext()
    with recorder:
        output = torch_classify.forward(prepared)
    name = os.path.basename(args.network)
    top, values = [], None
    if prepared.classifies:
        top = torch_classify.predictions(prepared, output)
        _print_top(f"Predictions for {args.image} (output of {name}):", top)
    else:
        values = torch_classify.output_values(output).tolist()
        print(f"Output for {args.image} ({name}, {len(values)} values):")
        for i, v in enumerate(values):
            print(f"  [{i}] {v:.6g}")
    if args.visualize:
        rows, total = recorder.rows(prepared.x)
        info = {"network": args.network, "weights": args.weights, "dataset": args.dataset, "image": args.image,
                "mean": f"{mean_mode}{f' ({args.mean})' if args.mean and mean_mode != 'none' else ''}",
                "crop": prepared.crop or None, "labels": args.labels}
        path = report.write_page(args.visualize, rows, total, top, prepared.pixels, info, values)
        print(f"report: {path}")
    return 0


def _select_device(gpu: str):
    device = runtime.parse_gpu_flag(gpu)
    if device.type == "cuda":
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    else:
        runtime.set_mode_cpu()
    return device


def _print_top(header: str, top) -> None:
    print(header)
    width = max((len(p.label) for p in top), default=0)
    for rank, p in enumerate(top, 1):
        print(f"  {rank}. {p.label:<{width}}  {round(100 * p.probability, 2):6.2f}%")
