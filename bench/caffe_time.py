"""`caffelike time` on LeNet, in `caffe time`'s format, for comparison with numbers people already have.

It runs what Caffe's documentation runs, `caffe time -model examples/mnist/lenet_train_test.prototxt`: zoo/lenet's
train_test net (TRAIN phase, batch 64, Data layer over an LMDB of the bundled digits, SoftmaxWithLoss, so
backward is timed too), through the command line in a subprocess, and keeps its log lines.  Like Caffe's, the
per-layer times include the Data layer's batch reading and one synchronisation per layer.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import torch

_AVERAGE = re.compile(r"Average (Forward pass|Backward pass|Forward-Backward): ([0-9.eE+-]+) ms")


def run(iterations: int, device: str = "cpu") -> dict:
    from caffelike.cli.digits import prepare

    with tempfile.TemporaryDirectory(prefix="caffelike-bench-time-") as folder:
        prepare(folder, 1)
        model = os.path.join(folder, "lenet_train_test.prototxt")
        argv = ["time", f"--model={model}", f"--iterations={iterations}"]
        if device.startswith("cuda"):
            argv.append(f"--gpu={torch_index(device)}")
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # the parent's --threads
        done = subprocess.run([sys.executable, "-m", "caffelike", *argv], capture_output=True, text=True,
                              timeout=600, env=env)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    averages = {m.group(1): float(m.group(2)) for m in map(_AVERAGE.search, lines) if m}
    return {"command": "caffelike " + " ".join(argv).replace(model, "lenet_train_test.prototxt"),
            "returncode": done.returncode, "lines": lines, "average_ms": averages}


def torch_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0
