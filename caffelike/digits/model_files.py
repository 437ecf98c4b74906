"""What DIGITS writes for an image-classification model: turn a stage-based network (data layers in stages
`train`/`val`, loss outside `deploy`, Softmax in `deploy`) into Caffe's `train_val.prototxt`,
`deploy.prototxt` and `solver.prototxt`, as DIGITS' caffe_train task does (digits-occlusion-tutorial.md, step 4d).

Layers are sorted by evaluating their rules against the three states DIGITS uses - train = {TRAIN, stage
"train"}, val = {TEST, stage "val"}, deploy = {TEST, stage "deploy"} - with Caffe's own StateMeetsRule, and the
stage rules are rewritten into phase rules, so the files run in plain Caffe (and here) without stages.  The crop
follows DIGITS too: the job's crop_size, else the network's own, cut down to the images, goes on both data layers
and sizes the deploy input, so nets with fully connected layers (AlexNet, GoogLeNet) deploy at the size they train.
"""
from __future__ import annotations

import math
import os
import shutil

from caffelike.errors import PrototxtError
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
    train_data = val_data = None
    train_val, deploy = [], []
    for original in net.layer:
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(original)
        if lp.type == "Input":
            continue
        if lp.type == "Accuracy" and lp.accuracy_param.top_k > num_classes:
            continue
        if lp.type == "InnerProduct" and not lp.inner_product_param.HasField("num_output"):
            lp.inner_product_param.num_output = num_classes
        where = {name: layer_included(state, lp) for name, state in STATES.items()}
        lp.ClearField("include")
        lp.ClearField("exclude")
        if lp.type in DATA_TYPES:
            if where["train"] and train_data is None:
                train_data = lp
            elif where["val"] and val_data is None:
                val_data = lp
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
    if not any(lp.type == "Softmax" for lp in deploy):
        raise PrototxtError("the network has no Softmax layer in the deploy stage; DIGITS needs one for inference")
    return train_data, val_data, train_val, deploy


def _data_layer(template, name, phase, source, mean_file, batch_size):
    lp = caffe_pb2.LayerParameter()
    if template is not None:
        lp.CopyFrom(template)
    else:
        lp.name, lp.type = name, "Data"
        lp.top.extend(["data", "label"])
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
                      use_mean: bool = True, solver_mode: str = "CPU", random_seed: int | None = None) -> dict:
    """Write DIGITS' model files for `network` (a stage-based prototxt) trained on `dataset` (a folder made by
    `caffelike dataset create`) into `out`; returns the paths and the derived solver numbers.  `crop_size` is
    DIGITS' "Crop Size" (0: the network's own crop_size, if any, fitted to the images)."""
    os.makedirs(out, exist_ok=True)
    dataset = os.path.abspath(dataset)
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
    train_data, val_data, train_val_layers, deploy_layers = split_network(net, num_classes)
    mean = os.path.join(dataset, "mean.binaryproto") if use_mean else ""

    train_layer = _data_layer(train_data, "train-data", caffe_pb2.TRAIN, os.path.join(dataset, "train_db"), mean,
                              batch_size)
    val_layer = None
    if counts["val"]:
        val_layer = _data_layer(val_data, "val-data", caffe_pb2.TEST, os.path.join(dataset, "val_db"), mean,
                                batch_size)
    channels, height, width = _image_shape(dataset)
    crop = _apply_crop(train_layer, val_layer, crop_size, height, width, dataset)
    train_val = caffe_pb2.NetParameter()  # DIGITS writes no name into these files
    train_val.layer.extend([lp for lp in (train_layer, val_layer) if lp is not None])
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
        solver.test_iter.append(math.ceil(counts["val"] / train_val.layer[1].data_param.batch_size))
        solver.test_interval = min(train_iter, max_iter)
    if random_seed is not None:
        solver.random_seed = random_seed
    files = {"original": original}
    for name, msg in (("train_val", train_val), ("deploy", deploy), ("solver", solver)):
        files[name] = os.path.join(out, f"{name}.prototxt")
        with open(files[name], "w") as f:
            f.write(str(msg))
    if python_layer:
        files["python_layer"] = os.path.join(out, "digits_python_layers.py")
        shutil.copyfile(python_layer, files["python_layer"])
    return {"files": files, "train_iter": train_iter, "max_iter": max_iter, "num_classes": num_classes,
            "counts": counts}


def _image_shape(dataset: str) -> tuple[int, int, int]:
    from caffelike.format.blobproto import blob_shape

    bp = caffe_pb2.BlobProto()
    with open(os.path.join(dataset, "mean.binaryproto"), "rb") as f:
        bp.ParseFromString(f.read())
    shape = blob_shape(bp)
    return tuple(int(d) for d in shape[-3:])
