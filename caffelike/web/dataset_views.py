"""Dataset jobs: the new image-classification dataset form and DIGITS' REST route, and a dataset's page.

    GET  /datasets/new, /datasets/images/classification/new   the form (?clone=<id> pre-fills it)
    POST /datasets/images/classification[.json]              create: {job_id, id, name, status} or {errors}
    GET  /datasets/<id>, /datasets/<id>.json                  the page; DIGITS' {id, name, directory, status, ...}
    GET  /datasets/<id>/mean.jpg, /samples/<n>.png, /files/<name>   the mean, samples, list files
"""
from __future__ import annotations

import io
import logging
import os

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from werkzeug.exceptions import RequestEntityTooLarge

from caffelike.web import dataset_form, dataset_info
from caffelike.web.app import (
    job_folder_file,
    register_event_extra,
    scheduler,
    store,
    wants_json,
)
from caffelike.web.forms import FormError
from caffelike.web.uploads import (
    DEFAULT_MAX_EXTRACT_BYTES,
    DEFAULT_MAX_MEMBERS,
    UploadError,
    extract_archive,
    save_upload,
)

log = logging.getLogger("caffelike")

bp = Blueprint("datasets", __name__)
NAMESPACE = "/datasets/images/classification"
IMAGES_DIR = "images"  # where an uploaded archive is unpacked, inside the job folder
LIST_FILES = ("labels.txt", "train.txt", "val.txt", "test.txt", "dataset.json")


@bp.record_once
def _events(state) -> None:
    register_event_extra(state.app, "dataset", dataset_info.progress)


# ------------------------------------------------------------------------------------------------------- new
@bp.route(NAMESPACE + "/new")
@bp.route("/datasets/new")  # the rule nearest the function is registered first: url_for builds it
def new():
    values, note = {}, ""
    clone = request.args.get("clone")
    if clone:
        source = store().get(clone, "dataset")
        values = dict(source.params)
        if values.get("method") == "upload":
            note = "The archive of the cloned dataset cannot be pre-filled: choose it again."
    return _form_page(values, {}, note=note)


def _form_page(values: dict, errors: dict, status: int = 200, note: str = ""):
    shown = dict(dataset_form.DEFAULTS)
    shown.update(values)
    return render_template("dataset_new.html", values=shown, errors=errors, note=note,
                           resize_modes=dataset_form.RESIZE_MODES, encodings=dataset_form.ENCODINGS,
                           max_side=dataset_form.MAX_SIDE), status


@bp.route(NAMESPACE + ".json", methods=["POST"])
@bp.route(NAMESPACE, methods=["POST"])
def create():
    try:
        values = _submitted_values()
    except RequestEntityTooLarge:
        limit = (current_app.config.get("MAX_CONTENT_LENGTH") or 0) / (1 << 20)
        errors = {"archive": f"the upload is larger than the server's limit of {limit:.0f} MiB (serve "
                             "--max-upload-mb); give a folder on the server instead"}
        if request.path.endswith(".json"):  # wants_json() would read the refused body again
            return jsonify({"errors": [f"archive: {errors['archive']}"], "fields": errors}), 413
        return _form_page({}, errors, 413)
    try:
        job = _create_job(values, request.files)
    except FormError as e:
        if wants_json():
            raise
        return _form_page(dataset_form.form_values(values), e.errors, 400)
    if wants_json():
        return jsonify({"job_id": job.id, "id": job.id, "name": job.name, "status": job.status})
    return redirect(url_for("datasets.show", job_id=job.id))


def _submitted_values():
    if request.is_json:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise FormError({"body": "send the fields as a form, or as one JSON object"})
        return body
    return request.form


def _create_job(values, files):
    spec, kept, errors = dataset_form.read_form(values, files)
    if errors:
        raise FormError(errors)
    source = {"bundled": {"type": "bundled"}, "folder": {"type": "folder", "folder": spec.get("folder")},
              "upload": {"type": "upload", "archive": getattr(spec.get("archive"), "filename", None)}}
    data = {"source": source[spec["method"]], "group": spec["group"],
            "image": {"channels": spec["channels"], "height": spec["height"], "width": spec["width"],
                      "resize_mode": spec["resize_mode"], "encoding": spec["encoding"], "backend": "lmdb"}}
    job = store().create("dataset", spec["name"], kept, data=data)
    try:
        folder = spec.get("folder")
        if spec["method"] == "upload":
            folder = _unpack(job, spec["archive"])
        job.command = dataset_form.command(spec, folder)
        store().save(job)
    except BaseException:
        store().delete(job.id)  # nothing of a refused request stays behind
        raise
    scheduler().enqueue(job)
    return job


