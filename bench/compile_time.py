"""How long the first call of a compiled net takes: caffelike's `net.compile()` against `torch.compile` of the
same net written by hand (bench/handwritten.py), cold (empty inductor cache) and warm (the cache a previous
process filled), and how much Python Dynamo steps through to trace each.

    python bench/compile_time.py [--nets cifar10_quick,googlenet] [--sides caffelike,torch_cl,torch]
                                 [--passes forward,fwd+bwd] [--batch 1] [--threads 1] [--trace-only]

Every measurement runs in a fresh process (Dynamo's and inductor's in-memory caches empty), first with a new
TORCHINDUCTOR_CACHE_DIR (cold, which also fills it), then again with that directory (warm).  Reported per
measurement: seconds of the first call, of Dynamo's bytecode tracing and of the backend compiler (inductor).
--trace-only compiles with backend="eager" (no inductor) and counts the bytecode instructions Dynamo traced,
per source file: where caffelike's extra tracing time goes.  Sides: caffelike, torch (hand-written, NCHW) and
torch_cl (hand-written with channels_last weights, the format caffelike's policy gives its activations on CPU).
Compile time is a one-off cost, so nothing here is interleaved: on a loaded machine read the figures as +-30 %.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDES = ("caffelike", "torch_cl", "torch")
PASSES = ("forward", "fwd+bwd")
METRICS = {"bytecode_tracing": "tracing_s", "OutputGraph.call_user_compiler": "backend_s"}


def _callable(net_name: str, side: str, batch: int, backend: str | None):
    """(call(x) -> the net's output tensor, x) for one side, compiled with dynamic=False."""
    import torch

    from bench import handwritten, zoo_nets

    spec = zoo_nets.NETS[net_name]
    net = zoo_nets.build(spec, batch)
    x = zoo_nets.sample_input(spec, batch)
    options = {"dynamic": False, **({"backend": backend} if backend else {})}
    if side == "caffelike":
        compiled = net.compile(**options)
        output = net.outputs[0]
        return (lambda x: compiled(data=x)[output]), x
    hand = handwritten.load_from(handwritten.MODULES[net_name](), net)
    if side == "torch_cl":
        hand = hand.to(memory_format=torch.channels_last)
    return torch.compile(hand, **options), x


def _count_instructions() -> collections.Counter:
    """Count the bytecode instructions Dynamo steps through, per source file (an internal hook: empty when this
    torch has no InstructionTranslatorBase.step to wrap)."""
    counts: collections.Counter = collections.Counter()
    try:
        from torch._dynamo import symbolic_convert
        step = symbolic_convert.InstructionTranslatorBase.step
    except (ImportError, AttributeError):
        return counts

    def counting_step(self):
        counts[os.path.basename(self.f_code.co_filename)] += 1
        return step(self)
    symbolic_convert.InstructionTranslatorBase.step = counting_step
    return counts


def measure_one(net_name: str, side: str, pass_name: str, batch: int, trace_only: bool) -> dict:
    """In this process: the first call's time and Dynamo's own account of it."""
    import torch
    import torch._dynamo.utils

    counts = _count_instructions() if trace_only else None
    call, x = _callable(net_name, side, batch, "eager" if trace_only else None)
    start = time.perf_counter()
    if pass_name == "forward":
        with torch.no_grad():
            call(x)
    else:
        call(x).sum().backward()
    out = {"net": net_name, "side": side, "pass": pass_name, "first_call_s": time.perf_counter() - start}
    for line in str(torch._dynamo.utils.compile_times()).splitlines():
        key, _, values = line.partition(",")
        if key in METRICS:
            out[METRICS[key]] = sum(float(v) for v in values.split(",") if v.strip())
    if counts is not None:
        out["instructions"] = sum(counts.values())
        out["instructions_by_file"] = dict(counts.most_common(8))
    return out


def spawn(args, net_name: str, side: str, pass_name: str, cache_dir: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--one", net_name, side, pass_name, "--batch", str(args.batch),
            "--threads", str(args.threads)] + (["--trace-only"] if args.trace_only else [])
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False, timeout=3600)
    if done.returncode != 0:
        return {"net": net_name, "side": side, "pass": pass_name, "error": done.stderr.strip()[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(row: dict, key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="cifar10_quick,googlenet")
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--passes", default=",".join(PASSES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trace-only", action="store_true", help="backend='eager': Dynamo's tracing alone, counted")
    ap.add_argument("--json", default="", help="write the rows here too")
    ap.add_argument("--one", nargs=3, metavar=("NET", "SIDE", "PASS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure_one(*args.one, args.batch, args.trace_only)))
        return 0
    rows = []
    print(f"{'net':<14}{'side':<11}{'pass':<9}{'cache':<7}{'first call s':>13}{'tracing s':>11}{'backend s':>11}"
          f"{'instructions':>14}")
    for net_name in args.nets.split(","):
        for pass_name in args.passes.split(","):
            for side in args.sides.split(","):
                with tempfile.TemporaryDirectory(prefix="caffelike-inductor-") as cache_dir:
                    for cache in ("cold",) if args.trace_only else ("cold", "warm"):
                        row = {**spawn(args, net_name, side, pass_name, cache_dir), "cache": cache}
                        rows.append(row)
                        if "error" in row:
                            print(f"{net_name:<14}{side:<11}{pass_name:<9}{cache:<7}  failed: {row['error']}")
                            continue
                        print(f"{net_name:<14}{side:<11}{pass_name:<9}{cache:<7}{fmt(row, 'first_call_s'):>13}"
                              f"{fmt(row, 'tracing_s'):>11}{fmt(row, 'backend_s'):>11}"
                              f"{row.get('instructions', '-'):>14}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
