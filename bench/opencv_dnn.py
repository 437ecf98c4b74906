"""Inference of the zoo nets in OpenCV's dnn module, beside caffelike and the hand-written torch module.

OpenCV reads the same prototxt (batch set) and the same .caffemodel that caffelike saved with net.save, through
cv2.dnn.readNetFromCaffe (opencv-python-headless below 5: OpenCV 5 dropped the Caffe importer).  It is an
optional dependency: without it, or with an OpenCV that cannot read Caffe files, the section reports why.
Before timing, OpenCV's output is compared with caffelike's (the max difference goes in the report; a
mismatch is reported, not raised, as OpenCV is not ours to fix).  The three run interleaved, with OpenCV held
to torch's thread count.  Ratios: caffelike / OpenCV and hand-written torch / OpenCV.
"""
from __future__ import annotations

import tempfile

import numpy as np
import torch

from bench import handwritten, timing, zoo_nets


def opencv():
    """(cv2 module, None), or (None, why it cannot be used)."""
    try:
        import cv2
    except ImportError:
        return None, "not installed (pip install \"opencv-python-headless<5\")"
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        return None, f"OpenCV {cv2.__version__} has no Caffe importer (it was dropped in OpenCV 5)"
    return cv2, None


def run_net(cv2, spec: zoo_nets.ZooNet, batch: int, repeat: int, warmup: int, folder: str) -> dict:
    net = zoo_nets.build(spec, batch)
    hand = handwritten.load_from(handwritten.MODULES[spec.name](), net)
    x = zoo_nets.sample_input(spec, batch)
    prototxt, caffemodel = zoo_nets.write_files(spec, net, folder)
    cv_net = cv2.dnn.readNetFromCaffe(prototxt, caffemodel)
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    blob = np.ascontiguousarray(x.numpy())

    def cv_forward():
        cv_net.setInput(blob)
        return cv_net.forward()

    with torch.no_grad():
        (_, ours), = net(data=x).items()
    theirs = torch.from_numpy(np.array(cv_forward())).reshape(ours.shape)
    diff = float((theirs - ours).abs().max())
    matches = bool(torch.allclose(theirs, ours, rtol=1e-3, atol=1e-4))

    def no_grad(call):
        def run():
            with torch.no_grad():
                call()
        return run

    t = timing.interleaved({"opencv": cv_forward, "caffelike": no_grad(lambda: net(data=x)),
                            "torch": no_grad(lambda: hand(x))}, repeat, warmup)
    cv_ms = t["opencv"].median_ms
    return {"net": spec.name, "batch": batch, "opencv_ms": cv_ms, "caffelike_ms": t["caffelike"].median_ms,
            "torch_ms": t["torch"].median_ms, "caffelike_vs_opencv": t["caffelike"].median_ms / cv_ms,
            "torch_vs_opencv": t["torch"].median_ms / cv_ms, "outputs_match": matches, "max_abs_diff": diff,
            **{f"{side}_iqr_ms": [t[side].q1_ms, t[side].q3_ms] for side in t}}


def run(nets: list[tuple[zoo_nets.ZooNet, int, int]], warmup: int, device: str) -> dict:
    """OpenCV vs caffelike vs torch for each (net, batch, timed rounds)."""
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
