"""`caffelike train --network model.py --dataset DIR`: a DIGITS-style PyTorch model file (docs/torch_models.md)
trained by the same Solver, log, progress bar, curves, signals and snapshots as `caffelike train --solver`.

The solver comes from `--solver solver.prototxt` (without net fields) and/or DIGITS' form flags (--epochs,
--solver-type, --base-lr, --lr-policy, --batch-size, ...); flags win over the file.
"""
from __future__ import annotations

from caffelike.cli.common import positive_int
from caffelike.errors import CaffeError


def add_arguments(p) -> None:
    """The model-file flags, added to `caffelike train`'s own."""
    g = p.add_argument_group("PyTorch model files (DIGITS' Torch contract; with --network, --solver is optional)")
    g.add_argument("--network", default="", help="a Python model file defining network(params) -> dict (its code "
                                                 "runs: only name files you trust)")
    g.add_argument("--dataset", default="", help="a DIGITS dataset folder (caffelike dataset create)")
    g.add_argument("--epochs", type=float, default=None, help="training epochs (sets max_iter; default 30 "
                                                              "without --solver)")
    g.add_argument("--solver-type", default=None, help="SGD, Nesterov, AdaGrad, RMSProp, AdaDelta or Adam")
    g.add_argument("--base-lr", type=float, default=None, help="base learning rate (default 0.01)")
    g.add_argument("--lr-policy", default=None, help="fixed, step, multistep, exp, inv, poly or sigmoid, with "
                                                     "DIGITS' defaults for their fields (default step)")
    g.add_argument("--weight-decay", type=float, default=None, help="default: base_lr / 100 (DIGITS)")
    g.add_argument("--momentum", type=float, default=None, help="default 0.9")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="training batch size (default: the model file's train_batch_size, else 64)")
    g.add_argument("--val-batch-size", type=positive_int, default=None,
                   help="validation batch size (default: the model file's validation_batch_size, else the "
                        "training batch size)")
    g.add_argument("--crop-size", type=positive_int, default=None,
                   help="random crop in training, centre crop in validation (default: the model file's)")
    g.add_argument("--mean", default="image", choices=("image", "pixel", "none"),
                   help="subtract the dataset's mean image, its per-channel mean, or nothing")
    g.add_argument("--mirror", action="store_true", help="mirror training images at random")
    g.add_argument("--snapshot-prefix", default=None, help="default: the solver file's, else 'snapshot'")
    g.add_argument("--seed", type=int, default=None, help="random seed (the model's initial weights too)")


def run(args) -> int:
    from caffelike.cli.train import run_training, select_device
    from caffelike.core import runtime
    from caffelike.digits.torch_training import make_solver
    from caffelike.proto import caffe_pb2

    if not args.network or not args.dataset:
        raise CaffeError("--network and --dataset go together: a model file and the dataset folder to train on")
    if args.snapshot and args.weights:
        raise CaffeError("Give a snapshot to resume training or weights to finetune but not both.")
    if args.stage or args.level or args.compile:
        raise CaffeError("--stage, --level and --compile apply to prototxt nets, not to --network model files")
    select_device(args.gpu, caffe_pb2.SolverParameter())
    solver = make_solver(
        args.network, args.dataset, solver_file=args.solver or None, epochs=args.epochs,
        solver_type=args.solver_type, base_lr=args.base_lr, lr_policy=args.lr_policy, batch_size=args.batch_size,
        val_batch_size=args.val_batch_size, crop_size=args.crop_size, mean=args.mean, mirror=args.mirror,
        weight_decay=args.weight_decay, momentum=args.momentum, snapshot_prefix=args.snapshot_prefix,
        random_seed=args.seed, weights=args.weights or None,
        ngpus=1 if runtime.current_device().type == "cuda" else 0)
    solver.set_precision(args.precision)
    return run_training(solver, args)
