"""Where caffelike's time goes against the hand-written net: torch.profiler's self CPU time per aten op (or per
compiled kernel), both sides on the same input and weights, sorted by the difference.

    python bench/op_profile.py cifar10_quick [--batch 100] [--pass forward|fwd+bwd] [--compiled [--kernels]]
                               [--iters 5] [--threads N]

An op only caffelike runs (aten::constant_pad_nd, aten::where, ...) points at a layer's implementation; a
difference in the total that no op explains is Python overhead between ops (see the cProfile hint printed at
the end).  Run it after changing a layer to see the difference move.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch.profiler import ProfilerActivity, profile

from bench import handwritten, net_speed, zoo_nets


def op_times(fn, iters: int) -> tuple[collections.Counter, collections.Counter]:
    """(ms per iteration, calls per iteration) of every op's self CPU time."""
    for _ in range(2):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn()
    ms, calls = collections.Counter(), collections.Counter()
    for event in prof.key_averages():
        ms[event.key] += event.self_cpu_time_total / iters / 1e3
        calls[event.key] += event.count / iters
    return ms, calls


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", choices=list(zoo_nets.NETS))
    ap.add_argument("--batch", type=int, default=None, help="default: the benchmark's batch for the net")
    ap.add_argument("--pass", dest="pass_name", choices=list(net_speed.PASSES), default="forward")
    ap.add_argument("--compiled", action="store_true", help="profile the torch.compile'd callables")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier numbers)")
    ap.add_argument("--top", type=int, default=20, help="rows to print")
    ap.add_argument("--kernels", action="store_true",
                    help="with --compiled: one row per Inductor-generated kernel instead of one per compiled graph "
                         "(how GoogLeNet's slow LRN backward was found; the kernel names list the fused ops)")
    args = ap.parse_args(argv)
    if args.kernels:
        import torch._inductor.config
        torch._inductor.config.cpp.enable_kernel_profile = True  # before anything is compiled
    torch.set_num_threads(args.threads)
    spec = zoo_nets.NETS[args.net]
    batch = args.batch or spec.batch
    net = zoo_nets.build(spec, batch)
    hand = handwritten.load_from(handwritten.MODULES[spec.name](), net)
    x = zoo_nets.sample_input(spec, batch)
    output = handwritten.check_against(net, hand, x)["output"]
    caffe_net = net
    if args.compiled:
        caffe_net = net_speed.compile_caffelike(zoo_nets.build(spec, batch))
        hand = net_speed.compile_torch(hand)
    make = net_speed.PASSES[args.pass_name]
    sides = {"caffelike": make(lambda x: caffe_net(data=x)[output], list(net.parameters()) if not args.compiled
                               else list(caffe_net.parameters()), x),
             "torch": make(hand, list(hand.parameters()), x)}
    results = {side: op_times(fn, args.iters) for side, fn in sides.items()}
    (c_ms, c_n), (t_ms, t_n) = results["caffelike"], results["torch"]
    print(f"{args.net} batch {batch} {args.pass_name}{' compiled' if args.compiled else ''}, {args.threads} thread(s): "
          f"self CPU time per iteration caffelike {sum(c_ms.values()):.2f} ms, torch {sum(t_ms.values()):.2f} ms")
    print(f"{'op':<58}{'caffelike ms':>13}{'calls':>7}{'torch ms':>10}{'calls':>7}{'diff ms':>9}")
    for key in sorted(set(c_ms) | set(t_ms), key=lambda k: -abs(c_ms[k] - t_ms[k]))[:args.top]:
        print(f"{key[:58]:<58}{c_ms[key]:>13.3f}{c_n[key]:>7.0f}{t_ms[key]:>10.3f}{t_n[key]:>7.0f}"
              f"{c_ms[key] - t_ms[key]:>9.3f}" + (f"\n    {key}" if args.kernels and len(key) > 58 else ""))
    print("Python overhead between ops does not show here: compare the wall-clock ratio of bench/run.py with these "
          "totals, and use `python -m cProfile -s tottime` on a batch-1 loop to see it.")


if __name__ == "__main__":
    main()
