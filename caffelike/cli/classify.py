"""`caffelike classify --model deploy.prototxt --weights w.caffemodel [--mean mean.binaryproto] [--labels
labels.txt] [--gpu N] [--visualize DIR] [--scale S] [--gray|--color] [--python-path DIR]
[--trust-model-dir] IMAGE`

DIGITS' "Test a single image" for a classification model: the image is read as Caffe reads images (gray or
BGR, chosen by the input's channel count unless --gray/--color says), squashed to the deploy net's input size,
the mean image subtracted, multiplied by --scale, run forward, and the top 5 of the last output printed with
their labels.  --visualize DIR also writes DIR/report.html, the page DIGITS shows with "Show visualizations and
statistics" (self-contained), and every picture in it as a PNG.  The preprocessing and the report are in
caffelike.digits.report.
"""
from __future__ import annotations

import logging
import os

from caffelike.cli.common import add_trust_flag
from caffelike.core import runtime
from caffelike.digits import classify, report
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="the deploy net (prototxt) with one 4-D input blob")
    p.add_argument("--weights", required=True, help="the trained weights (.caffemodel)")
    p.add_argument("--mean", default="", help="mean image (mean.binaryproto) to subtract; resized to the "
                                              "input size if it differs")
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

    for folder in filter(None, args.python_path.split(os.pathsep)):
        add_python_path(folder)
    device = runtime.parse_gpu_flag(args.gpu)
    if device.type == "cuda":
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    else:
        runtime.set_mode_cpu()
    net = Net(args.model, caffe_pb2.TEST, weights=args.weights, trust_python=args.trust_model_dir)

    name = classify.input_blob(net)
    _, c, h, w = net.blobs[name].data.shape
    color = classify.image_mode(c, args.color, name)
    pixels = classify.load_image(args.image, h, w, color)
    labels = classify.read_labels(args.labels) if args.labels else None
    top = classify.classify_pixels(net, pixels, args.mean or None, labels, args.scale)

    print(f"Predictions for {args.image} (output '{list(net.outputs)[-1]}'):")
    width = max((len(p.label) for p in top), default=0)
    for rank, p in enumerate(top, 1):
        print(f"  {rank}. {p.label:<{width}}  {round(100 * p.probability, 2):6.2f}%")
    if args.visualize:
        info = {"model": args.model, "weights": args.weights, "image": args.image, "mean": args.mean,
                "labels": args.labels, "scale": args.scale}
        path = report.write_report(net, args.visualize, top, pixels, info)
        print(f"report: {path}")
    return 0
