"""`python -m caffelike.web.classify_worker REQUEST.json RESULT.json`: the web pages' "Test a single image" and
"Test a list of images", run as a subprocess in the model job's folder.

A trained model may carry user code (a Caffe Python layer, a PyTorch model file), which must never run inside
the server: the server writes the request, runs this module with cwd = the job folder and a timeout, and reads
the result file (not stdout, which the user's code may print to).  The model is built once and every image of
the request goes through it; an image that cannot be read is reported on its own and the others go on.

Request: {"framework": "caffe"|"pytorch", "deploy", "weights", "network", "dataset", "mean_mode": "image"|
"pixel"|"none", "mean", "labels", "crop_size", "images": [[path, label index or null], ...], "visualize": a
folder for the report (first image), "input_png": a file for the first image as the model saw it}.
Result: {"results": [{"path", "predictions": [[label, probability, index], ...] (top 5), "error"}],
"labels", "num_classes", "report", and with ground truth: "top1", "top5" (percent), "confusion" (rows: true
class, columns: predicted), "per_class" (percent or null), "counted"}; or {"error", "stage": "model"} when the
model itself cannot be loaded or run.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np

from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")


class _Caffe:
    """A deploy net with its weights, built from the job folder (trusted: it is the job's own code)."""

    def __init__(self, req: dict):
        from caffelike.digits import classify
        from caffelike.net import Net
        from caffelike.proto import caffe_pb2

        self.net = Net(req["deploy"], caffe_pb2.TEST, weights=req["weights"], trust_python=True)
        self.blob = classify.input_blob(self.net)
        _, self.c, self.h, self.w = self.net.blobs[self.blob].data.shape
        self.color = classify.image_mode(self.c, None, self.blob)
        self.mean = _mean(req, (self.c, self.h, self.w))
        self.labels = classify.read_labels(req["labels"]) if req.get("labels") else None

    def read(self, path: str) -> np.ndarray:
        from caffelike.digits import classify

        return classify.load_image(path, self.h, self.w, self.color)

    def scores(self, pixels: np.ndarray, record: bool = False) -> np.ndarray:
        from caffelike.digits import classify

        classify.classify_pixels(self.net, pixels, self.mean, None)
        out = np.asarray(self.net.blobs[list(self.net.outputs)[-1]].data, dtype=np.float64)
        return out.reshape(out.shape[0], -1)[0] if out.ndim else out.reshape(1)

    def report(self, folder: str, top, pixels: np.ndarray, info: dict) -> str:
        from caffelike.digits import report

        return report.write_report(self.net, folder, top, pixels, info)


class _Torch:
    """A PyTorch model file with a .pt snapshot, preprocessed as training's validation pass (mean, crop)."""

    def __init__(self, req: dict):
        from caffelike.data.transformer import DataTransformer
        from caffelike.digits import torch_classify
        from caffelike.digits.torch_model import dataset_mean_file, transform_param
        from caffelike.proto import caffe_pb2

        self.req = req
        self.prepared = None
        self.recorder = None
        self._classify = torch_classify
        data = torch_classify.read_dataset(req["dataset"])
        self.shape = (int(data["channels"]), int(data["height"]), int(data["width"]))
        self.mean_mode = req.get("mean_mode") or "image"
        self.mean_file = req.get("mean") or dataset_mean_file(data)
        self._transformer_for = lambda crop: DataTransformer(transform_param(self.mean_mode, self.mean_file, crop),
                                                             caffe_pb2.TEST, where="classify")
        self.transformer = None
        self.labels = None

    def read(self, path: str) -> np.ndarray:
        from caffelike.digits import classify

        c, h, w = self.shape
        return classify.load_image(path, h, w, classify.image_mode(c, None, "input"))

    def load(self, path: str) -> None:
        """The model is built with the first image (prepare() needs one)."""
        req = self.req
        self.prepared = self._classify.prepare(req["network"], req["weights"], req["dataset"], path,
                                               labels=req.get("labels") or None, mean_file=req.get("mean") or None,
                                               mean=self.mean_mode, crop_size=req.get("crop_size") or None)
        self.labels = self.prepared.labels
        self.transformer = self._transformer_for(self.prepared.crop)

    def scores(self, pixels: np.ndarray, record: bool = False) -> np.ndarray:
        import torch

        p = self.prepared
        p.x = torch.from_numpy(self.transformer(pixels))[None]
        if p.crop:
            top, left = (self.shape[1] - p.crop) // 2, (self.shape[2] - p.crop) // 2
            pixels = pixels[:, top:top + p.crop, left:left + p.crop]
        p.pixels = pixels
        self.recorder = None
        if record:
            from caffelike.digits import module_report

            self.recorder = module_report.Recorder(p.model)
            with self.recorder:
                output = self._classify.forward(p)
        else:
            output = self._classify.forward(p)
        if not p.classifies:
            raise CaffeError("the model's output is not class scores (a generic dataset or a label_hook): "
                             "Test a single image shows classifications only")
        return self._classify.probabilities(self._classify.output_values(output), os.path.basename(p.spec.path))

    def report(self, folder: str, top, pixels: np.ndarray, info: dict) -> str:
        from caffelike.digits import report

        rows, total = self.recorder.rows(self.prepared.x)
        return report.write_page(folder, rows, total, top, self.prepared.pixels, info)


def _mean(req: dict, shape) -> np.ndarray | None:
    from caffelike.data.transformer import load_mean_file
    from caffelike.digits import classify

    mode, path = req.get("mean_mode") or "image", req.get("mean")
    if mode == "none" or not path:
        return None
    if mode == "pixel":
        return load_mean_file(path, "classify").reshape(shape[0], -1).mean(axis=1)
    return classify.load_mean(path, shape)


def run(req: dict) -> dict:
    from caffelike.digits import classify
    from caffelike.digits.pictures import png_bytes
    from caffelike.format.files import atomic_write
    from caffelike.train.meters import ClassErrorMeter, ConfusionMeter

    model = _Torch(req) if req.get("framework") == "pytorch" else _Caffe(req)
    results, scored = [], []  # scored: (scores, ground truth) of the images that went through
    report_path, shown = None, False
    for path, truth in req["images"]:
        entry = {"path": path, "predictions": [], "error": None}
        results.append(entry)
        try:
            pixels = model.read(path)
        except (CaffeError, OSError, ValueError) as e:
            entry["error"] = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            continue
        if isinstance(model, _Torch) and model.prepared is None:
            model.load(path)
        scores = model.scores(pixels, record=bool(req.get("visualize")) and not shown)
        top = classify.top_predictions(scores, model.labels)
        entry["predictions"] = [[p.label, p.probability, p.index] for p in top]
        scored.append((scores, truth))
        if shown:
            continue
        shown = True  # the first image read is the one pictured (an unreadable one passes it on)
        seen = model.prepared.pixels if isinstance(model, _Torch) else pixels
        if req.get("input_png") and seen is not None and seen.dtype == np.uint8:
            atomic_write(req["input_png"], png_bytes(seen[0] if seen.shape[0] == 1 else seen[::-1].transpose(1, 2, 0)))
        if req.get("visualize"):
            info = {"model": os.path.basename(req.get("deploy") or req.get("network") or ""),
                    "weights": os.path.basename(req["weights"]), "image": req.get("image_name") or path}
            report_path = model.report(req["visualize"], top, pixels, info)
    labels = model.labels
    answer = {"results": results, "labels": labels, "report": report_path,
              "num_classes": int(scored[0][0].size) if scored else None}
    truths = [(s, t) for s, t in scored if t is not None]
    if truths and labels:
        k = len(labels)
        usable = [(s[:k], t) for s, t in truths if 0 <= t < k and s.size >= k]
        if usable:
            scores = np.stack([s for s, _ in usable])
            targets = np.array([t for _, t in usable])
            meter = ClassErrorMeter(topk=(1, min(5, k)), accuracy=True)
            meter.add(scores, targets)
            confusion = ConfusionMeter(k)
            confusion.add(scores, targets)
            matrix = confusion.value()
            answer.update(top1=meter.value(1), top5=meter.value(min(5, k)), counted=len(usable),
                          confusion=matrix.tolist(),
                          per_class=[100.0 * matrix[i, i] / matrix[i].sum() if matrix[i].sum() else None
                                     for i in range(k)])
    return answer


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    request_file, result_file = argv
    with open(request_file, encoding="utf-8") as f:
        req = json.load(f)
    try:
        answer = run(req)
        code = 0
    except (CaffeError, OSError, ValueError, RuntimeError, ImportError) as e:
        text = str(e).strip()
        answer = {"error": f"{type(e).__name__}: {text}" if not isinstance(e, CaffeError) else text,
                  "stage": "model"}
        code = 2
    tmp = result_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(answer, f)
    os.replace(tmp, result_file)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
