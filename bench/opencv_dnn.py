"""Inference of the zoo nets in OpenCV's dnn module, beside caffelike called the way pycaffe users call it.

OpenCV reads the deploy prototxt (batch set, no force_backward) and the .caffemodel that caffelike saved with
net.save, through cv2.dnn.readNetFromCaffe (opencv-python-headless below 5: OpenCV 5 dropped the Caffe importer).
It is an optional dependency: without it, or with an OpenCV that cannot read Caffe files, the section reports why.

Contenders, each numpy in and numpy out where the API is numpy, all taking interleaved turns:
  opencv        net.setInput(x); net.forward()
  pycaffe       caffe.Net(prototxt, caffe.TEST, weights=caffemodel) built from the same files, then
                net.blobs['data'].data[...] = x; net.forward()[output]  (what users and Classifier do)
  pycaffe NCHW  the same with the memory-format policy off (CAFFELIKE_CHANNELS_LAST=0, core/layout.py): the
                before/after of channels_last, measured in one run
  module        net.run(data=tensor) under torch.no_grad: the torch call, tensors in and out
  torch         the net written by hand in PyTorch (bench/handwritten.py, same weights), with channels_last
                weights when the policy is on, as one would write it for speed
Before timing, OpenCV's output and the NCHW run's are compared with the pycaffe output (the max differences go in
the report; an OpenCV mismatch is reported, not raised, as OpenCV is not ours to fix).  OpenCV is held to
torch's thread count.  Ratios are over OpenCV's time (< 1: faster than OpenCV).
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch

from bench import handwritten, timing, zoo_nets

CONTENDERS = ("opencv", "pycaffe", "pycaffe_nchw", "module", "torch")


def opencv():
    """(cv2 module, None), or (None, why it cannot be used)."""
    try:
        import cv2
    except ImportError:
        return None, "not installed (pip install \"opencv-python-headless<5\")"
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        return None, f"OpenCV {cv2.__version__} has no Caffe importer (it was dropped in OpenCV 5)"
    return cv2, None


def with_channels_last(enabled: bool, call):
    """`call` run with the memory-format policy forced on or off, the environment's setting restored after."""
    from caffelike.core import layout

    def run():
        layout.set_channels_last(enabled)
        try:
            return call()
        finally:
            layout.set_channels_last(None)
    return run


def no_grad(call):
    def run():
        with torch.no_grad():
            return call()
    return run


def contenders(cv2, spec: zoo_nets.ZooNet, batch: int, folder: str) -> tuple[dict, dict]:
    """The callables to time, and the outputs each gave once (numpy), for the checks."""
    import caffelike

    seeded = zoo_nets.build(spec, batch)
    prototxt, caffemodel = zoo_nets.write_files(spec, seeded, folder, force_backward=False)
    x = np.ascontiguousarray(zoo_nets.sample_input(spec, batch).numpy())
    xt = torch.from_numpy(x)
    cv_net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net = caffelike.Net(prototxt, caffelike.TEST, weights=caffemodel)
    output = net.outputs[0]
    hand = handwritten.load_from(handwritten.MODULES[spec.name](), net).eval()
    from caffelike.core import layout

    if layout.channels_last_enabled("cpu"):
        hand = hand.to(memory_format=torch.channels_last)

    def cv_forward():
        cv_net.setInput(x)
        return cv_net.forward()

    def pycaffe_forward():
        net.blobs["data"].data[...] = x
        return net.forward()[output]

    fns = {"opencv": cv_forward, "pycaffe": with_channels_last(True, pycaffe_forward),
           "pycaffe_nchw": with_channels_last(False, pycaffe_forward),
           "module": with_channels_last(True, no_grad(lambda: net.run(data=xt)[output])),
           "torch": no_grad(lambda: hand(xt))}
    outs = {name: np.array(fn() if name != "module" else fn().numpy()) for name, fn in fns.items()
            if name != "torch"}
    return fns, outs


def run_net(cv2, spec: zoo_nets.ZooNet, batch: int, repeat: int, warmup: int, folder: str) -> dict:
    fns, outs = contenders(cv2, spec, batch, folder)
    ours = outs["pycaffe"]
    theirs = outs["opencv"].reshape(ours.shape)
    t = timing.interleaved(fns, repeat, warmup)
    cv_ms = t["opencv"].median_ms
    row = {"net": spec.name, "batch": batch,
           "outputs_match": bool(np.allclose(theirs, ours, rtol=1e-3, atol=1e-4)),
           "max_abs_diff": float(np.abs(theirs - ours).max()),
           "max_abs_diff_nchw": float(np.abs(outs["pycaffe_nchw"] - ours).max())}
    for side in CONTENDERS:
        row[f"{side}_ms"] = t[side].median_ms
        row[f"{side}_iqr_ms"] = [t[side].q1_ms, t[side].q3_ms]
        if side != "opencv":
            row[f"{side}_vs_opencv"] = t[side].median_ms / cv_ms
    row["channels_last_speedup"] = t["pycaffe_nchw"].median_ms / t["pycaffe"].median_ms
    return row


def run(nets: list[tuple[zoo_nets.ZooNet, int, int]], warmup: int, device: str) -> dict:
    """OpenCV vs caffelike (pycaffe, NCHW, module) vs torch for each (net, batch, timed rounds)."""
    cv2, why = opencv()
    if cv2 is None:
        return {"status": why, "rows": []}
    if device != "cpu":
        return {"status": f"skipped: OpenCV's dnn runs on the CPU, the benchmark runs on {device}", "rows": []}
    cv2.setNumThreads(torch.get_num_threads())
    rows = []
    with tempfile.TemporaryDirectory(prefix="caffelike-bench-") as folder:
        for spec, batch, repeat in nets:
            try:
                rows.append(run_net(cv2, spec, batch, repeat, warmup, folder))
            except cv2.error as e:
                rows.append({"net": spec.name, "batch": batch, "error": f"cv2.error: {str(e).strip()[:200]}"})
    return {"status": f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads", "rows": rows}
