"""A model's pages: live training (curves, log, time, abort) and the trained model (download, test one image,
test a list of images).  Its routes hang on model_views' blueprint, under /models/<id>; the classification
routes are in model_inference.

Training is followed through the job's log (caffelike.web.train_log), never through the training process:
the curves are drawn server-side with matplotlib as SVG (caffelike.digits.curves) against epochs
(iteration / train_iter from job.data), and the server-sent events of /jobs/<id>/events gain the progress and a
`curves_version` that changes when a curve gains a point, so the page reloads the picture only then.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import threading
import time
import zipfile

from flask import Response, abort, jsonify, render_template, request, send_file, url_for

from caffelike.web.app import job_folder_file, register_event_extra, store, wants_json
from caffelike.web.forms import FormError
from caffelike.web.jobs import DONE, RUNNING, JobError
from caffelike.web.model_views import bp
from caffelike.web.train_log import job_log

CURVES_SIZE = (900, 560)
ARCHIVES = {"tar.gz": "w:gz", "tgz": "w:gz", "tar": "w", "zip": None}
CURVE_CACHE_SIZE = 32
_curve_cache: dict[str, tuple[tuple, bytes]] = {}
_curve_lock = threading.Lock()  # matplotlib's rc settings are process-wide: one drawing at a time


# --------------------------------------------------------------------------------------------------- the model
def framework(job) -> str:
    return job.data.get("framework", "caffe")


def model_file(job, role: str, default: str | None = None) -> str | None:
    """A file of the job named in job.data["files"] (train_val, deploy, solver, python_layer, network)."""
    name = job.data.get("files", {}).get(role, default)
    return job.path(name) if name else None


def dataset_folder(job) -> str | None:
    """The DIGITS dataset folder the model was trained on (its dataset job's "dataset" subfolder)."""
    dataset_id = job.data.get("dataset")
    try:
        dataset = store().get(dataset_id, "dataset") if dataset_id else None
    except JobError:
        return None
    return dataset.path("dataset") if dataset is not None else None


def epoch_of(job, iteration: int | None):
    """DIGITS' epoch of an iteration: iteration / train_iter (a whole number shown without decimals)."""
    if iteration is None:
        return None
    per_epoch = job.data.get("train_iter") or 0
    if not per_epoch:
        return iteration
    value = iteration / per_epoch
    return int(value) if value == int(value) else round(value, 2)


def snapshots(job) -> list[dict]:
    """The snapshots on disk, oldest first: {"iteration", "epoch", "file"} (file relative to the job folder)."""
    prefix = job.data.get("snapshot_prefix", "snapshot")
    ext = ".pt" if framework(job) == "pytorch" else ".caffemodel"
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"_iter_(\d+)" + re.escape(ext) + "$")
    folder = os.path.dirname(job.path(prefix))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = []
    for name in names:
        m = pattern.match(name)
        if m and os.path.isfile(os.path.join(folder, name)):
            it = int(m.group(1))
            found.append({"iteration": it, "epoch": epoch_of(job, it),
                          "file": os.path.relpath(os.path.join(folder, name), job.dir)})
    return sorted(found, key=lambda s: s["iteration"])


def pick_snapshot(job, raw, field: str = "snapshot_epoch") -> dict:
    """The snapshot of the epoch asked for (DIGITS' snapshot_epoch; empty, 0 or -1: the last one)."""
    found = snapshots(job)
    if not found:
        raise FormError({field: f"model {job.name!r} has no snapshot yet ({job.status.lower()})"})
    raw = str(raw if raw is not None else "").strip()
    if raw in ("", "0", "-1"):
        return found[-1]
    try:
        wanted = float(raw)
    except ValueError:
        raise FormError({field: f"must be an epoch number, got {raw!r}"}) from None
    for snap in found:
        if abs(float(snap["epoch"]) - wanted) < 1e-6:
            return snap
    listed = ", ".join(str(s["epoch"]) for s in found)
    raise FormError({field: f"no snapshot at epoch {raw}; this model has snapshots at epochs {listed}"})


