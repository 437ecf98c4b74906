"""The Solver's log lines in Caffe's words and number format: the net outputs after a display or a test pass, and
debug_info's per-blob and per-parameter magnitudes (parse_log.py and DIGITS read these lines)."""
from __future__ import annotations

import logging

log = logging.getLogger("caffelike")


def fmt(x: float) -> str:
    """C++ ostream's default float output (6 significant digits), which Caffe's log lines use."""
    return f"{x:g}"


def output_values(net) -> list[tuple[str, float]]:
    """(output blob name, value) for every value of every output blob, in order."""
    values = []
    for name in net.outputs:
        for v in net.blobs[name].tensor.detach().reshape(-1).tolist():
            values.append((name, v))
    return values


def log_outputs(net, kind: str, values: list[tuple[str, float]]) -> None:
    """`    Train net output #k: name = v (* w = wv loss)`, as Caffe's Solver::Step and Test print them."""
    for k, (name, v) in enumerate(values):
        w = net.blob_loss_weights.get(name, 0.0)
        extra = f" (* {fmt(w)} = {fmt(w * v)} loss)" if w else ""
        log.info("    %s net output #%d: %s = %s%s", kind, k, name, fmt(v), extra)


def log_debug_info(net) -> None:
    """debug_info: the mean absolute value of every top after forward and every parameter diff after backward."""
    for layer, plan in zip(net.layer_list, net.plans):
        for t in plan.tops:
            value = net.blobs[t].tensor.detach()
            log.info("    [Forward] Layer %s, top blob %s data: %s", layer.layer_name, t,
                     fmt(float(value.abs().mean())) if value.numel() else "0")
        for i, p in enumerate(layer.blobs):
            if p.grad is not None:
                log.info("    [Backward] Layer %s, param blob %d diff: %s", layer.layer_name, i,
                         fmt(float(p.grad.abs().mean())))
