"""A model job's folder, as DIGITS' train tasks lay it out: original.prototxt, train_val.prototxt, deploy.prototxt,
solver.prototxt and digits_python_layers.py for Caffe networks, model.py (and a solver.prototxt when the form's
solver settings need one) for PyTorch model files.

The files that depend on the dataset (its labels, mean and counts) are written when the job is submitted if the
dataset is Done, else by the scheduler just before the job starts (`prepare_pending`, registered as the model
kind's prepare hook).  Nothing here runs the user's code: Python layers and model files are only saved; they run
in the job's own subprocess.
"""
from __future__ import annotations

import ast
import json
import math
import os
import re

from caffelike import zoo
from caffelike.errors import CaffeError, PrototxtError
from caffelike.format.prototxt import read_net
from caffelike.proto import caffe_pb2

# DIGITS' standard networks -> the zoo's stage-based prototxts and PyTorch model files.
CAFFE_STANDARD = {"lenet": ("digits-lenet", "lenet.prototxt"), "alexnet": ("digits-alexnet", "alexnet.prototxt"),
                  "googlenet": ("digits-googlenet", "googlenet.prototxt")}
TORCH_STANDARD = {"lenet": ("torch-lenet", "lenet.py"), "linear": ("torch-linear", "linear.py")}
# DIGITS' solver_type values -> Caffe's type names.
SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                "ADADELTA": "AdaDelta", "ADAM": "Adam"}
ORIGINAL_FILE = "original.prototxt"
PYTHON_LAYER_FILE = "digits_python_layers.py"
MODEL_FILE = "model.py"
SOLVER_FILE = "solver.prototxt"
SNAPSHOT_PREFIX = "snapshot"


class NetworkError(CaffeError):
    """A network that cannot train: the message goes beside the form's network field."""


# ---------------------------------------------------------------------------------------------- the network
def check_layer_types(net: caffe_pb2.NetParameter, where: str = "") -> None:
    """Every layer's type must be one caffelike implements (checked now, not when the job runs)."""
    from caffelike.layers import layer_type_list

    known = set(layer_type_list())
    if not net.layer:
        raise NetworkError(f"{where}the network has no layers")
    for lp in net.layer:
        if lp.type not in known:
            raise NetworkError(f"{where}layer {lp.name!r}: unknown layer type {lp.type!r}")


def python_modules(net: caffe_pb2.NetParameter) -> set[str]:
    return {lp.python_param.module for lp in net.layer if lp.type == "Python"}


def parse_caffe_network(text: str, source: str = "custom_network") -> caffe_pb2.NetParameter:
    """The stage-based network of the form's text; a syntax error names its line and column."""
    from caffelike.format.prototxt import parse_net

    try:
        net = parse_net(text, source)
    except PrototxtError as e:
        raise NetworkError(str(e)) from None
    check_layer_types(net)
    return net


def retrain_last_layer(net: caffe_pb2.NetParameter) -> None:
    """A previous network trained on another dataset: its last InnerProduct is renamed so that its weights (sized
    for the old classes) are not loaded and it is sized for the new ones, as DIGITS does."""
    inner = [lp for lp in net.layer if lp.type == "InnerProduct"]
    if inner:
        inner[-1].name = f"{inner[-1].name}_retrain"


def check_model_file(text: str) -> None:
    """A PyTorch model file is parsed (never run) so that a syntax error or a missing network() is a field error;
    its other faults show in the job's log when it runs."""
    try:
        tree = ast.parse(text, MODEL_FILE)
    except SyntaxError as e:
        raise NetworkError(f"{MODEL_FILE}:{e.lineno}: {e.msg}") from None
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if "network" not in names:
        raise NetworkError(f"{MODEL_FILE}: defines no network(params) function (docs/torch_models.md)")


