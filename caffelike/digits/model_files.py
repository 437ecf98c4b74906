"""What DIGITS writes for an image-classification model: turn a stage-based network (data layers in stages
`train`/`val`, loss outside `deploy`, Softmax in `deploy`) into Caffe's `train_val.prototxt`,
`deploy.prototxt` and `solver.prototxt`, as DIGITS' caffe_train task does (digits-occlusion-tutorial.md, step 4d).

Layers are sorted by evaluating their rules against the three states DIGITS uses - train = {TRAIN, stage
"train"}, val = {TEST, stage "val"}, deploy = {TEST, stage "deploy"} - with Caffe's own StateMeetsRule, and the
stage rules are rewritten into phase rules, so the files run in plain Caffe (and here) without stages.  The crop
follows DIGITS too: the job's crop_size, else the network's own, cut down to the images, goes on both data layers
and sizes the deploy input, so nets with fully connected layers (AlexNet, GoogLeNet) deploy at the size they train.

On a generic dataset (dataset.json format "digits-generic") the files are DIGITS' save_files_generic: two Data
layers per phase, the inputs (top 'data', mean and crop) and the label vectors (top 'label', the label LMDB, the
inputs' batch size), no class count and no Softmax requirement.
"""
from __future__ import annotations

import json
import math
import os
import shutil

from caffelike.digits.generic_dataset import GENERIC_FORMAT
from caffelike.errors import CaffeError, PrototxtError
from caffelike.format.prototxt import read_net
from caffelike.net import layer_included
from caffelike.proto import caffe_pb2

STATES = {
    "train": caffe_pb2.NetState(phase=caffe_pb2.TRAIN, stage=["train"]),
    "val": caffe_pb2.NetState(phase=caffe_pb2.TEST, stage=["val"]),
    "deploy": caffe_pb2.NetState(phase=caffe_pb2.TEST, stage=["deploy"]),
}
DATA_TYPES = ("Data", "HDF5Data")



def split_network(net: caffe_pb2.NetParameter, num_classes: int):
    """(train data layer, val data layer, train_val layers, deploy layers), with DIGITS' clean-up: Input layers
    dropped, Accuracy with top_k > #classes dropped, InnerProduct without num_output given #classes."""
    data, train_val, deploy = _split(net, num_classes)
    if not any(lp.type == "Softmax" for lp in deploy):
        raise PrototxtError("the network has no Softmax layer in the deploy stage; DIGITS needs one for inference")
    return (data["train"][0] if data["train"] else None), (data["val"][0] if data["val"] else None), train_val, \
        deploy


def _split(net: caffe_pb2.NetParameter, num_classes: int | None):
    """({"train": data layers, "val": data layers}, train_val layers, deploy layers).  num_classes None is a
    generic network: every data layer of a phase is kept (DIGITS pairs inputs and labels from them), an
    InnerProduct must state its num_output and Accuracy layers stay (cleanedUpGenericNetwork)."""
    generic = num_classes is None
    data = {"train": [], "val": []}
    train_val, deploy = [], []
    for original in net.layer:
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(original)
        if lp.type == "Input":
            continue
        if lp.type == "Accuracy" and not generic and lp.accuracy_param.top_k > num_classes:
            continue
        if lp.type == "InnerProduct" and not lp.inner_product_param.HasField("num_output"):
            if generic:
                raise PrototxtError(f"layer {lp.name!r}: an InnerProduct of a network for a generic dataset must "
                                    "set inner_product_param.num_output (there are no classes to count)")
            lp.inner_product_param.num_output = num_classes
        where = {name: layer_included(state, lp) for name, state in STATES.items()}
        lp.ClearField("include")
        lp.ClearField("exclude")
        if lp.type in DATA_TYPES:
            if generic:
                for split in ("train", "val"):
                    if where[split]:
                        data[split].append(lp)
            elif where["train"] and not data["train"]:
                data["train"].append(lp)
            elif where["val"] and not data["val"]:
                data["val"].append(lp)
            continue
        if where["train"] or where["val"]:
            rule = lp  # in both: no rule; only one: a phase rule
            if where["train"] and not where["val"]:
                rule.include.add(phase=caffe_pb2.TRAIN)
            elif where["val"] and not where["train"]:
                rule.include.add(phase=caffe_pb2.TEST)
            train_val.append(rule)
        if where["deploy"]:
            d = caffe_pb2.LayerParameter()
            d.CopyFrom(original)
            d.ClearField("include")
            d.ClearField("exclude")
            if d.type == "InnerProduct" and not d.inner_product_param.HasField("num_output"):
                d.inner_product_param.num_output = num_classes
            deploy.append(d)
    return data, train_val, deploy


