"""The `caffelike` command: Caffe's verbs and flag spellings.

    caffelike train --solver=solver.prototxt [--weights=w.caffemodel | --snapshot=s.solverstate] [--gpu 0]
    caffelike test --model=net.prototxt --weights=w.caffemodel [--iterations 50] [--gpu 0] [--phase TEST]
    caffelike time --model=net.prototxt [--iterations 50] [--gpu 0] [--phase TRAIN]
    caffelike device_query [--gpu 0]
    caffelike digits [--count 1000]           LeNet on the bundled MNIST digits
    caffelike serve [--port 5000]              the DIGITS-like web application on http://127.0.0.1:5000

Flags may be written `--flag=value`, `--flag value` or Caffe's single-dash `-flag value`.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading

from caffelike.errors import CaffeError

# verb -> (module under caffelike.cli, one-line help); each module has add_arguments(parser) and run(args).
COMMANDS = {
    "train": ("caffelike.cli.train", "train or finetune a model from a solver prototxt"),
    "test": ("caffelike.cli.test_net", "score a model by running it for --iterations batches"),
    "time": ("caffelike.cli.time_net", "benchmark a model's forward and backward passes per layer"),
    "device_query": ("caffelike.cli.device_query", "show the CUDA devices torch can use"),
    "upgrade_net_proto_text": ("caffelike.cli.upgrade", "rewrite a V0/V1 net prototxt in the current format"),
    "upgrade_net_proto_binary": ("caffelike.cli.upgrade", "rewrite a V0/V1 binary net (caffemodel) in the current "
                                 "format"),
    "upgrade_solver_proto_text": ("caffelike.cli.upgrade", "rewrite an old solver prototxt in the current format"),
    "tutorial": ("caffelike.cli.tutorial", "reproduce DIGITS' Python-layer occlusion tutorial end to end"),
    "digits": ("caffelike.cli.digits", "train LeNet on the bundled MNIST digits and report its test accuracy"),
    "convert_imageset": ("caffelike.cli.convert_imageset", "convert a list of images to an LMDB of Datums"),
    "compute_image_mean": ("caffelike.cli.compute_image_mean", "compute the mean image of a Datum database"),
    "draw": ("caffelike.cli.draw_net", "draw a net's graph (PNG/SVG/PDF via graphviz, or DOT text)"),
    "dataset": ("caffelike.cli.dataset", "create a DIGITS image-classification dataset (LMDBs, mean, labels)"),
    "serve": ("caffelike.cli.serve", "start the DIGITS-like web application (datasets, models, live training, "
                                     "tests)"),
    "classify": ("caffelike.cli.classify", "classify an image with a deploy net or a PyTorch model file (top-5), "
                                             "optionally writing a DIGITS-style visual report"),
    "export": ("caffelike.cli.export", "export a net to ONNX, torch.export (.pt2) or TorchScript, and check it "
                                         "against caffelike"),
}

_SINGLE_DASH = re.compile(r"^-([A-Za-z_][A-Za-z0-9_]+)(=.*)?$")


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept gflags' single-dash long flags (`-model x`, `-gpu=0`) by rewriting them to `--model x`."""
    return ["-" + a if _SINGLE_DASH.match(a) else a for a in argv]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="caffelike", description="Caffe's command line on PyTorch.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for verb, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def forget_implicit_cwd() -> None:
    """`python -m caffelike` puts the working directory first on sys.path, where Caffe's binary had none: drop
    it, so that running from a downloaded model's folder does not import its Python layers without consent
    (--trust-model-dir).  PYTHONPATH and `caffelike` itself are unaffected."""
    main_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "__main__.py")
    if sys.argv and os.path.abspath(sys.argv[0]) == main_file and sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]


def main(argv: list[str] | None = None) -> int:
    """The `caffelike` command; its exit status."""
    if threading.current_thread() is threading.main_thread():  # (caffelike/__init__'s quiet start-up handler ends)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _command(argv)
    except KeyboardInterrupt:
        print("caffelike: interrupted", file=sys.stderr)
        return 130


def _command(argv: list[str] | None) -> int:
    from caffelike.cli.glog import init_log
    from caffelike.cli.progress import NetBuildBar
    from caffelike.net.graph import BUILD_LISTENERS

    forget_implicit_cwd()
    argv = normalize_flags(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv  # (what `train --workers` hands to the processes it starts)
    if not getattr(args, "command", None):
        parser.print_help()
        return 1
    init_log(logging.INFO)
    BUILD_LISTENERS.append(NetBuildBar())
    try:
        return int(args._run(args) or 0)
    except CaffeError as e:
        logging.getLogger("caffelike").error("%s", e)
        print(f"caffelike {args.command}: error: {e}", file=sys.stderr)
        return 1
    finally:
        BUILD_LISTENERS.pop()

