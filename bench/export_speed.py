"""Inference of exported zoo nets: onnxruntime (and OpenCV 5's dnn, where installed) on the ONNX file that
`caffelike export` writes, against caffelike itself, eager and compiled, on the same seeded weights and input.

    python bench/export_speed.py [--quick] [--nets lenet,caffenet,googlenet] [--threads N] [--no-compiled]
                                 [--iters N] [--json bench/export_results.json]

Full run: LeNet batch 64, CaffeNet and GoogLeNet batch 16 (bench/zoo_nets.py's batches).  --quick: batch 4,
few iterations, no compiled column.  Each runtime's output is compared with caffelike's before anything is
timed (a mismatch stops the run); then all of them run interleaved (bench/timing.py) and the medians are
reported with the ratios runtime / caffelike eager (< 1: the runtime is faster).  The export itself is timed
once (seconds to write the file, which includes tracing and the ONNX optimizer).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

if __package__ in (None, ""):  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from bench import timing, zoo_nets

NETS = ("lenet", "caffenet", "googlenet")
REPEAT = {"lenet": (30, 10), "caffenet": (10, 4), "googlenet": (6, 2)}  # (full, --quick) timed rounds


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 4, few iterations, no compiled column")
    ap.add_argument("--nets", default=",".join(NETS), help=f"comma-separated, from {', '.join(NETS)}")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch, onnxruntime and OpenCV")
    ap.add_argument("--no-compiled", action="store_true", help="leave out caffelike's torch.compile'd net")
    ap.add_argument("--iters", type=int, default=None, help="timed rounds per net")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "export_results.json"),
                    help="where to write the results ('' for nowhere)")
    return ap.parse_args(argv)


def opencv5():
    """cv2 when OpenCV 5 or later (whose dnn reads ONNX, not Caffe) is installed, else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2 if int(cv2.__version__.split(".")[0]) >= 5 else None


def run_net(name: str, batch: int, repeat: int, compiled: bool, threads: int, folder: str) -> dict:
    import onnxruntime as ort

    from caffelike import export

    spec = zoo_nets.NETS[name]
    net = zoo_nets.build(spec, batch)
    x = zoo_nets.sample_input(spec, batch)
    path = os.path.join(folder, f"{name}.onnx")
    _, export_s = timing.timed(lambda: export.to_onnx(net, path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"data": np.ascontiguousarray(x.numpy())}
    output = session.get_outputs()[0].name

    def caffelike_eager():
        with torch.no_grad():
            return net(data=x)[output]

    fns = {"caffelike": caffelike_eager, "onnxruntime": lambda: session.run([output], feed)[0]}
    cv2 = opencv5()
    if cv2 is not None:
        cv_net = cv2.dnn.readNetFromONNX(path)

        def opencv():
            cv_net.setInput(feed["data"], "data")
            return cv_net.forward(output)

        fns["opencv"] = opencv
    compile_s = None
    if compiled:
        twin = zoo_nets.build(spec, batch)  # same seeded weights, compiled on its own
        twin.compile()

        def caffelike_compiled():
            with torch.no_grad():
                return twin(data=x)[output]

        _, compile_s = timing.timed(caffelike_compiled)
        fns["compiled"] = caffelike_compiled
    want = caffelike_eager().numpy()
    checks = {}
    for side, fn in fns.items():
        got = np.asarray(fn() if side != "caffelike" else want).reshape(want.shape)
        rel = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
        checks[side] = rel
        if rel > 1e-4:
            raise SystemExit(f"{name}: {side}'s output differs from caffelike's (relative error {rel:.2e})")
    t = timing.interleaved(fns, repeat, warmup=2)
    eager = t["caffelike"].median_ms
    row = {"net": name, "batch": batch, "export_s": export_s, "compile_s": compile_s, "max_rel_error": checks,
           **{f"{side}_ms": t[side].median_ms for side in t},
           **{f"{side}_iqr_ms": [t[side].q1_ms, t[side].q3_ms] for side in t},
           **{f"{side}_vs_eager": t[side].median_ms / eager for side in t if side != "caffelike"}}
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    cv2 = opencv5()
    if cv2 is not None:
        cv2.setNumThreads(threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="caffelike-export-bench-") as folder:
        for name in [n.strip() for n in args.nets.split(",") if n.strip()]:
            if name not in REPEAT:
                raise SystemExit(f"unknown net {name!r}; choose from {', '.join(NETS)}")
            batch = 4 if args.quick else zoo_nets.NETS[name].batch
            repeat = args.iters or REPEAT[name][1 if args.quick else 0]
            rows.append(run_net(name, batch, repeat, not (args.quick or args.no_compiled), threads, folder))
            print_row(rows[-1], header=len(rows) == 1)
    import onnxruntime

    results = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
               "opencv": cv2.__version__ if cv2 is not None else None, "threads": threads, "quick": args.quick,
               "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def print_row(row: dict, header: bool) -> None:
    sides = [s for s in ("onnxruntime", "opencv", "compiled") if f"{s}_ms" in row]
    if header:
        print("ms per batch (median); ratio = runtime / caffelike eager (< 1: faster than caffelike eager)")
    cells = [f"{row['net']} b{row['batch']}: caffelike eager {row['caffelike_ms']:.2f}"]
    cells += [f"{s} {row[f'{s}_ms']:.2f} ({row[f'{s}_vs_eager']:.2f}x)" for s in sides]
    print("  ".join(cells) + f"  [export {row['export_s']:.1f} s]", flush=True)


if __name__ == "__main__":
    sys.exit(main())
