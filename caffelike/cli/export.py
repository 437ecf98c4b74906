"""`caffelike export`: write a Caffe net as ONNX, a torch.export program (.pt2) or TorchScript, and check it.

    caffelike export --model deploy.prototxt --weights w.caffemodel --out model.onnx [--opset N]
                     [--dynamic-batch] [--input-shape data=1,3,224,224] [--output prob] [--check]
                     [--format onnx|torch-export|torchscript] [--stage deploy] [--tolerance 1e-4]

--check runs the written file (onnxruntime for ONNX; --check-opencv also in OpenCV's dnn) on seeded random
inputs, prints each output's max absolute and relative error against caffelike and exits 3 when one is above
--tolerance.  Errors (a layer that cannot be exported, a bad flag) exit 1 naming the layer or the flag.
"""
from __future__ import annotations

import argparse
import os

from caffelike.cli.common import (
    add_python_path_flag,
    add_trust_flag,
    apply_python_path,
    phase_of,
    stages_of,
)
from caffelike.errors import CaffeError

MISMATCH_EXIT = 3


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """argparse type for --input-shape NAME=D0,D1,..."""
    name, sep, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,... with dimensions >= 1 (e.g. data=1,3,224,224), "
                                         f"got {text!r}")
    return name, shape


def add_arguments(p) -> None:
    from caffelike.export import FORMATS

    p.add_argument("--model", required=True, help="the net's prototxt (a deploy net, or any net with --output)")
    p.add_argument("--weights", default="", help="the trained .caffemodel (or .h5) weights, comma-separated for "
                   "several; without it the net's fillers give the weights")
    p.add_argument("--out", required=True, help="the file to write (.onnx, .pt2, .pt)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="onnx, torch-export (a torch.export .pt2) or torchscript (default: from --out's suffix, "
                        "else onnx)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's, 20 with torch 2.13)")
    p.add_argument("--dynamic-batch", "--dynamic_batch", action="store_true", dest="dynamic_batch",
                   help="make axis 0 of every input and output symbolic")
    p.add_argument("--input-shape", "--input_shape", type=input_shape, action="append", default=[],
                   dest="input_shape", metavar="NAME=D0,D1,...", help="reshape an input before exporting "
                   "(repeatable), e.g. data=1,3,224,224")
    p.add_argument("--output", action="append", default=[], metavar="BLOB",
                   help="export only what this blob needs, and output it (repeatable; default: the net's outputs)")
    p.add_argument("--check", action="store_true", help="run the written file and compare it with caffelike")
    p.add_argument("--check-opencv", "--check_opencv", action="store_true", dest="check_opencv",
                   help="also run an ONNX file in OpenCV's dnn module (opencv-python-headless 5)")
    p.add_argument("--check-batch", "--check_batch", type=int, default=None, dest="check_batch",
                   help="the batch --check feeds (default: the net's; try another with --dynamic-batch)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative error --check accepts (max |difference| / max |caffelike output|)")
    p.add_argument("--phase", default="TEST", help="network phase (TEST or TRAIN)")
    p.add_argument("--level", type=int, default=0, help="network level")
    p.add_argument("--stage", default="", help="comma-separated network stages (DIGITS nets: deploy)")
    add_python_path_flag(p)
    add_trust_flag(p)


def run(args) -> int:
    from caffelike import export
    from caffelike.net import Net

    apply_python_path(args)
    if not os.path.isfile(args.model):
        raise CaffeError(f"--model {args.model}: no such file")
    fmt = args.format or export.format_of(args.out)
    if args.opset is not None and fmt != "onnx":
        raise CaffeError(f"--opset applies to --format onnx only, not {fmt}")
    if args.check_opencv and fmt != "onnx":
        raise CaffeError(f"--check-opencv runs ONNX files only, not {fmt}")
    net = Net(args.model, phase_of(args.phase), level=args.level, stages=stages_of(args.stage),
              trust_python=args.trust_model_dir)
    for path in [w for w in args.weights.split(",") if w]:
        net.copy_from(path)
    shapes = dict(args.input_shape)
    outputs = args.output or None
    options = {"dynamic_batch": args.dynamic_batch, "input_shapes": shapes, "outputs": outputs}
    if fmt == "onnx":
        options["opset"] = args.opset
    graph = export.export(net, args.out, format=fmt, **options)
    shapes = {n: ["N", *s[1:]] if args.dynamic_batch and s else list(s) for n, s in graph.input_shapes().items()}
    shapes_text = ", ".join(f"{n} [{', '.join(map(str, s))}]" for n, s in shapes.items())
    print(f"wrote {args.out} ({fmt}): inputs {shapes_text}; outputs {', '.join(graph.outputs)}")
    if not (args.check or args.check_opencv):
        return 0
    reports = []
    if args.check:
        reports.append(export.check_file(net, args.out, fmt, batch=args.check_batch, tolerance=args.tolerance,
                                         outputs=outputs))
    if args.check_opencv:
        reports.append(export.check_file(net, args.out, fmt, runtime="opencv", batch=args.check_batch,
                                         tolerance=args.tolerance, outputs=outputs))
    for report in reports:
        print(report.text())
    return 0 if all(r.ok for r in reports) else MISMATCH_EXIT
