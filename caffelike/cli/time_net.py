"""`caffelike time`: per-layer forward and backward times in `caffe time`'s format."""
from __future__ import annotations

import logging
import time

import torch

from caffelike.cli.common import add_net_flags, load_net

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    add_net_flags(p, "TRAIN")


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run(args) -> int:
    net = load_net(args, None)
    device = net.device
    n_layers = len(net.layer_list)
    log.info("Performing Forward")
    log.info("Initial loss: %g", net.run_forward())
    log.info("Performing Backward")
    net.run_backward()
    fwd = [0.0] * n_layers
    bwd = [0.0] * n_layers
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", args.iterations)
    total_start = _now(device)
    for j in range(args.iterations):
        iter_start = _now(device)
        for i in range(n_layers):
            t0 = _now(device)
            net.run_forward(i, i)
            fwd[i] += _now(device) - t0
        for i in reversed(range(n_layers)):
            t0 = _now(device)
            net.run_backward(i, i)
            bwd[i] += _now(device) - t0
        log.info("Iteration: %d forward-backward time: %g ms.", j + 1, (_now(device) - iter_start) * 1e3)
    total = _now(device) - total_start
    iters = max(args.iterations, 1)
    log.info("Average time per layer: ")
    for layer, f, b in zip(net.layer_list, fwd, bwd):
        log.info("%10s\tforward: %g ms.", layer.layer_name, f * 1e3 / iters)
        log.info("%10s\tbackward: %g ms.", layer.layer_name, b * 1e3 / iters)
    log.info("Average Forward pass: %g ms.", sum(fwd) * 1e3 / iters)
    log.info("Average Backward pass: %g ms.", sum(bwd) * 1e3 / iters)
    log.info("Average Forward-Backward: %g ms.", total * 1e3 / iters)
    log.info("Total Time: %g ms.", total * 1e3)
    log.info("*** Benchmark ends ***")
    return 0
