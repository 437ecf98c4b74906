"""`caffelike train`: caffe train's flags and log, a progress bar on a terminal, and training curves as a PNG
at every snapshot and at the end."""
from __future__ import annotations

import contextlib
import logging

from caffelike.cli import launch, train_network
from caffelike.cli.common import add_python_path_flag, add_trust_flag, apply_python_path, stages_of
from caffelike.cli.progress import solver_bar
from caffelike.core import runtime
from caffelike.digits.curves import write_curves
from caffelike.errors import CaffeError
from caffelike.format.files import check_output_folder
from caffelike.format.prototxt import read_solver
from caffelike.proto import caffe_pb2
from caffelike.train.distributed import DistributedError
from caffelike.train.signals import EFFECTS, SignalHandler

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("--solver", default="", help="the solver definition protocol buffer text file (required "
                                                "without --network)")
    p.add_argument("--weights", default="", help="comma-separated .caffemodel files to finetune from")
    p.add_argument("--snapshot", default="", help="a .solverstate to resume training from")
    p.add_argument("--gpu", default="", help="GPU id(s) to use ('0'; '0,1' or 'all' train on several, one process "
                                             "each); omit for the solver's mode")
    p.add_argument("--stage", default="", help="comma-separated stages added to the train net's state")
    p.add_argument("--level", type=int, default=0, help="the train net's level")
    p.add_argument("--sigint_effect", default="stop", choices=EFFECTS, help="what SIGINT does")
    p.add_argument("--sighup_effect", default="snapshot", choices=EFFECTS, help="what SIGHUP does")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32 is Caffe's arithmetic; bf16/fp16 run forward and backward under autocast (weights "
                        "and updates stay float32; fp16 with dynamic loss scaling)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the train net (data and numpy Python layers stay eager)")
    add_python_path_flag(p)
    add_trust_flag(p)
    p.add_argument("--curves", default="", help="PNG file for the training curves (default: <snapshot_prefix>"
                                                "_curves.png)")
    launch.add_arguments(p)
    train_network.add_arguments(p)


def select_device(gpu_flag: str, param: caffe_pb2.SolverParameter) -> None:
    """Caffe's rule: --gpu wins; without it, an explicit `solver_mode: GPU` uses `device_id`; otherwise CPU."""
    if not gpu_flag and param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        gpu_flag = str(param.device_id)
    device = runtime.parse_gpu_flag(gpu_flag)
    if device.type == "cuda":
        log.info("Using GPUs %d", device.index)
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    else:
        log.info("Use CPU.")
        runtime.set_mode_cpu()


def run(args) -> int:
    mode, count, gpu_ids = launch.plan(args)
    if mode == "spawn":
        return launch.spawn(args, count, gpu_ids)
    if mode == "single":
        return _run(args)
    group = args._distributed = launch.join(args)  # (under torchrun, or one of the processes `spawn` started)
    try:
        code = _run(args)
    except BaseException as e:
        if not isinstance(e, DistributedError):  # (the rank that failed first tells the others why)
            group.report_failure(f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    group.close()
    return code


def _run(args) -> int:
    from caffelike.train.solver import Solver

    if args.network or args.dataset:
        return train_network.run(args)
    if not args.solver:
        raise CaffeError("--solver is required (or --network with --dataset to train a PyTorch model file)")
    if args.snapshot and args.weights:
        raise CaffeError("Give a snapshot to resume training or weights to finetune but not both.")
    apply_python_path(args)
    param = read_solver(args.solver)
    param.train_state.level = args.level
    param.train_state.stage.extend(stages_of(args.stage))
    select_device(args.gpu, param)
    if args.snapshot:
        param.ClearField("weights")
    elif args.weights:
        param.ClearField("weights")
        param.weights.append(args.weights)
    solver = Solver(param, solver_file=args.solver, trust_python=args.trust_model_dir)
    solver.set_precision(args.precision)
    if args.compile:
        solver.net.compile()
    return run_training(solver, args)


def run_training(solver, args) -> int:
    """Train `solver` as caffe train does: curves at each snapshot and at the end, signals, resume, a bar.
    With other ranks (args._distributed), rank 0 alone draws the bar and the curves."""
    group = getattr(args, "_distributed", None)
    root = group is None or group.is_root
    if group is not None:
        group.attach(solver)
    curves = args.curves or f"{solver.param.snapshot_prefix}_curves.png"
    if root:
        check_output_folder(curves, "--curves")
        solver.add_hook("on_snapshot", lambda s, model, state: write_curves(s, curves))
    with SignalHandler(args.sigint_effect, args.sighup_effect) as signals, \
            (solver_bar(solver) if root else contextlib.nullcontext()):
        solver.requested_action = signals.requested_action
        if args.snapshot:
            log.info("Resuming from %s", args.snapshot)
            solver.restore(args.snapshot)
        log.info("Starting Optimization")
        try:
            solver.solve()
        finally:
            if root:
                write_curves(solver, curves)
    log.info("Optimization Done.")
    return 0
