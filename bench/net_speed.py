"""Forward and forward+backward time per iteration of the zoo nets: caffelike vs the same net written by hand in
PyTorch (bench/handwritten.py, same weights), eager and compiled, with the ratio caffelike / hand-written.

Before anything is timed, the hand-written module is checked blob by blob against caffelike on the benchmark
input (handwritten.check_against), and each compiled callable's output against its eager one, so both sides
are known to compute the same function.  Forward = the whole net under torch.no_grad.  Forward+backward = the
parameter gradients set to None, a forward with grad, and backward of the sum of the net's output (the deploy
nets have no loss; zoo_nets builds them with force_backward so Caffe's planning keeps every layer in the
graph): identical work on both sides.  Where caffelike's memory-format policy makes its activations
channels_last (core/layout.py), the hand-written module gets channels_last weights, which does the same to its.
"""
from __future__ import annotations

from typing import Callable

import torch

from bench import handwritten, timing, zoo_nets
from caffelike.core import layout

# Both sides compile with the same options.  dynamic=False: each is timed on one input shape.  (With the default,
# a graph break inside a layer's forward, a code object every layer of that type shares, shows Dynamo a new
# shape per layer and it recompiles with symbolic shapes; on torch 2.13 that failed in Inductor's convolution
# lowering, "ValueRangeError: Invalid ranges [0:-1]", for LeNet's fwd+bwd after a forward.)
COMPILE_OPTIONS = {"dynamic": False}


def compile_caffelike(net):
    """The compiled caffelike net the benchmark times: caffelike's own `NetGraph.compile()`.  Returns a callable
    taking the net's inputs as keyword arguments."""
    return net.compile(**COMPILE_OPTIONS)


def compile_torch(module):
    return torch.compile(module, **COMPILE_OPTIONS)


def reason(e: BaseException) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= 100 else text[:97] + "..."


def _forward(call: Callable, params: list, x: torch.Tensor) -> Callable[[], object]:
    """call(x) under no_grad (`params` is unused: the signature is _forward_backward's)."""
    def run():
        with torch.no_grad():
            return call(x)
    return run


def _forward_backward(call: Callable, params: list, x: torch.Tensor) -> Callable[[], object]:
    def run():
        for p in params:
            p.grad = None
        call(x).sum().backward()
    return run


PASSES = {"forward": _forward, "fwd+bwd": _forward_backward}


def row(net_name, batch, mode, pass_name, caffe_t, torch_t, note="") -> dict:
    entry = {"net": net_name, "batch": batch, "mode": mode, "pass": pass_name,
           "caffelike_ms": caffe_t.median_ms if caffe_t else None,
           "torch_ms": torch_t.median_ms if torch_t else None,
           "caffelike_iqr_ms": [caffe_t.q1_ms, caffe_t.q3_ms] if caffe_t else None,
           "torch_iqr_ms": [torch_t.q1_ms, torch_t.q3_ms] if torch_t else None,
           "ratio": caffe_t.median_ms / torch_t.median_ms if caffe_t and torch_t else None}
    if note:
        entry["note"] = note
    return entry


def run_net(spec: zoo_nets.ZooNet, batch: int, modes: tuple[str, ...], repeat: int, warmup: int,
            device: str) -> tuple[list[dict], dict]:
    """The rows of one net, and what its checks found."""
    net = zoo_nets.build(spec, batch).to(device)
    hand = handwritten.load_from(handwritten.MODULES[spec.name](), net).to(device)
    if layout.channels_last_enabled(device):  # caffelike's activations are channels_last: the same for torch's
        hand = hand.to(memory_format=torch.channels_last)
    x = zoo_nets.sample_input(spec, batch).to(device)
    check = handwritten.check_against(net, hand, x)
    output = check["output"]
    rows = []
    if "eager" in modes:
        calls = {"caffelike": (lambda x: net(data=x)[output], list(net.parameters())),
                 "torch": (hand, list(hand.parameters()))}
        for pass_name, make in PASSES.items():
            fns = {side: make(call, params, x) for side, (call, params) in calls.items()}
            t = timing.interleaved(fns, repeat, warmup, device)
            rows.append(row(spec.name, batch, "eager", pass_name, t["caffelike"], t["torch"]))
    if "compiled" in modes:
        rows += _compiled_rows(spec, batch, net, hand, x, output, repeat, warmup, device, check)
    return rows, check


def _compiled_rows(spec, batch, net, hand, x, output, repeat, warmup, device, check) -> list[dict]:
    import torch._dynamo

    torch._dynamo.reset()  # every net starts from an empty cache (and recompile budget)
    with torch.no_grad():
        reference = net(data=x)[output].detach().clone()
    # A second caffelike net with the same weights: an official compiled path may compile the net in place.
    compiled_net_src = zoo_nets.build(spec, batch).to(device)
    caffe_compiled, hand_compiled, failures = None, None, {}
    try:
        caffe_compiled = compile_caffelike(compiled_net_src)
    except Exception as e:  # noqa: BLE001 - whatever stops compiling is reported, not raised
        failures["caffelike"] = reason(e)
    try:
        hand_compiled = compile_torch(hand)
    except Exception as e:  # noqa: BLE001
        failures["torch"] = reason(e)
    calls = {"caffelike": (lambda x: caffe_compiled(data=x)[output]) if caffe_compiled is not None else None,
             "torch": hand_compiled}
    params = {"caffelike": list(compiled_net_src.parameters()), "torch": list(hand.parameters())}
    rows = []
    compile_s = {}
    for pass_name in PASSES:
        fns, notes = {}, []
        for side in ("caffelike", "torch"):
            call = calls[side]
            if call is None:
                notes.append(f"{side}: n/a ({failures[side]})")
                continue
            fn = PASSES[pass_name](call, params[side], x)
            try:
                _, seconds = timing.timed(fn, device)  # the first call compiles
                compile_s[f"{side} {pass_name}"] = seconds
                if pass_name == "forward":
                    with torch.no_grad():
                        got = call(x).detach()
                    ok, diff = handwritten.close_enough(got, reference, 1e-3)
                    if not ok:
                        raise AssertionError(f"compiled {side} output differs from eager caffelike's by {diff:.3g}")
                fns[side] = fn
            except AssertionError:
                raise
            except Exception as e:  # noqa: BLE001
                notes.append(f"{side}: n/a ({reason(e)})")
        t = timing.interleaved(fns, repeat, warmup, device) if fns else {}
        rows.append(row(spec.name, batch, "compiled", pass_name, t.get("caffelike"), t.get("torch"),
                         "; ".join(notes)))
    check["compile_s"] = compile_s
    return rows
