"""DIGITS' "Test a single image" and "Test a list of images" for a trained model, with DIGITS' REST routes:

  POST /models/images/classification/classify_one[.json]   job_id, image_file (upload) or image_path (a file on
       the server), snapshot_epoch, show_visualizations  ->  {"predictions": [[label, percent], ...]} (top 5)
  POST /models/images/classification/classify_many[.json]  job_id, image_list (upload: "path [label]" lines),
       image_folder (where relative paths are), num_test_images, snapshot_epoch  ->  {"classifications":
       {path: [[label, percent], ...]}} plus, with labels, top-1/top-5 accuracy and the confusion matrix

The model runs in a subprocess (caffelike.web.classify_worker) in the job's folder, with a timeout: a Python
layer or a model file is user code and never runs inside the server.  Every run gets its own folder under the
job's inference/ (the upload, the picture of the input, the visualization report), and only the last few are
kept.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

from flask import jsonify, render_template, request, url_for

from caffelike.web.app import store, wants_json
from caffelike.web.forms import Form, FormError
from caffelike.web.jobs import JobError
from caffelike.web.model_pages import (
    bp,
    dataset_folder,
    framework,
    model_file,
    pick_snapshot,
    render_show,
)

NAMESPACE = "/models/images/classification"
MAX_LIST_LINES = 10000
KEEP_RUNS = 20
ONE_TIMEOUT_S = 300
MANY_TIMEOUT_S = 1800
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".npy"}
_LABELLED = re.compile(r"^(.*\S)\s+(\d+)$")  # DIGITS' list lines: a path, then maybe a class index


class _Answer(Exception):
    """A refusal naming one field, with its HTTP status (an unknown job is a 404, not a 400)."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def _refuse(job, e, form_id: str):
    """A bad request: JSON naming the field, or the model page again with the message beside the field."""
    if isinstance(e, FormError):
        status, fields = 400, e.errors
    else:
        status, fields = e.status, {e.field: e.message}
    if job is None and not wants_json():
        return render_template("error.html", status=status, message="; ".join(f"{k}: {v}" for k, v in
                                                                           fields.items())), status
    if wants_json():
        return jsonify({"errors": [f"{k}: {v}" for k, v in fields.items()], "fields": fields}), status
    values = {k: v for k, v in request.form.items()}
    values["form"] = form_id
    return render_show(job, fields, values, status)


def _job():
    job_id = (request.form.get("job_id") or request.args.get("job_id") or "").strip()
    if not job_id:
        raise _Answer(400, "job_id", "required: the id of a model job")
    try:
        return store().get(job_id, "model")
    except JobError:
        raise _Answer(404, "job_id", f"no model with id {job_id!r}") from None


# ------------------------------------------------------------------------------------------------- single image
@bp.route(NAMESPACE + "/classify_one.json", methods=["POST"])
@bp.route(NAMESPACE + "/classify_one", methods=["POST"])
def classify_one():
    job = None
    try:
        job = _job()
        form = Form(request.form, request.files)
        upload = form.upload("image_file")
        image_path = form.text("image_path", max_length=4096)
        visualize = form.flag("show_visualizations")
        if upload is None and not image_path:
            form.error("image_file", "give an image: upload one (image_file) or name one on the server "
                                     "(image_path)")
        elif upload is None:
            image_path = _server_file(form, "image_path", image_path)
        snap = _snapshot(form, job)
        form.check()
        run = _new_run(job)
        if upload is not None:
            image_path = os.path.join(run, "upload" + _suffix(upload.filename))
            upload.save(image_path)
        name = upload.filename if upload is not None else image_path
        request_ = _request(job, snap, [[image_path, None]], image_name=name,
                            visualize=os.path.join(run, "report") if visualize else None,
                            input_png=os.path.join(run, "input.png"))
        answer = _run_worker(job, run, request_, ONE_TIMEOUT_S)
        result = answer["results"][0]
        if result["error"]:
            raise _Answer(400, "image_file" if upload is not None else "image_path",
                          f"cannot read the image: {_short(result['error'], run)}")
    except (FormError, _Answer) as e:
        return _refuse(job, e, "classify_one")
    predictions = [[label, round(100.0 * p, 2)] for label, p, _ in result["predictions"]]
    run_id = os.path.basename(run)
    report = (url_for("models.inference_file", job_id=job.id, run=run_id, name="report/report.html")
              if answer.get("report") else None)
    if wants_json():
        body = {"predictions": predictions}
        if visualize:
            body["visualizations"] = report
        return jsonify(body)
    image = (url_for("models.inference_file", job_id=job.id, run=run_id, name="input.png")
             if os.path.isfile(os.path.join(run, "input.png")) else None)
    return render_template("classify_one.html", job=job, snapshot=snap, predictions=predictions,
                           image_src=image, image_name=name, report_url=report)


