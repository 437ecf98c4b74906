"""Model jobs: the new model form (Caffe networks and PyTorch model files) and DIGITS' REST route.

    GET  /models/new, /models/images/classification/new          the form (?clone=<job id> pre-fills it)
    POST /models/images/classification[.json]                    create a model job: {job_id, name, status}

Field names are DIGITS' (digits/model/forms.py and images/classification/forms.py).  Every bad value is a message
beside its field (the page) or a 400 `{"errors": [...], "fields": {...}}` (the API), checked before anything is
queued; a bad network is refused at submit time, never as a failed job.
"""
from __future__ import annotations

import os
import shutil

from flask import (
    Blueprint,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from caffelike.errors import CaffeError
from caffelike.web import model_prep as prep
from caffelike.web.app import scheduler, store, wants_json
from caffelike.web.forms import Form, FormError
from caffelike.web.jobs import ABORTED, DONE, ERROR, JobError
from caffelike.web.uploads import UploadError, save_upload

bp = Blueprint("models", __name__)

LR_POLICIES = ("fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid")
MEAN_CHOICES = ("image", "pixel", "none")
FRAMEWORKS = {"caffe": "caffe", "torch": "pytorch", "pytorch": "pytorch"}
MAX_PYTHON_LAYER_BYTES = 16 << 20


def form_defaults() -> dict:
    """DIGITS' form defaults; the lr policy ones are the same numbers the PyTorch trainer uses."""
    from caffelike.digits.torch_training import POLICY_DEFAULTS as P

    return {"framework": "caffe", "method": "standard", "standard_networks": "lenet", "train_epochs": "30",
            "snapshot_interval": "1", "val_interval": "1", "solver_type": "SGD", "learning_rate": "0.01",
            "lr_policy": "step", "use_mean": "image", "rms_decay": "0.99",
            "lr_step_size": str(P["step"]["stepsize"]), "lr_step_gamma": str(P["step"]["gamma"]),
            "lr_multistep_values": ",".join(str(v) for v in P["multistep"]["stepvalue"]),
            "lr_multistep_gamma": str(P["multistep"]["gamma"]), "lr_exp_gamma": str(P["exp"]["gamma"]),
            "lr_inv_gamma": str(P["inv"]["gamma"]), "lr_inv_power": str(P["inv"]["power"]),
            "lr_poly_power": str(P["poly"]["power"]), "lr_sigmoid_step": str(P["sigmoid"]["stepsize"]),
            # DIGITS' form shows the sigmoid's gamma positive; the solver gets it negated (a falling rate).
            "lr_sigmoid_gamma": str(P["sigmoid"]["gamma"])}


# ------------------------------------------------------------------------------------------------- routes
@bp.record
def _register_prepare(state):
    state.app.extensions["caffelike.scheduler"].prepare["model"] = prep.prepare_pending


# (Stacked routes register bottom first, and url_for builds the first: the canonical URL goes last.)
@bp.route("/models/images/generic/new")
@bp.route("/models/images/classification/new")
@bp.route("/models/new")
def new():
    values = {}
    clone = request.args.get("clone")
    if clone:
        values = clone_values(store().get(clone, "model"))
    return render_template("model_new.html", **page(values, {}))


@bp.route("/models/images/generic.json", methods=["POST"])
@bp.route("/models/images/generic", methods=["POST"])
@bp.route("/models/images/classification.json", methods=["POST"])
@bp.route("/models/images/classification", methods=["POST"])
def create():
    values = request.get_json(silent=True) if request.is_json else request.form
    if not isinstance(values, dict):
        values = {}
    try:
        job = submit(Form(values, request.files))
    except FormError as e:
        if wants_json():
            raise
        return render_template("model_new.html", **page(_flat(values), e.errors)), 400
    if wants_json():
        return jsonify({"job_id": job.id, "id": job.id, "name": job.name, "status": job.status})
    return redirect(url_for("models.show", job_id=job.id))


# ------------------------------------------------------------------------------------------------ the page
def page(values: dict, errors: dict) -> dict:
    shown = form_defaults()
    shown.update({k: v for k, v in values.items() if v not in (None, "")})
    datasets = [j for j in store().list("dataset") if j.status == DONE or j.active]
    previous = [j for j in store().list("model") if prep.last_snapshot(j) is not None]
    return {"values": shown, "errors": errors, "datasets": datasets, "previous": previous,
            "caffe_networks": list(prep.CAFFE_STANDARD), "torch_networks": list(prep.TORCH_STANDARD),
            "solver_types": list(prep.SOLVER_TYPES), "lr_policies": LR_POLICIES, "mean_choices": MEAN_CHOICES,
            "gpu_ids": scheduler().gpu_ids}


def clone_values(job) -> dict:
    """The form as `job` was created; files it was given by upload are offered by their path in its folder."""
    values = dict(job.params)
    if os.path.isfile(os.path.join(job.dir, prep.PYTHON_LAYER_FILE)) and not values.get("python_layer_server_file"):
        values["python_layer_server_file"] = os.path.join(job.dir, prep.PYTHON_LAYER_FILE)
    uploaded = job.data.get("uploaded_weights")
    if uploaded and not values.get("custom_network_snapshot"):
        values["custom_network_snapshot"] = os.path.join(job.dir, uploaded)
    return values


def _flat(values) -> dict:
    if hasattr(values, "getlist"):
        out = {k: values.get(k) for k in values}
        if "select_gpus" in values:
            out["select_gpus"] = ",".join(values.getlist("select_gpus"))
        return out
    return {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in dict(values).items()}


# ---------------------------------------------------------------------------------------------- the fields
def _single(form: Form, field: str, kind, *, minimum=None, default=None):
    """DIGITS' Multi*Field (a sweep of values): one value is accepted here, as a number or a one-element list."""
    raw = form.values.get(field)
    if hasattr(form.values, "getlist") and len(form.values.getlist(field)) > 1:
        raw = form.values.getlist(field)
    if isinstance(raw, list):
        raw = ",".join(map(str, raw))
    text = str(raw if raw is not None else "").strip().strip("[]").strip()
    if not text:
        return default
    if "," in text:
        form.error(field, f"give one value, not a list ({text}): sweeps of several jobs are not supported")
        return default
    probe = Form({field: text})
    value = (probe.integer if kind is int else probe.number)(field, default, minimum=minimum)
    for name, message in probe.errors.items():
        form.error(name, message)
    return value


def _dataset(form: Form):
    dataset_id = form.text("dataset", required=True)
    if not dataset_id:
        return None
    try:
        ds = store().get(dataset_id, "dataset")
    except JobError:
        form.error("dataset", f"no dataset with id {dataset_id!r}")
        return None
    if ds.status in (ERROR, ABORTED):
        form.error("dataset", f"dataset {ds.name!r} ended {ds.status}; choose another")
        return None
    return ds


def _lr_policy(form: Form) -> dict:
    defaults = form_defaults()
    name = form.choice("lr_policy", LR_POLICIES, "step")

    def number(field):
        return form.number(field, float(defaults[field]))

    policy = {"policy": name}
    if name == "step":
        policy.update(stepsize=form.number("lr_step_size", float(defaults["lr_step_size"]), positive=True),
                      gamma=number("lr_step_gamma"))
    elif name == "multistep":
        raw = form.text("lr_multistep_values", defaults["lr_multistep_values"])
        try:
            steps = [float(v) for v in raw.split(",") if v.strip()]
            if not steps or any(v <= 0 for v in steps):
                raise ValueError
        except ValueError:
            form.error("lr_multistep_values", f"comma-separated percentages of the training > 0, got {raw!r}")
            steps = [50.0]
        policy.update(stepvalue=steps, gamma=number("lr_multistep_gamma"))
    elif name == "exp":
        policy["gamma"] = form.number("lr_exp_gamma", float(defaults["lr_exp_gamma"]), positive=True)
    elif name == "inv":
        policy.update(gamma=number("lr_inv_gamma"), power=number("lr_inv_power"))
    elif name == "poly":
        policy["power"] = number("lr_poly_power")
    elif name == "sigmoid":
        policy.update(stepsize=form.number("lr_sigmoid_step", float(defaults["lr_sigmoid_step"]), positive=True),
                      gamma=number("lr_sigmoid_gamma"))
    return policy


def _gpus(form: Form) -> int:
    """How many GPU slots the job takes (0: CPU).  The scheduler gives it free GPUs of the server's list."""
    available = scheduler().gpu_ids
    values = form.values
    raw = values.getlist("select_gpus") if hasattr(values, "getlist") else values.get("select_gpus") or []
    if isinstance(raw, str):
        raw = [raw]
    ids = [str(v).strip() for item in raw for v in str(item).split(",") if str(v).strip()]
    ids += [v.strip() for v in form.text("select_gpus_list").split(",") if v.strip()]
    single = form.text("select_gpu")
    if single and single != "next":
        ids.append(single)
    if ids:
        field = "select_gpus"
        try:
            wanted = sorted({int(v) for v in ids})
        except ValueError:
            form.error(field, f"GPU ids are whole numbers, got {', '.join(ids)}")
            return 0
        missing = [g for g in wanted if g not in available]
        if missing:
            form.error(field, f"GPU {', '.join(map(str, missing))} is not one this server uses "
                              f"({', '.join(map(str, available)) or 'none: start it with --gpus'})")
            return 0
        return len(wanted)
    if form.has("select_gpu_count"):
        if not available:
            form.error("select_gpu_count", "this server uses no GPUs (start it with --gpus); leave this empty "
                                           "to train on the CPU")
            return 0
        return form.integer("select_gpu_count", 0, minimum=0, maximum=len(available)) or 0
    return 1 if single == "next" and available else 0


def _weights(form: Form, framework: str) -> tuple[list[str], object]:
    """Pretrained weights: server paths (os.pathsep-separated, as DIGITS) and/or one upload."""
    paths = [p.strip() for p in form.text("custom_network_snapshot").split(os.pathsep) if p.strip()]
    for path in paths:
        if not os.path.isfile(path):
            form.error("custom_network_snapshot", f"file {path!r} does not exist on the server")
    upload = form.upload("custom_network_snapshot_file") or form.upload("custom_network_snapshot")
    if upload is not None:
        ext = os.path.splitext(upload.filename)[1].lower()
        allowed = (".caffemodel", ".h5") if framework == "caffe" else (".pt", ".pth")
        if ext not in allowed:
            form.error("custom_network_snapshot_file", f"weights for {framework} are {' or '.join(allowed)} files, "
                                                       f"got {os.path.basename(upload.filename)!r}")
    return paths, upload


def _python_layer(form: Form, framework: str):
    """The Python-layer file: an upload (saved as digits_python_layers.py whatever its name) or a server path."""
    upload = form.upload("python_layer_client_file")
    server = form.text("python_layer_server_file")
    if upload is not None:
        if os.path.splitext(upload.filename)[1].lower() != ".py":
            form.error("python_layer_client_file", f"a Python layer file ends in .py, got "
                                                   f"{os.path.basename(upload.filename)!r}")
        source = upload
    elif server:
        if not server.endswith(".py"):
            form.error("python_layer_server_file", f"a Python layer file ends in .py, got {server!r}")
        elif not os.path.isfile(server):
            form.error("python_layer_server_file", f"server-side file {server!r} does not exist")
        source = server
    else:
        return None
    if framework != "caffe":
        form.error("python_layer_client_file" if upload is not None else "python_layer_server_file",
                   "Python layers belong to Caffe networks; a PyTorch model file holds its own code")
    return source


# ---------------------------------------------------------------------------------------------- the submit
def submit(form: Form):
    """Check every field, then create, write and queue the model job."""
    name = form.text("model_name", required=True, max_length=200)
    ds = _dataset(form)
    framework = FRAMEWORKS.get(form.choice("framework", tuple(FRAMEWORKS), "caffe"), "caffe")
    method = form.choice("method", ("standard", "previous", "custom"), "standard")
    s = {"epochs": form.integer("train_epochs", 30, minimum=1, maximum=100000),
         "batch_size": _single(form, "batch_size", int, minimum=1),
         "base_lr": _single(form, "learning_rate", float, minimum=0.0, default=0.01),
         "lr_policy": _lr_policy(form),
         "snapshot_interval": form.number("snapshot_interval", 1.0, minimum=0.0),
         "val_interval": form.number("val_interval", 1.0, minimum=0.0),
         "random_seed": form.integer("random_seed", None, minimum=0),
         "crop_size": form.integer("crop_size", None, minimum=1),
         "mean": form.choice("use_mean", MEAN_CHOICES, "image"),
         "rms_decay": form.number("rms_decay", 0.99, minimum=0.0)}
    solver_type = form.text("solver_type", "SGD").upper()
    if solver_type not in prep.SOLVER_TYPES:
        form.error("solver_type", f"must be one of {', '.join(prep.SOLVER_TYPES)}; got {solver_type!r}")
    s["solver_type"] = prep.SOLVER_TYPES.get(solver_type, "SGD")
    gpus = _gpus(form)
    weights, weights_upload = _weights(form, framework)
    python_layer = _python_layer(form, framework)

    network_field = {"standard": "standard_networks", "previous": "previous_networks",
                     "custom": "custom_network"}[method or "standard"]
    network, previous = None, None
    try:
        if method == "standard":
            choices = prep.CAFFE_STANDARD if framework == "caffe" else prep.TORCH_STANDARD
            key = form.choice("standard_networks", tuple(choices), required=True)
            if key:
                path = prep.zoo_file(choices[key])
                with open(path, encoding="utf-8") as f:
                    network = f.read()
        elif method == "previous":
            network, previous, framework, weights = _previous(form, ds, weights)
        else:
            network = form.text("custom_network", required=True, max_length=2_000_000)
        if network is not None:
            if framework == "caffe":
                net = prep.parse_caffe_network(network, network_field)
                if method == "previous" and previous is not None and previous.data.get("dataset") != \
                        (ds.id if ds else None):
                    prep.retrain_last_layer(net)
                if "digits_python_layers" in prep.python_modules(net) and python_layer is None and not (
                        previous is not None and os.path.isfile(previous.path(prep.PYTHON_LAYER_FILE))):
                    form.error("python_layer_client_file", "the network's Python layers import "
                                                           "digits_python_layers: upload that file")
                network = str(net)
            else:
                prep.check_model_file(network)
    except prep.NetworkError as e:
        form.error(network_field, str(e))
    if framework == "pytorch" and not s["batch_size"] and _needs_solver_file(s):
        form.error("batch_size", "with a PyTorch model file, lr policy settings other than the defaults and "
                                 "snapshot/validation intervals other than 1 epoch need the batch size (the "
                                 "iterations per epoch); give one")
    form.check()

    data = {"framework": framework, "dataset": ds.id, "dataset_dir": ds.path("dataset"), "method": method,
            "epochs": s["epochs"], "snapshot_prefix": prep.SNAPSHOT_PREFIX, "mean": s["mean"], "settings": s,
            "train_iter": None, "max_iter": None, "num_classes": None, "crop_size": s["crop_size"],
            "input_shape": None, "pending": True}
    if framework == "caffe":
        data["files"] = {"original": prep.ORIGINAL_FILE, "train_val": "train_val.prototxt",
                         "deploy": "deploy.prototxt", "solver": prep.SOLVER_FILE}
    else:
        data["files"] = {"network": prep.MODEL_FILE}
        if s["batch_size"]:
            data["files"]["solver"] = prep.SOLVER_FILE
    depends = [ds.id] + ([previous.id] if previous is not None else [])
    job = store().create("model", name, _flat(form.values), depends_on=depends, gpus=gpus, data=data)
    try:
        _write(job, form, network, python_layer, previous, weights, weights_upload)
        if ds.status == DONE:
            try:
                prep.prepare(job)
            except prep.NetworkError as e:
                field = "crop_size" if "crop_size" in str(e) else network_field
                raise FormError({field: str(e)}) from None
            except CaffeError as e:
                raise FormError({"dataset": str(e)}) from None
        store().save(job)
        scheduler().enqueue(job)
    except BaseException:
        store().delete(job.id)
        raise
    return job


def _needs_solver_file(s: dict) -> bool:
    defaults = form_defaults()
    policy = s["lr_policy"]
    given = {k: v for k, v in policy.items() if k != "policy"}
    expected = {"step": {"stepsize": float(defaults["lr_step_size"]), "gamma": float(defaults["lr_step_gamma"])},
                "fixed": {}}.get(policy["policy"])
    return s["snapshot_interval"] != 1 or s["val_interval"] != 1 or expected is None or given != expected


def _previous(form: Form, ds, weights: list[str]):
    """(network text, previous job, its framework, weights) of DIGITS' "Previous networks": the model's original
    network and, unless `<id>-snapshot` is 0, its newest snapshot (or the one of that epoch) as weights."""
    prev_id = form.text("previous_networks", required=True)
    if not prev_id:
        return None, None, "caffe", weights
    try:
        prev = store().get(prev_id, "model")
    except JobError:
        form.error("previous_networks", f"no model with id {prev_id!r}")
        return None, None, "caffe", weights
    framework = prev.data.get("framework", "caffe")
    source = prep.ORIGINAL_FILE if framework == "caffe" else prep.MODEL_FILE
    try:
        with open(prev.path(source), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        form.error("previous_networks", f"model {prev.name!r} has no {source}")
        return None, None, framework, weights
    epoch = form.number(f"{prev_id}-snapshot", None, minimum=0.0)
    if epoch == 0:
        return text, prev, framework, weights
    if epoch is None:
        last = prep.last_snapshot(prev)
        path = last[0] if last else None
    else:
        per_epoch = prev.data.get("train_iter") or 0
        path = prep.snapshot_at(prev, round(epoch * per_epoch)) if per_epoch else None
    if path is None:
        form.error("previous_networks", f"model {prev.name!r} has no snapshot" +
                   (f" at epoch {epoch:g}" if epoch is not None else " yet"))
        return text, prev, framework, weights
    return text, prev, framework, weights + [path]


def _write(job, form: Form, network: str, python_layer, previous, weights: list[str], weights_upload) -> None:
    """The job's own files: the network, the Python layer, uploaded weights; then its command."""
    s = job.data["settings"]
    framework = job.data["framework"]
    target = prep.ORIGINAL_FILE if framework == "caffe" else prep.MODEL_FILE
    with open(job.path(target), "w", encoding="utf-8") as f:
        f.write(network)
    layer_file = job.path(prep.PYTHON_LAYER_FILE)
    if hasattr(python_layer, "save"):
        _save(python_layer, job, prep.PYTHON_LAYER_FILE, "python_layer_client_file", MAX_PYTHON_LAYER_BYTES)
    elif python_layer:
        shutil.copyfile(python_layer, layer_file)
    elif previous is not None and os.path.isfile(previous.path(prep.PYTHON_LAYER_FILE)):
        shutil.copyfile(previous.path(prep.PYTHON_LAYER_FILE), layer_file)
    if os.path.isfile(layer_file):
        job.data["files"]["python_layer"] = prep.PYTHON_LAYER_FILE
    if weights_upload is not None:
        name = "pretrained.caffemodel" if framework == "caffe" else "pretrained.pt"
        _save(weights_upload, job, name, "custom_network_snapshot_file",
              current_app.config.get("MAX_CONTENT_LENGTH") or 1 << 40)
        job.data["uploaded_weights"] = name
        weights = weights + [job.path(name)]
    job.data["pretrained"] = weights
    if framework == "caffe":
        job.command = prep.caffe_command(weights, job.gpus)
    else:
        job.command = prep.torch_command(job.data["dataset_dir"], s, weights, job.gpus,
                                         "solver" in job.data["files"])


def _save(upload, job, name: str, field: str, max_bytes: int) -> None:
    """Save an upload under a name the server chose (the client's name is never used as a path)."""
    try:
        save_upload(upload, job.dir, name, max_bytes=max_bytes)
    except UploadError as e:
        raise FormError({field: str(e)}) from None
