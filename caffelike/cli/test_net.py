"""`caffelike test`: run a model for --iterations batches and report each output's mean (caffe test)."""
from __future__ import annotations

import logging

from caffelike.cli.common import add_net_flags, load_net
from caffelike.cli.progress import ProgressBar

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    add_net_flags(p, "TEST")
    p.add_argument("--weights", default="", help="comma-separated .caffemodel files to load")


def run(args) -> int:
    if not args.weights:
        log.warning("No --weights given: testing the net's filler initialisation")
    net = load_net(args, args.weights)
    log.info("Running for %d iterations.", args.iterations)
    names, sums = [], []
    total_loss = 0.0
    with ProgressBar("Testing", total=args.iterations, unit="batch") as bar:
        for i in range(args.iterations):
            total_loss += batch_outputs(net, i, names, sums)
            bar.update(1)
    log.info("Loss: %g", total_loss / max(args.iterations, 1))
    for name, total in zip(names, sums):
        mean = total / args.iterations
        weight = net.blob_loss_weights.get(name, 0.0)
        extra = f" (* {weight:g} = {weight * mean:g} loss)" if weight else ""
        log.info("%s = %g%s", name, mean, extra)
    return 0


def batch_outputs(net, i: int, names: list, sums: list) -> float:
    """Run batch i, log each output value as caffe test does and add it to `sums`; the batch's loss."""
    loss = net.run_forward()
    k = 0
    for name in net.outputs:
        for value in net.blobs[name].data.reshape(-1).tolist():
            if i == 0:
                names.append(name)
                sums.append(value)
            else:
                sums[k] += value
            log.info("Batch %d, %s = %g", i, name, value)
            k += 1
    return loss