def _data_layer(template, name, phase, source, mean_file, batch_size, tops=("data", "label")):
    lp = caffe_pb2.LayerParameter()
    if template is not None:
        lp.CopyFrom(template)
    else:
        lp.name, lp.type = name, "Data"
        lp.top.extend(tops)
    lp.ClearField("include")
    lp.include.add(phase=phase)
    if lp.transform_param.HasField("mean_file") or lp.transform_param.mean_value:
        lp.transform_param.ClearField("mean_file")
        lp.transform_param.ClearField("mean_value")
    if mean_file:
        lp.transform_param.mean_file = mean_file
    lp.data_param.source = source
    lp.data_param.backend = caffe_pb2.DataParameter.LMDB
    if batch_size:
        lp.data_param.batch_size = batch_size
    elif not lp.data_param.batch_size:
        lp.data_param.batch_size = 16
    return lp


def _apply_crop(train_layer, val_layer, crop_size: int, height: int, width: int, dataset: str) -> int:
    """DIGITS' crop rule (caffe_train.py): a crop asked for (the job's "Crop Size") must fit the images and goes on
    both data layers; else the train layer's own crop_size, cut down to the images' smaller side, is used for
    both.  Returns the crop (0 for none), which is also the deploy input's height and width."""
    largest = min(height, width)
    if crop_size:
        if crop_size > largest:
            raise PrototxtError(f"crop_size {crop_size} is larger than the images of {dataset} ({height}x{width})")
    elif train_layer.transform_param.HasField("crop_size"):
        crop_size = min(train_layer.transform_param.crop_size, largest)
    if crop_size:
        for lp in (train_layer, val_layer):
            if lp is not None:
                lp.transform_param.crop_size = crop_size
    return crop_size