# ----------------------------------------------------------------------------------------------- list of images
@bp.route(NAMESPACE + "/classify_many.json", methods=["POST"])
@bp.route(NAMESPACE + "/classify_many", methods=["POST"])
def classify_many():
    job = None
    try:
        job = _job()
        form = Form(request.form, request.files)
        image_list = form.upload("image_list")
        folder = form.text("image_folder", max_length=4096)
        limit = form.integer("num_test_images", minimum=1, maximum=MAX_LIST_LINES)
        if folder:
            folder = os.path.abspath(os.path.expanduser(folder))
            if not os.path.isdir(folder):
                form.error("image_folder", f"{folder} is not a folder on the server")
                folder = ""
        entries = _read_list(form, image_list, folder, limit)
        snap = _snapshot(form, job)
        form.check()
        found = [e for e in entries if e[2] is None]
        if not found:
            raise _Answer(400, "image_list", "none of its images exists: " + "; ".join(
                f"{p}: {err}" for p, _, err in entries[:3]))
        run = _new_run(job)
        answer = _run_worker(job, run, _request(job, snap, [[p, t] for p, t, _ in found]),
                             min(MANY_TIMEOUT_S, 120 + len(found)))
    except (FormError, _Answer) as e:
        return _refuse(job, e, "classify_many")
    results = {r["path"]: r for r in answer["results"]}
    rows, errors = [], {p: err for p, _, err in entries if err}
    labels = answer.get("labels") or []
    for path, truth, _ in found:
        r = results.get(path)
        if r is None or r["error"]:
            errors[path] = _short(r["error"] if r else "not classified", run)
            continue
        rows.append({"path": path, "truth": labels[truth] if truth is not None and truth < len(labels) else truth,
                     "predictions": [[label, round(100.0 * p, 2)] for label, p, _ in r["predictions"]]})
    if not rows:
        raise_for = "; ".join(f"{p}: {err}" for p, err in list(errors.items())[:3])
        return _refuse(job, _Answer(400, "image_list", f"no image could be classified: {raise_for}"),
                       "classify_many")
    stats = {key: answer.get(key) for key in ("top1", "top5", "confusion", "per_class", "counted")}
    if wants_json():
        body = {"classifications": {r["path"]: r["predictions"] for r in rows}}
        if errors:
            body["errors"] = errors
        if stats["confusion"] is not None:
            body.update({"top1_accuracy": round(stats["top1"], 2), "top5_accuracy": round(stats["top5"], 2),
                         "confusion_matrix": stats["confusion"], "labels": labels,
                         "per_class_accuracy": [None if v is None else round(v, 2) for v in stats["per_class"]]})
        return jsonify(body)
    return render_template("classify_many.html", job=job, snapshot=snap, rows=rows, errors=errors,
                           labels=labels, stats=stats)


def _read_list(form: Form, upload, folder: str, limit: int | None) -> list[tuple[str, int | None, str | None]]:
    """(path, label or None, why it cannot be used or None) for the list's lines, at most MAX_LIST_LINES."""
    if upload is None:
        form.error("image_list", "required: a text file with one image path per line (optionally followed by "
                                 "its class index)")
        return []
    raw = upload.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        form.error("image_list", "must be a UTF-8 text file of image paths")
        return []
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > MAX_LIST_LINES:
        form.error("image_list", f"has {len(lines)} lines; at most {MAX_LIST_LINES} images can be tested at once")
        return []
    if not lines:
        form.error("image_list", "is empty")
        return []
    entries = []
    for line in lines[:limit]:
        m = _LABELLED.match(line)
        path, truth = (m.group(1), int(m.group(2))) if m else (line, None)
        path = os.path.expanduser(path)
        if not os.path.isabs(path):
            if not folder:
                entries.append((path, truth, "a relative path needs image_folder"))
                continue
            path = os.path.join(folder, path)
        path = os.path.abspath(path)
        entries.append((path, truth, None if os.path.isfile(path) else "no such file"))
    return entries