# ---------------------------------------------------------------------------------------------- the dataset
def dataset_summary(folder: str) -> dict:
    """What the model needs of a dataset folder: counts, classes, image shape, generic or not."""
    path = os.path.join(folder, "dataset.json")
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise CaffeError(f"the dataset folder {folder} has no readable dataset.json ({e})") from None
    generic = bool(summary.get("generic")) or summary.get("format") == "digits-generic"
    labels = summary.get("labels") or []
    if not labels and os.path.exists(os.path.join(folder, "labels.txt")):
        with open(os.path.join(folder, "labels.txt"), encoding="utf-8") as f:
            labels = [ln.strip() for ln in f if ln.strip()]
    return {"counts": {k: int(v) for k, v in (summary.get("counts") or {}).items()}, "generic": generic,
            "num_classes": int(summary["label_dim"]) if generic and "label_dim" in summary else len(labels),
            "shape": [summary.get("channels"), summary.get("height"), summary.get("width")]}


# ----------------------------------------------------------------------------------------------- the files
def prepare(job) -> None:
    """Write the dataset-dependent files of `job` (its job.data["settings"] say how) and record what they are."""
    data = job.data
    dataset = data["dataset_dir"]
    if not os.path.isfile(os.path.join(dataset, "dataset.json")):
        raise CaffeError(f"the dataset folder {dataset} is missing or incomplete")
    if data["framework"] == "caffe":
        _prepare_caffe(job, dataset)
    else:
        _prepare_torch(job, dataset)
    data["pending"] = False


def prepare_pending(job) -> None:
    """The scheduler's hook: a model queued while its dataset ran gets its files now."""
    if job.data.get("pending"):
        prepare(job)


def _prepare_caffe(job, dataset: str) -> None:
    from caffelike.digits.model_files import write_model_files

    s = job.data["settings"]
    try:
        info = write_model_files(
            job.path(ORIGINAL_FILE), dataset, job.dir, epochs=s["epochs"], base_lr=s["base_lr"],
            batch_size=s.get("batch_size") or 0, crop_size=s.get("crop_size") or 0, use_mean=s["mean"],
            solver_mode="GPU" if job.gpus else "CPU", random_seed=s.get("random_seed"),
            solver_type=s["solver_type"], lr_policy=s["lr_policy"], snapshot_interval=s["snapshot_interval"],
            val_interval=s["val_interval"], rms_decay=s.get("rms_decay"))
    except (AssertionError, KeyError, ValueError) as e:  # a network the DIGITS rules cannot place
        raise NetworkError(f"{type(e).__name__}: {e}") from None
    except CaffeError as e:
        raise NetworkError(str(e)) from None
    except OSError as e:
        raise CaffeError(f"cannot read the dataset's files: {e}") from None
    train_val = read_net(info["files"]["train_val"])  # what the job will load, through the prototxt reader
    deploy = read_net(info["files"]["deploy"])
    check_layer_types(train_val, "train_val.prototxt: ")
    check_layer_types(deploy, "deploy.prototxt: ")
    crops = [lp.transform_param.crop_size for lp in train_val.layer if lp.transform_param.crop_size]
    shape = _deploy_input_shape(deploy)
    files = {"original": ORIGINAL_FILE, "train_val": "train_val.prototxt", "deploy": "deploy.prototxt",
             "solver": SOLVER_FILE}
    if os.path.exists(job.path(PYTHON_LAYER_FILE)):
        files["python_layer"] = PYTHON_LAYER_FILE
    job.data.update(files=files, train_iter=info["train_iter"], max_iter=info["max_iter"],
                    num_classes=info["num_classes"] if info["num_classes"] is not None else info.get("label_dim"),
                    input_shape=shape, crop_size=crops[0] if crops else None)


def _deploy_input_shape(deploy: caffe_pb2.NetParameter) -> list[int] | None:
    """[C, H, W] of the deploy net's input (the reader turns `input_shape` into an Input layer)."""
    dims = list(deploy.input_shape[0].dim) if deploy.input_shape else []
    for lp in deploy.layer:
        if not dims and lp.type == "Input" and lp.input_param.shape:
            dims = list(lp.input_param.shape[0].dim)
    return [int(d) for d in dims[1:]] if len(dims) == 4 else None