def write_model_files(network: str, dataset: str, out: str, *, epochs: int = 30, base_lr: float = 0.01,
                      batch_size: int = 0, crop_size: int = 0, python_layer: str | None = None,
                      use_mean: bool | str = True, solver_mode: str = "CPU", random_seed: int | None = None,
                      solver_type: str = "SGD", lr_policy: dict | None = None, snapshot_interval: float | None = None,
                      val_interval: float | None = None, rms_decay: float | None = None) -> dict:
    """Write DIGITS' model files for `network` (a stage-based prototxt) trained on `dataset` (a folder made by
    `caffelike dataset create`) into `out`; returns the paths and the derived solver numbers.  `crop_size` is
    DIGITS' "Crop Size" (0: the network's own crop_size, if any, fitted to the images).  DIGITS' form settings:
    `use_mean` "image"/"pixel"/"none" (or a bool), `solver_type` a Caffe type name, `lr_policy` DIGITS' dict
    ({"policy": "step", "stepsize": 33, "gamma": 0.1}, points in percent of the training; None: step 33% x0.1),
    `snapshot_interval`/`val_interval` in epochs (None: every epoch)."""
    os.makedirs(out, exist_ok=True)
    dataset = os.path.abspath(dataset)
    summary = _summary(dataset)
    generic = summary.get("format") == GENERIC_FORMAT
    if generic:
        num_classes = None
        counts = {split: int(summary.get("counts", {}).get(split, 0)) for split in ("train", "val")}
    else:
        with open(os.path.join(dataset, "labels.txt")) as f:
            num_classes = sum(1 for line in f if line.strip())
        counts = {}
        for split in ("train", "val"):
            with open(os.path.join(dataset, f"{split}.txt")) as f:
                counts[split] = sum(1 for line in f if line.strip())
    net = read_net(network)
    original = os.path.join(out, "original.prototxt")
    with open(original, "w") as f:
        f.write(str(net))
    mean_mode = ("image" if use_mean else "none") if isinstance(use_mean, bool) else use_mean
    mean = os.path.join(dataset, "mean.binaryproto") if mean_mode != "none" else ""
    if generic:
        data, train_val_layers, deploy_layers = _split(net, None)
        layers = _generic_data_layers(data, dataset, counts, mean, batch_size)
        train_layer, val_layer = layers[0], (layers[2] if len(layers) > 2 else None)
    else:
        train_data, val_data, train_val_layers, deploy_layers = split_network(net, num_classes)
        train_layer = _data_layer(train_data, "train-data", caffe_pb2.TRAIN, os.path.join(dataset, "train_db"),
                                  mean, batch_size)
        val_layer = None
        if counts["val"]:
            val_layer = _data_layer(val_data, "val-data", caffe_pb2.TEST, os.path.join(dataset, "val_db"), mean,
                                    batch_size)
        layers = [lp for lp in (train_layer, val_layer) if lp is not None]
    if mean_mode == "pixel":
        _use_mean_pixel(layers, mean)
    channels, height, width = _image_shape(dataset)
    crop = _apply_crop(train_layer, val_layer, crop_size, height, width, dataset)
    train_val = caffe_pb2.NetParameter()  # DIGITS writes no name into these files
    train_val.layer.extend(layers)
    train_val.layer.extend(train_val_layers)

    deploy = caffe_pb2.NetParameter()
    deploy.input.append("data")
    deploy.input_shape.add(dim=[1, channels, crop or height, crop or width])
    deploy.layer.extend(deploy_layers)

    # DIGITS' solver arithmetic (caffe_train.py): iterations from epochs and the batch size, step at 33%.
    train_batch = train_layer.data_param.batch_size
    train_iter = math.ceil(counts["train"] / train_batch)
    max_iter = train_iter * epochs
    solver = caffe_pb2.SolverParameter(
        net="train_val.prototxt", base_lr=base_lr, max_iter=max_iter, lr_policy="step", gamma=0.1, momentum=0.9,
        weight_decay=base_lr / 100, stepsize=math.ceil(33 * max_iter / 100), snapshot=train_iter,
        snapshot_prefix="snapshot", display=max(1, min(max_iter // (epochs * 8), math.ceil(5000 / train_batch))),
        solver_mode=caffe_pb2.SolverParameter.CPU if solver_mode == "CPU" else caffe_pb2.SolverParameter.GPU,
        type="SGD")
    if counts["val"]:
        solver.test_iter.append(math.ceil(counts["val"] / val_layer.data_param.batch_size))
        solver.test_interval = min(train_iter, max_iter)
    if random_seed is not None:
        solver.random_seed = random_seed
    _digits_solver_settings(solver, train_iter, epochs, val_layer is not None and counts["val"], solver_type,
                            lr_policy, snapshot_interval, val_interval, rms_decay)
    files = {"original": original}
    for name, msg in (("train_val", train_val), ("deploy", deploy), ("solver", solver)):
        files[name] = os.path.join(out, f"{name}.prototxt")
        with open(files[name], "w") as f:
            f.write(str(msg))
    if python_layer:
        files["python_layer"] = os.path.join(out, "digits_python_layers.py")
        shutil.copyfile(python_layer, files["python_layer"])
    return {"files": files, "train_iter": train_iter, "max_iter": max_iter, "num_classes": num_classes,
            "counts": counts, "generic": generic, "label_dim": int(summary["label_dim"]) if generic else None}


def _summary(dataset: str) -> dict:
    """The dataset folder's dataset.json ({} for a folder without one: a classification dataset made elsewhere)."""
    path = os.path.join(dataset, "dataset.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CaffeError(f"{path}: cannot read the dataset summary ({e})") from None


def _generic_data_layers(data: dict, dataset: str, counts: dict, mean: str, batch_size: int) -> list:
    """DIGITS' save_files_generic: in each phase the network's Data layer with a top named like 'data' reads the
    inputs (mean, crop), the one with a top named like 'label' the label vectors (no mean, crop or mirror, the
    inputs' batch size, so record i of both arrives together); missing layers are made ('train-data',
    'train-label', 'val-data', 'val-label').  Returns [train inputs, train labels, val inputs, val labels]."""
    layers = []
    for split, phase in (("train", caffe_pb2.TRAIN), ("val", caffe_pb2.TEST)):
        if split == "val" and not counts["val"]:
            break
        found = {"data": None, "label": None}
        for lp in data[split]:
            roles = [role for role in found if any(role in top for top in lp.top)]
            if lp.type != "Data" or len(roles) != 1:
                why = (f"is a {lp.type} layer" if lp.type != "Data" else f"has tops {list(lp.top)}")
                raise PrototxtError(f"layer {lp.name!r} {why}: a generic dataset is read by two Data layers per "
                                    "phase, one with top 'data' (the inputs) and one with top 'label' (the label "
                                    "vectors)")
            if found[roles[0]] is not None:
                raise PrototxtError(f"layers {found[roles[0]].name!r} and {lp.name!r}: two {split} Data layers with "
                                    f"a {roles[0]!r} top")
            found[roles[0]] = lp
        inputs = _data_layer(found["data"], f"{split}-data", phase, os.path.join(dataset, f"{split}_db"), mean,
                             batch_size, ("data",))
        template = found["label"]
        if not batch_size and template is not None and template.data_param.batch_size and \
                template.data_param.batch_size != inputs.data_param.batch_size:
            raise PrototxtError(f"layers {inputs.name!r} and {template.name!r}: batch sizes "
                                f"{inputs.data_param.batch_size} and {template.data_param.batch_size}; the label "
                                "vectors must come in the inputs' batches")
        labels = _data_layer(template, f"{split}-label", phase, os.path.join(dataset, f"{split}_labels_db"), "",
                             inputs.data_param.batch_size, ("label",))
        labels.transform_param.ClearField("crop_size")
        labels.transform_param.ClearField("mirror")
        if not labels.transform_param.ListFields():
            labels.ClearField("transform_param")
        for lp, name in ((inputs, f"{split}-data"), (labels, f"{split}-label")):
            lp.name = lp.name or name
        layers += [inputs, labels]
    return layers


def _image_shape(dataset: str) -> tuple[int, int, int]:
    from caffelike.format.blobproto import blob_shape

    bp = caffe_pb2.BlobProto()
    with open(os.path.join(dataset, "mean.binaryproto"), "rb") as f:
        bp.ParseFromString(f.read())
    shape = blob_shape(bp)
    return tuple(int(d) for d in shape[-3:])


# -------------------------------------------------------------------------------------- DIGITS' solver form
def set_lr_policy(solver: caffe_pb2.SolverParameter, policy: dict) -> None:
    """DIGITS' lr policy (caffe_train.py): its points are percent of the training and its exp/inv/sigmoid gammas
    per percent, so they are scaled to solver.max_iter iterations; the sigmoid's gamma is given positive and
    written negative (the rate falls)."""
    name = policy["policy"]
    scale = solver.max_iter / 100.0
    for field in ("stepsize", "gamma", "power"):
        solver.ClearField(field)
    del solver.stepvalue[:]
    solver.lr_policy = name
    if name in ("step", "sigmoid"):
        solver.stepsize = max(1, math.ceil(float(policy["stepsize"]) * scale))
    if name == "step" or name == "multistep":
        solver.gamma = float(policy["gamma"])
    if name == "multistep":
        solver.stepvalue.extend(max(1, math.ceil(float(v) * scale)) for v in policy["stepvalue"])
    elif name == "exp":
        solver.gamma = math.pow(float(policy["gamma"]), 1.0 / scale)
    elif name == "inv":
        solver.gamma = float(policy["gamma"]) / scale
    elif name == "sigmoid":
        solver.gamma = -float(policy["gamma"]) / scale
    elif name not in ("fixed", "step", "poly"):
        raise PrototxtError(f"unknown lr policy {name!r}")
    if name in ("inv", "poly"):
        solver.power = float(policy["power"])


def interval_iterations(epochs: float, train_iter: int, max_iter: int, at_end: int) -> int:
    """DIGITS' rule for the snapshot and validation intervals given in epochs: at least one iteration when
    asked for, `at_end` when the interval reaches the end of training (0: the final snapshot only; max_iter:
    one validation at the end)."""
    iterations = epochs * train_iter
    if 0 < iterations <= 1:
        return 1
    if 1 < iterations < max_iter:
        return int(iterations)
    return at_end


def _digits_solver_settings(solver, train_iter, epochs, has_val, solver_type, lr_policy, snapshot_interval,
                            val_interval, rms_decay) -> None:
    solver.type = solver_type
    if solver_type in ("AdaGrad", "RMSProp"):  # DIGITS gives these no momentum
        solver.ClearField("momentum")
    if solver_type == "RMSProp" and rms_decay is not None:
        solver.rms_decay = rms_decay
    if lr_policy is not None:
        set_lr_policy(solver, lr_policy)
    if snapshot_interval is not None:
        solver.snapshot = interval_iterations(snapshot_interval, train_iter, solver.max_iter, 0)
    if has_val and val_interval is not None:
        if val_interval > 0:
            solver.test_interval = interval_iterations(val_interval, train_iter, solver.max_iter, solver.max_iter)
        else:  # no validation: DIGITS writes no test_iter
            del solver.test_iter[:]
            solver.ClearField("test_interval")


def _use_mean_pixel(layers, mean_file: str) -> None:
    """DIGITS' "pixel" mean: the mean image's per-channel averages as mean_value, instead of the mean file."""
    from caffelike.format.blobproto import blob_to_array

    bp = caffe_pb2.BlobProto()
    with open(mean_file, "rb") as f:
        bp.ParseFromString(f.read())
    image = blob_to_array(bp, where=mean_file)
    pixel = image.reshape(image.shape[-3], -1).mean(axis=1)
    for lp in layers:
        if lp.transform_param.mean_file:
            lp.transform_param.ClearField("mean_file")
            lp.transform_param.mean_value.extend(float(v) for v in pixel)