# -------------------------------------------------------------------------------------------------- the worker
def _snapshot(form: Form, job) -> dict | None:
    try:
        return pick_snapshot(job, request.form.get("snapshot_epoch"))
    except FormError as e:
        for k, v in e.errors.items():
            form.error(k, v)
        return None


def _server_file(form: Form, field: str, path: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        form.error(field, f"must be an absolute path on the server, got {path!r}")
    elif not os.path.exists(path):
        form.error(field, f"{path} does not exist on the server")
    elif not os.path.isfile(path):
        form.error(field, f"{path} is not a file")
    return path


def _suffix(filename: str) -> str:
    suffix = os.path.splitext(filename or "")[1].lower()
    return suffix if suffix in IMAGE_SUFFIXES else ".img"


def _new_run(job) -> str:
    """A fresh folder under the job's inference/, the oldest ones beyond KEEP_RUNS removed."""
    root = job.path("inference")
    os.makedirs(root, exist_ok=True)
    runs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for old in runs[:max(0, len(runs) - KEEP_RUNS + 1)]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    run = job.path("inference", time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(4))
    os.makedirs(run)
    return run


def _request(job, snap: dict, images: list, **extra) -> dict:
    dataset = dataset_folder(job)
    mean_mode = job.data.get("mean") or "image"
    mean = os.path.join(dataset, "mean.binaryproto") if dataset else None
    labels = os.path.join(dataset, "labels.txt") if dataset else None
    req = {"framework": framework(job), "weights": job.path(snap["file"]), "images": images,
           "mean_mode": mean_mode if mean and os.path.isfile(mean) else "none",
           "mean": mean if mean and os.path.isfile(mean) else None,
           "labels": labels if labels and os.path.isfile(labels) else None, **extra}
    if req["framework"] == "pytorch":
        if not dataset:
            raise JobError(f"model {job.name!r}: its dataset is gone; a PyTorch model needs it to classify", 409)
        req.update(network=model_file(job, "network", "model.py"), dataset=dataset,
                   crop_size=job.data.get("crop_size") or None)
    else:
        req["deploy"] = model_file(job, "deploy", "deploy.prototxt")
    return req


def _run_worker(job, run: str, req: dict, timeout: float) -> dict:
    """Run caffelike.web.classify_worker in the job folder; its answer, or a JobError saying why not."""
    request_file, result_file = os.path.join(run, "request.json"), os.path.join(run, "result.json")
    with open(request_file, "w", encoding="utf-8") as f:
        json.dump(req, f)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    env["CUDA_VISIBLE_DEVICES"] = ""  # the GPUs belong to the training jobs
    with open(os.path.join(run, "worker.log"), "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "caffelike.web.classify_worker", request_file, result_file],
                                cwd=job.dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise JobError(f"classifying with model {job.name!r} took longer than {int(timeout)} s and was "
                           "stopped", 504) from None
    try:
        with open(result_file, encoding="utf-8") as f:
            answer = json.load(f)
    except (OSError, ValueError):
        raise JobError(f"the classification process of model {job.name!r} failed (exit status {proc.returncode})"
                       f": {_tail(os.path.join(run, 'worker.log'))}", 500) from None
    if answer.get("error"):
        raise JobError(f"model {job.name!r} could not classify: {_short(answer['error'], job.dir)}", 500)
    return answer


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return " / ".join(text[-lines:]) or "no output"


def _short(message: str, folder: str) -> str:
    """A worker's message without the server's folders (the job's own folder is named by the page)."""
    message = re.sub(r" <_io\.\w+ object at 0x[0-9a-f]+>", "", message or "")
    return message.replace(folder + os.sep, "")