def progress(job) -> dict:
    """Where training stands: iteration, max_iter, epoch, progress (0..1), remaining seconds, curves_version."""
    parsed = job_log(job)
    max_iter = job.data.get("max_iter") or parsed.max_iter
    iteration = parsed.iteration
    if job.status == DONE:
        fraction = 1.0
    elif max_iter and iteration is not None:
        fraction = min(1.0, iteration / max_iter)
    else:
        fraction = 0.0
    remaining = parsed.remaining(max_iter, time.time()) if job.status == RUNNING else (0.0 if job.status == DONE
                                                                                       else None)
    return {"iteration": iteration, "max_iter": max_iter, "epoch": epoch_of(job, iteration),
            "progress": round(fraction, 4), "remaining": remaining, "curves_version": parsed.version}


def live_state(job) -> dict:
    """What a model page's events add to the job's state: the progress and the latest values."""
    return {**progress(job), "latest": _finite(job_log(job).latest())}


@bp.record_once
def _register(state) -> None:
    register_event_extra(state.app, "model", live_state)


def summary(job) -> dict:
    """DIGITS' /models/<id>.json fields, with the parsed latest values and the training progress."""
    parsed = job_log(job)
    found = snapshots(job)
    d = job.summary()
    d.update({"status_history": job.history, "framework": framework(job), "dataset_id": job.data.get("dataset"),
              "snapshots": [s["epoch"] for s in found], "snapshot_files": {str(s["epoch"]): s["file"] for s in found},
              "train_iter": job.data.get("train_iter"), "epochs": job.data.get("epochs"),
              "latest": _finite(parsed.latest()), "job id": job.id, "creation time": job.created})
    d.update(progress(job))
    return d


def _finite(value):
    """JSON has no NaN or infinity (a diverged loss): those values become null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -------------------------------------------------------------------------------------------------- the pages
def render_show(job, errors=None, values=None, status: int = 200):
    found = snapshots(job)
    dataset_id = job.data.get("dataset")
    files = {role: name for role, name in job.data.get("files", {}).items()
             if name and os.path.isfile(job.path(name))}
    return render_template("model_show.html", job=job, state=progress(job), snapshots=found, files=files,
                           framework=framework(job), dataset_id=dataset_id, latest=job_log(job).latest(),
                           errors=errors or {}, values=values or {}), status


@bp.route("/models/<job_id>.json")
@bp.route("/models/<job_id>")  # registered first: url_for("models.show") is the page
def show(job_id):
    job = store().get(job_id, "model")
    if wants_json():
        return jsonify(summary(job))
    return render_show(job)


@bp.route("/models/<job_id>/curves.svg")
def curves(job_id):
    job = store().get(job_id, "model")
    parsed = job_log(job)
    key = (parsed.version, job.data.get("train_iter"), job.name)
    with _curve_lock:
        cached = _curve_cache.get(job.id)
        if cached is None or cached[0] != key:
            cached = (key, _draw(job, parsed))
            _curve_cache[job.id] = cached
            while len(_curve_cache) > CURVE_CACHE_SIZE:
                _curve_cache.pop(next(iter(_curve_cache)))
    return Response(cached[1], mimetype="image/svg+xml", headers={"Cache-Control": "no-cache"})


def _draw(job, parsed) -> bytes:
    """The curves as SVG against epochs (text kept as text, so the legend can be read and searched)."""
    import matplotlib

    from caffelike.digits.curves import training_figure

    per_epoch = job.data.get("train_iter") or 0

    def x(series):
        return [(it / per_epoch if per_epoch else it, v) for it, v in series]

    curves = parsed.series()
    train = {name: x(s) for name, s in curves["train"].items()}
    test = {name: x(s) for name, s in curves["test"].items()}
    fig = training_figure(train, test, x(curves["lr"]), size=CURVES_SIZE, title=job.name)
    fig.caffelike_axes["lr"].set_xlabel("epoch" if per_epoch else "iteration")
    for legend in fig.legends:
        for text in legend.get_texts():  # DIGITS calls the test phase's outputs the validation ones
            if text.get_text().startswith("test "):
                text.set_text("val " + text.get_text()[5:])
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "caffelike"}):
        fig.savefig(buf, format="svg")
    return buf.getvalue()


@bp.route("/models/<job_id>/files/<path:name>")
def model_files(job_id, name):
    """The job's model files as text (prototxts, the Python layer, the model file, the log)."""
    job = store().get(job_id, "model")
    allowed = set(job.data.get("files", {}).values()) | {"job.log", "original.prototxt"}
    if name not in allowed:
        abort(404)
    path = job_folder_file(job, name)
    return send_file(path, mimetype="text/plain", as_attachment=False, max_age=0)


