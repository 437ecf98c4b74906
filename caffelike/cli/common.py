"""Flags and helpers several subcommands share, spelled as Caffe spells them."""
from __future__ import annotations

import argparse

from caffelike import caffe_pb2
from caffelike.core.runtime import parse_gpu_flag
from caffelike.errors import CaffeError


def add_net_flags(p: argparse.ArgumentParser, default_phase: str) -> None:
    p.add_argument("--model", required=True, help="the model definition protocol buffer text file")
    p.add_argument("--gpu", default="", help="GPU id(s) to use ('0', '0,1', 'all'); omit for the CPU")
    p.add_argument("--iterations", type=positive_int, default=50, help="the number of iterations to run")
    p.add_argument("--phase", default=default_phase, help="network phase (TRAIN or TEST)")
    p.add_argument("--level", type=int, default=0, help="network level")
    p.add_argument("--stage", default="", help="comma-separated network stages")
    add_python_path_flag(p)
    add_trust_flag(p)


def add_trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-model-dir", "--trust_model_dir", action="store_true", dest="trust_model_dir",
                   help="let Python layers import modules from the model's own folder and the working directory "
                        "(runs the model's code; modules on PYTHONPATH or --python-path need no consent; "
                        "CAFFELIKE_TRUST_MODEL_DIR=1 does the same)")


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (--iterations)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_python_path_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--python-path", "--python_path", action="append", default=[], dest="python_path",
                   metavar="DIR", help="a folder to search for Python-layer modules (repeatable)")


def apply_python_path(args) -> None:
    from caffelike.layers.python import add_python_path

    for folder in getattr(args, "python_path", []) or []:
        add_python_path(folder)


def phase_of(name: str) -> int:
    if name.upper() not in ("TRAIN", "TEST"):
        raise CaffeError(f"--phase must be TRAIN or TEST, got {name!r}")
    return caffe_pb2.TRAIN if name.upper() == "TRAIN" else caffe_pb2.TEST


def stages_of(flag: str) -> list[str]:
    return [s for s in flag.split(",")] if flag else []


def load_net(args, weights: str | None):
    """Build the Net the flags describe, on the device --gpu names."""
    from caffelike.core import runtime
    from caffelike.net import Net

    apply_python_path(args)
    device = parse_gpu_flag(args.gpu)
    if device.type == "cuda":
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    else:
        runtime.set_mode_cpu()
    net = Net(args.model, phase_of(args.phase), level=args.level, stages=stages_of(args.stage),
              trust_python=getattr(args, "trust_model_dir", False))
    if weights:
        for path in weights.split(","):
            net.copy_from(path)
    return net