def _prepare_torch(job, dataset: str) -> None:
    from caffelike.digits.model_files import interval_iterations, set_lr_policy

    s = job.data["settings"]
    summary = dataset_summary(dataset)
    shape = list(summary["shape"])
    if s.get("crop_size") and None not in shape:
        if s["crop_size"] > min(shape[1], shape[2]):
            raise NetworkError(f"crop_size {s['crop_size']} is larger than the dataset's images "
                               f"({shape[1]}x{shape[2]})")
        shape[1] = shape[2] = s["crop_size"]
    job.data.update(num_classes=summary["num_classes"], input_shape=shape if None not in shape else None,
                    crop_size=s.get("crop_size"))
    batch = s.get("batch_size")
    if not batch:  # the model file's batch size: only the job knows the iterations
        return
    train_iter = math.ceil(summary["counts"].get("train", 0) / batch)
    if not train_iter:
        raise CaffeError(f"the dataset {dataset} has no training images")
    max_iter = train_iter * s["epochs"]
    job.data.update(train_iter=train_iter, max_iter=max_iter)
    if job.data["files"].get("solver"):
        solver = caffe_pb2.SolverParameter(type=s["solver_type"], base_lr=s["base_lr"], max_iter=max_iter,
                                           weight_decay=s["base_lr"] / 100, snapshot_prefix=SNAPSHOT_PREFIX)
        if s["solver_type"] not in ("AdaGrad", "RMSProp"):
            solver.momentum = 0.9
        if s["solver_type"] == "RMSProp" and s.get("rms_decay") is not None:
            solver.rms_decay = s["rms_decay"]
        set_lr_policy(solver, s["lr_policy"])
        solver.snapshot = interval_iterations(s["snapshot_interval"], train_iter, max_iter, 0)
        if s["val_interval"] > 0 and summary["counts"].get("val"):
            solver.test_interval = interval_iterations(s["val_interval"], train_iter, max_iter, max_iter)
        solver.display = max(1, min(max_iter // (s["epochs"] * 8), math.ceil(5000 / batch)))
        if s.get("random_seed") is not None:
            solver.random_seed = s["random_seed"]
        with open(job.path(SOLVER_FILE), "w") as f:
            f.write(str(solver))


# --------------------------------------------------------------------------------------------- the command
def caffe_command(weights: list[str], gpus: int) -> list[str]:
    cmd = ["{python}", "-m", "caffelike", "train", "--solver", SOLVER_FILE, "--trust-model-dir"]
    if weights:
        cmd += ["--weights", ",".join(weights)]
    if gpus:
        cmd += ["--gpu", "{gpus}"]
    return cmd


def torch_command(dataset: str, s: dict, weights: list[str], gpus: int, with_solver_file: bool) -> list[str]:
    cmd = ["{python}", "-m", "caffelike", "train", "--network", MODEL_FILE, "--dataset", dataset,
           "--epochs", str(s["epochs"]), "--solver-type", s["solver_type"], "--base-lr", repr(s["base_lr"])]
    cmd += ["--solver", SOLVER_FILE] if with_solver_file else ["--lr-policy", s["lr_policy"]["policy"]]
    if s.get("batch_size"):
        cmd += ["--batch-size", str(s["batch_size"])]
    if s.get("crop_size"):
        cmd += ["--crop-size", str(s["crop_size"])]
    cmd += ["--mean", s["mean"]]
    if s.get("random_seed") is not None:
        cmd += ["--seed", str(s["random_seed"])]
    cmd += ["--snapshot-prefix", SNAPSHOT_PREFIX]
    if weights:
        cmd += ["--weights", weights[0]]
    if gpus:
        cmd += ["--gpu", "{gpus}"]
    return cmd


def last_snapshot(job) -> tuple[str, int] | None:
    """(path, iteration) of a model job's newest snapshot (.caffemodel or .pt), or None."""
    pattern = re.compile(rf"^{SNAPSHOT_PREFIX}_iter_(\d+)\.(caffemodel|pt)$")
    found = []
    try:
        names = os.listdir(job.dir)
    except OSError:
        return None
    for name in names:
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1)), name))
    if not found:
        return None
    iteration, name = max(found)
    return job.path(name), iteration


def snapshot_at(job, iteration: int) -> str | None:
    for ext in ("caffemodel", "pt"):
        path = job.path(f"{SNAPSHOT_PREFIX}_iter_{iteration}.{ext}")
        if os.path.isfile(path):
            return path
    return None


def zoo_file(entry: tuple[str, str]) -> str:
    return zoo.path(*entry)