@bp.route("/models/<job_id>/inference/<run>/<path:name>")
def inference_file(job_id, run, name):
    """A classification's pictures and visualization report, from the job's inference folder."""
    job = store().get(job_id, "model")
    name = os.path.normpath(name)
    if not re.fullmatch(r"[0-9a-f-]{8,40}", run) or not (name == "input.png" or name.startswith("report" + os.sep)):
        abort(404)  # a run's picture and report only (not its request or log)
    base = job.path("inference", run)
    path = os.path.abspath(os.path.join(base, name))
    if not path.startswith(os.path.join(base, "")) or not os.path.isfile(path):
        abort(404)
    response = send_file(path, max_age=0)
    # The report is our own page, but names in it come from the user's network: no scripts run in it.
    response.headers["Content-Security-Policy"] = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# ---------------------------------------------------------------------------------------------------- download
@bp.route("/models/<job_id>/download")
@bp.route("/models/<job_id>/download.<extension>")
def download(job_id, extension="tar.gz"):
    """The trained model as DIGITS packs it: deploy net (or model file), weights, labels, mean, info.json."""
    job = store().get(job_id, "model")
    if extension not in ARCHIVES:
        raise FormError({"extension": f"must be one of {', '.join(ARCHIVES)}; got {extension!r}"})
    snap = pick_snapshot(job, request.args.get("epoch", request.args.get("snapshot_epoch")), "epoch")
    members = archive_members(job, snap)
    buf = _archive(members, extension)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", job.name).strip("_") or job.id
    return send_file(buf, mimetype="application/zip" if extension == "zip" else "application/gzip"
                     if "gz" in extension else "application/x-tar", as_attachment=True,
                     download_name=f"{name}_epoch_{snap['epoch']}.{extension}")


def archive_members(job, snap: dict) -> list[tuple[str, str | bytes]]:
    """(name in the archive, file path or contents) for one snapshot."""
    members: list[tuple[str, str | bytes]] = []
    files = job.data.get("files", {})
    roles = ("network",) if framework(job) == "pytorch" else ("deploy", "train_val", "solver", "original")
    for role in (*roles, "python_layer"):
        name = files.get(role) or ("original.prototxt" if role == "original" else None)
        if name and os.path.isfile(job.path(name)):
            members.append((os.path.basename(name), job.path(name)))
    members.append((os.path.basename(snap["file"]), job.path(snap["file"])))
    dataset = dataset_folder(job)
    for extra in ("labels.txt", "mean.binaryproto"):
        if dataset and os.path.isfile(os.path.join(dataset, extra)):
            members.append((extra, os.path.join(dataset, extra)))
    info = {"job id": job.id, "name": job.name, "framework": framework(job), "snapshot file":
            os.path.basename(snap["file"]), "snapshot epoch": snap["epoch"], "snapshot iteration": snap["iteration"],
            "dataset id": job.data.get("dataset"), "creation time": time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(job.created)), "mean": job.data.get("mean"),
            "crop size": job.data.get("crop_size"), "input shape": job.data.get("input_shape"),
            "files": [n for n, _ in members]}
    members.append(("info.json", json.dumps(info, indent=1).encode()))
    return members


def _archive(members, extension: str):
    import tempfile

    buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 (send_file closes it; big weights go to disk)
    if ARCHIVES[extension] is None:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, src in members:
                if isinstance(src, bytes):
                    z.writestr(name, src)
                else:
                    z.write(src, name)
    else:
        with tarfile.open(fileobj=buf, mode=ARCHIVES[extension]) as t:
            for name, src in members:
                if isinstance(src, bytes):
                    entry = tarfile.TarInfo(name)
                    entry.size, entry.mtime, entry.mode = len(src), int(time.time()), 0o644
                    t.addfile(entry, io.BytesIO(src))
                else:
                    t.add(src, arcname=name, recursive=False)
    buf.seek(0)
    return buf


def clone_url(job) -> str:
    return url_for("models.new", clone=job.id)


from caffelike.web import model_inference  # noqa: F401  (adds the classification routes to bp)