def _unpack(job, archive) -> str:
    """Save and unpack the uploaded archive into the job folder; the class folder, relative to the job's."""
    config = current_app.config
    try:
        name = "upload" + next(e for e in sorted(dataset_form.ARCHIVE_EXTENSIONS, key=len, reverse=True)
                               if archive.filename.lower().endswith(e))
        path = save_upload(archive, job.dir, name, max_bytes=config.get("MAX_CONTENT_LENGTH") or (1 << 40))
        try:
            extract_archive(path, job.path(IMAGES_DIR),
                            max_bytes=config.get("UPLOAD_MAX_EXTRACT_BYTES", DEFAULT_MAX_EXTRACT_BYTES),
                            max_members=config.get("UPLOAD_MAX_MEMBERS", DEFAULT_MAX_MEMBERS))
        finally:
            os.unlink(path)
        root = dataset_form.class_root(job.path(IMAGES_DIR))
        problem = dataset_form.class_folder_problem(root)
        if problem:
            raise UploadError(problem.replace("the folder", "the archive"))
    except UploadError as e:
        raise FormError({"archive": str(e)}) from None
    return os.path.relpath(root, job.dir)


# ------------------------------------------------------------------------------------------------------ show
@bp.route("/datasets/<job_id>.json")
@bp.route("/datasets/<job_id>")
def show(job_id):
    job = store().get(job_id.removesuffix(".json"), "dataset")
    info = dataset_info.summary(job)
    if wants_json():
        return jsonify(_json(job, info))
    splits, rows, totals, samples = [], [], {}, {}
    samples_error = ""
    if info:
        splits, rows, totals = dataset_info.class_table(info)
        try:
            samples = dataset_info.samples(job, info)
        except Exception as e:  # noqa: BLE001 - a damaged database costs the samples, never the page
            log.warning("dataset %s: no samples: %s", job.id, e)
            samples_error = f"the samples could not be read: {e}"
    return render_template("dataset_show.html", job=job, info=info, splits=splits, rows=rows, totals=totals,
                           samples=samples, samples_error=samples_error, progress=dataset_info.progress(job),
                           params=job.params)


def _json(job, info) -> dict:
    out = job.summary()
    out.update({"job_type": "Image Classification Dataset", "status_history": job.history,
                "params": job.params, "source": job.data.get("source")})
    if info:
        out.update({"labels": info.get("labels", []), "num_classes": len(info.get("labels", [])),
                    "counts": info.get("counts", {}), "per_class": info.get("per_class", {}),
                    "image_channels": info.get("channels"), "image_height": info.get("height"),
                    "image_width": info.get("width"), "image_type": info.get("image_type"),
                    "encoding": info.get("encoding"), "resize_mode": info.get("resize_mode"),
                    "backend": info.get("backend", "lmdb"), "dataset_directory": job.path(dataset_info.DATASET_DIR),
                    "mean_file": job.path(dataset_info.DATASET_DIR, "mean.binaryproto"),
                    "mean_image_url": url_for("datasets.mean_image", job_id=job.id)})
        out.update(dataset_info.digits_tasks(info))
    else:
        out.update(dataset_info.progress(job))
    return out


# ----------------------------------------------------------------------------------------------------- files
def _inside(job, *parts) -> str:
    return job_folder_file(job, os.path.join(*parts))


@bp.route("/datasets/<job_id>/mean.jpg")
def mean_image(job_id):
    job = store().get(job_id, "dataset")
    if os.path.isfile(job.path(dataset_info.DATASET_DIR, "mean.jpg")):
        return send_file(_inside(job, dataset_info.DATASET_DIR, "mean.jpg"), mimetype="image/jpeg", max_age=0)
    data = dataset_info.mean_png(job) if job.status == "Done" else None
    if data is None:
        abort(404, description="this dataset has no mean image (yet)")
    return send_file(io.BytesIO(data), mimetype="image/png", max_age=0)


@bp.route("/datasets/<job_id>/samples/<name>")
def sample(job_id, name):
    job = store().get(job_id, "dataset")
    if not dataset_info.SAMPLE_NAME.match(name):
        abort(404)
    return send_file(_inside(job, dataset_info.SAMPLES_DIR, name), mimetype="image/png", max_age=0)


@bp.route("/datasets/<job_id>/files/<name>")
def list_file(job_id, name):
    job = store().get(job_id, "dataset")
    if name not in LIST_FILES:
        abort(404, description=f"only {', '.join(LIST_FILES)} are served")
    path = _inside(job, dataset_info.DATASET_DIR, name)
    mimetype = "application/json" if name.endswith(".json") else "text/plain; charset=utf-8"
    with open(path, "rb") as f:
        return Response(f.read(), mimetype=mimetype)
