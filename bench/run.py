"""caffelike's benchmark suite: one command, tables of ratios measured in the same run, and the same as JSON.

    python bench/run.py [--quick] [--nets lenet,cifar10_quick,caffenet,googlenet] [--device cpu|cuda]
                        [--only nets,opencv,solver,training,pylayer,time] [--modes eager,compiled]
                        [--iters N] [--threads N] [--json bench/results.json]

Sections:
  nets      forward and forward+backward ms per iteration, caffelike vs the same net hand-written in PyTorch
            (bench/handwritten.py, same weights, checked blob by blob first), eager and torch.compile'd
  opencv    inference in OpenCV's dnn module (cv2.dnn.readNetFromCaffe on the same prototxt and caffemodel) beside
            caffelike's pycaffe path (numpy in and out), with the channels_last policy on and off, the module call
            and the hand-written torch net
  solver    what a Solver iteration adds to forward+backward, beside a hand-written torch.optim.SGD step
  training  a LeNet training run on the bundled digits: iterations/s, images/s, and the data pipeline's images/s
  pylayer   the cost of the BlankSquare Python layer, and of a TorchLayer doing the same
  time      `caffelike time` on LeNet, in `caffe time`'s format

Full run: LeNet batch 64, CIFAR-10 quick batch 100, CaffeNet and GoogLeNet batch 16, eager and compiled (on a
2-core CPU about 4 minutes once torch.compile's cache is warm, about 17 cold: compiling GoogLeNet takes minutes).
--quick: LeNet, CIFAR-10 quick and CaffeNet at batch 4, few iterations, compiled only for LeNet (under a minute).
Every timing is the median of interleaved runs (bench/timing.py); on a shared machine read the quartiles in the
JSON before trusting a ratio near 1.  The hand-written nets are checked against caffelike before anything is
timed; a mismatch stops the run.  `python bench/op_profile.py NET` shows where a ratio comes from.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import traceback

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from bench import zoo_nets

SECTIONS = ("nets", "opencv", "solver", "training", "pylayer", "time")
# Timed rounds per net when --iters is not given (full run, --quick).
REPEAT = {"lenet": (30, 10), "cifar10_quick": (20, 6), "caffenet": (10, 5), "googlenet": (6, 2)}
QUICK_COMPILED = ("lenet",)  # compiling a net takes tens of seconds here; --quick compiles only these


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, few iterations (about two minutes)")
    ap.add_argument("--nets", default=None, help=f"comma-separated, from {','.join(zoo_nets.NETS)} (default: all; "
                    f"--quick: {','.join(zoo_nets.QUICK_NETS)})")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    ap.add_argument("--modes", default="eager,compiled", help="eager and/or compiled (nets section)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--iters", type=int, default=None, help="timed rounds per measurement (default: per net)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls before timing (default 3, --quick 1)")
    ap.add_argument("--train-iters", type=int, default=None, help="solver iterations (default 200, --quick 20)")
    ap.add_argument("--threads", type=int, default=None, help="torch (and OpenCV) threads (default: torch's)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.json"),
                    help="where to write the results (default: bench/results.json; '' for nowhere)")
    args = ap.parse_args(argv)
    args.only = [s for s in args.only.split(",") if s]
    for s in args.only:
        if s not in SECTIONS:
            ap.error(f"unknown section {s!r}; sections are {', '.join(SECTIONS)}")
    names = args.nets.split(",") if args.nets else list(zoo_nets.QUICK_NETS if args.quick else zoo_nets.NETS)
    for n in names:
        if n not in zoo_nets.NETS:
            ap.error(f"unknown net {n!r}; nets are {', '.join(zoo_nets.NETS)}")
    args.nets = names
    args.modes = tuple(m for m in args.modes.split(",") if m)
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    return args


# ------------------------------------------------------------------------------------------------- machine info
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device, "python": platform.python_version(),
            "platform": platform.platform(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import cv2
        info["opencv"] = cv2.__version__
    except ImportError:
        info["opencv"] = None
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = list(os.getloadavg())
    return info


def busy_note(m: dict, others: float, when: str) -> None:
    """Say so when other processes compete for the cores: the numbers of this run are then suspect."""
    if others > 0.5 * (m["cores"] or 1):
        print(f"\nnote: other processes kept about {others:.1f} of the {m['cores']} cores busy ({when}): timings are "
              "noisy, and with several torch threads an op can wait a scheduler tick for a descheduled thread; "
              "compare ratios and the quartiles in the JSON, or rerun on a quiet machine or with --threads 1")


# ---------------------------------------------------------------------------------------------------- sections
def repeat_for(args, net: str) -> int:
    return args.iters if args.iters is not None else REPEAT[net][1 if args.quick else 0]


def batch_for(args, net: str) -> int:
    spec = zoo_nets.NETS[net]
    return spec.quick_batch if args.quick else spec.batch


def section_nets(args, results: dict) -> None:
    from bench import handwritten, net_speed

    results["checks"] = {"lrn_vs_local_response_norm_max_abs_diff": handwritten.check_lrn()}
    rows = []
    for name in args.nets:
        modes = args.modes
        if args.quick and "compiled" in modes and name not in QUICK_COMPILED:
            modes = tuple(m for m in modes if m != "compiled")
        net_rows, check = net_speed.run_net(zoo_nets.NETS[name], batch_for(args, name), modes,
                                            repeat_for(args, name), args.warmup, args.device)
        if modes != args.modes:
            net_rows += [net_speed.row(name, batch_for(args, name), "compiled", p, None, None, "skipped (--quick)")
                         for p in net_speed.PASSES]
        check["outputs_match"] = True  # check_against raises otherwise
        results["checks"][name] = check
        rows += net_rows
        print_nets(net_rows, header=name == args.nets[0])
    results["nets"] = rows


def section_opencv(args, results: dict) -> None:
    from bench import opencv_dnn

    nets = [(zoo_nets.NETS[n], batch_for(args, n), repeat_for(args, n)) for n in args.nets]
    out = opencv_dnn.run(nets, args.warmup, args.device)
    results["opencv"] = out
    print_opencv(out)


def section_solver(args, results: dict) -> None:
    from bench import solver_step

    out = solver_step.run(64, args.iters or (15 if args.quick else 60), args.warmup, args.device)
    results["solver"] = out
    print_solver(out)


def section_training(args, results: dict) -> None:
    """Each net trained twice in the same run: data built in a worker process and on threads (the default is
    whichever build_pool.default_processes picks for this machine's cores and torch threads)."""
    from bench import training
    from caffelike.data import build_pool

    results["training"] = []
    default = build_pool.processes_for(True, 4, None, computing_on_cpu=args.device == "cpu")
    for net in [n for n in args.nets if n in training.NETS]:
        default_iters = 200 if net == "lenet" else 60
        iters = args.train_iters or (20 if args.quick else default_iters)
        for processes in (1, 0):
            out = training.run(iters, warmup=2 if args.quick else 5, pipeline_batches=20 if args.quick else 50,
                               device=args.device, net=net, processes=processes)
            out["default"] = bool(processes) == bool(default)
            results["training"].append(out)
            print_training(out)


def section_pylayer(args, results: dict) -> None:
    from bench import pylayer_cost

    out = pylayer_cost.run(64, args.iters or (10 if args.quick else 50), args.warmup, args.device)
    results["pylayer"] = out
    print_pylayer(out)


def section_time(args, results: dict) -> None:
    from bench import caffe_time

    out = caffe_time.run(args.iters or (10 if args.quick else 50), args.device)
    results["time"] = out
    print_time(out)


# ------------------------------------------------------------------------------------------------------ tables
def fmt(value, spec: str = ".2f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_nets(rows: list[dict], header: bool) -> None:
    if header:
        print("\n== caffelike vs the same net hand-written in PyTorch (same weights, outputs checked blob by blob)")
        print("   ms per iteration, median of interleaved runs; ratio = caffelike / torch (> 1: caffelike slower)")
        print(f"{'net':<14}{'batch':>6}  {'mode':<9}{'pass':<9}{'caffelike':>11}{'torch':>11}{'ratio':>8}  note")
    for r in rows:
        print(f"{r['net']:<14}{r['batch']:>6}  {r['mode']:<9}{r['pass']:<9}{fmt(r['caffelike_ms']):>11}"
              f"{fmt(r['torch_ms']):>11}{fmt(r['ratio']):>8}  {r.get('note', '')}", flush=True)


def print_opencv(out: dict) -> None:
    print(f"\n== OpenCV dnn inference: {out['status']}")
    if not out["rows"]:
        return
    print("   ms per forward, median of interleaved runs.  pycaffe: net.blobs['data'].data[...] = x; net.forward() "
          "(numpy in and out);\n   NCHW: the same with CAFFELIKE_CHANNELS_LAST=0; module: net.run(data=tensor); "
          "torch: hand-written.  /cv: over OpenCV (< 1: faster)")
    print(f"{'net':<14}{'batch':>6}{'opencv':>9}{'pycaffe':>9}{'NCHW':>9}{'module':>9}{'torch':>9}"
          f"{'pycaffe/cv':>12}{'NCHW/cv':>9}{'module/cv':>11}{'torch/cv':>10}{'NCHW/CL':>9}{'max|diff|':>11}")
    for r in out["rows"]:
        if "error" in r:
            print(f"{r['net']:<14}{r['batch']:>6}  {r['error']}")
            continue
        print(f"{r['net']:<14}{r['batch']:>6}{r['opencv_ms']:>9.2f}{r['pycaffe_ms']:>9.2f}{r['pycaffe_nchw_ms']:>9.2f}"
              f"{r['module_ms']:>9.2f}{r['torch_ms']:>9.2f}{r['pycaffe_vs_opencv']:>12.2f}"
              f"{r['pycaffe_nchw_vs_opencv']:>9.2f}{r['module_vs_opencv']:>11.2f}{r['torch_vs_opencv']:>10.2f}"
              f"{r['channels_last_speedup']:>9.2f}{r['max_abs_diff']:>11.1e}"
              + ("" if r["outputs_match"] else "  OUTPUTS DIFFER"), flush=True)


def print_solver(out: dict) -> None:
    print(f"\n== A solver iteration on top of forward+backward ({out['net']}, batch {out['batch']}); median ms")
    ms = out["ms"]
    print(f"{'':<11}{'fwd+bwd':>9}{'step':>9}{'step overhead':>15}")
    for side in ("caffelike", "torch"):
        print(f"{side:<11}{ms[side + ' fwd+bwd']:>9.2f}{ms[side + ' step']:>9.2f}"
              f"{out[side + '_step_overhead']:>14.1%}")
    print(f"caffelike step / torch step: {out['step_ratio']:.2f}", flush=True)


def print_training(out: dict) -> None:
    print(f"\n== {out['net']} training, data built in {out['data_processes']} worker processes"
          f"{' (the default here)' if out.get('default') else ''} ({out['described']}, batch {out['batch']})")
    print(f"solver:        {out['iters_per_s']:8.1f} iterations/s  {out['images_per_s']:8.0f} images/s "
          f"({out['iterations']} iterations in {out['seconds']:.2f} s, smoothed loss {out['smoothed_loss']:.3f})")
    print(f"data pipeline: {out['pipeline_sync_images_per_s']:8.0f} images/s synchronous, "
          f"{out['pipeline_prefetch_images_per_s']:.0f} prefetched "
          f"({out['pipeline_vs_training']:.1f}x what training consumes)")
    print(f"end to end:    one iteration {out['iteration_ms']:.2f} ms, forward+backward alone (data in memory) "
          f"{out['fwd_bwd_ms']:.2f} ms: {out['iteration_vs_fwd_bwd']:.2f}x", flush=True)


def print_pylayer(out: dict) -> None:
    print(f"\n== Python layer cost: {out['net']} with Input layers, batch {out['batch']}; median ms")
    by = {(r["variant"], r["pass"]): r for r in out["rows"]}
    print(f"{'variant':<14}{'forward':>10}{'vs none':>9}{'fwd+bwd':>10}{'vs none':>9}")
    for variant in ("none", "BlankSquare", "TorchLayer"):
        f, b = by[(variant, "forward")], by[(variant, "fwd+bwd")]
        print(f"{variant:<14}{f['ms']:>10.2f}{f['vs_none']:>9.2f}{b['ms']:>10.2f}{b['vs_none']:>9.2f}", flush=True)
    alone = out["layer_alone_us"]
    print("the layer alone, per call: " + ", ".join(f"{v} {us:.0f} us" for v, us in alone.items()))


def print_time(out: dict) -> None:
    print(f"\n== {out['command']} (exit status {out['returncode']})")
    for line in out["lines"]:
        print(line)


# -------------------------------------------------------------------------------------------------------- main
RUNNERS = {"nets": section_nets, "opencv": section_opencv, "solver": section_solver, "training": section_training,
           "pylayer": section_pylayer, "time": section_time}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {"machine": machine(args.device),
               "settings": {"quick": args.quick, "nets": args.nets, "sections": args.only, "modes": list(args.modes),
                            "iters": args.iters, "warmup": args.warmup,
                            "batches": {n: batch_for(args, n) for n in args.nets}},
               "errors": {}}
    m = results["machine"]
    print(f"caffelike benchmarks on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch threads), "
          f"torch {m['torch']}, device {m['device']}, {m['date']}")
    if "loadavg_start" in m:
        busy_note(m, m["loadavg_start"][0], "at the start")
    for section in args.only:
        try:
            RUNNERS[section](args, results)
        except AssertionError:
            raise  # a contender computing something else makes every number meaningless
        except Exception as e:  # noqa: BLE001 - report the section's failure, run the others
            results["errors"][section] = f"{type(e).__name__}: {e}"
            print(f"\n== {section}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc()
    results["elapsed_s"] = time.perf_counter() - start
    if hasattr(os, "getloadavg"):
        # The 1-minute load at the end counts this run's own threads: take off the cores it kept busy.
        cpu = os.times()
        own = (cpu.user + cpu.system + cpu.children_user + cpu.children_system) / results["elapsed_s"]
        m["loadavg_end"] = list(os.getloadavg())
        m["others_load_estimate_end"] = max(0.0, m["loadavg_end"][0] - own)
        busy_note(m, m["others_load_estimate_end"], "estimated at the end")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"\nwrote {args.json} ({results['elapsed_s']:.0f} s)")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
