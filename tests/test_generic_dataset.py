"""DIGITS' generic (regression) datasets (caffelike.digits.generic_dataset.create_generic_dataset, `caffelike dataset
create --generic`) and model files trained on them: a second Data layer for the label vectors, MSE by default,
zoo/torch-regression and zoo/torch-autoencoder; and DIGITS' Caffe model files (caffelike.digits.model_files) on
them: two Data layers per phase."""
import json
import os
import random

import lmdb
import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

from caffelike import zoo
from caffelike.cli import main
from caffelike.data.datum import datum_to_array, parse_datum
from caffelike.data.dbwriter import DatasetError
from caffelike.digits.dataset import create_dataset
from caffelike.digits.generic_dataset import create_generic_dataset
from caffelike.digits.model_files import write_model_files
from caffelike.digits.torch_training import make_solver
from caffelike.errors import PrototxtError
from caffelike.format.prototxt import read_net
from caffelike.train.solver import Solver

REGRESSION = zoo.path("torch-regression", "regression.py")
AUTOENCODER = zoo.path("torch-autoencoder", "autoencoder.py")
SOLVER = 'type: "Adam" base_lr: 0.01 lr_policy: "fixed" max_iter: %d display: 0 test_iter: 1 ' \
         'test_interval: 1000 test_initialization: false random_seed: 1\n'


def read_db(path):
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        records = [(k.decode(), datum_to_array(parse_datum(v))) for k, v in txn.cursor()]
    env.close()
    return records


def solver_file(tmp_path, iters, name="solver.prototxt"):
    path = tmp_path / name
    path.write_text(SOLVER % iters)
    return str(path)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """y = x W + b on 1 x 4 x 4 float inputs, K = 3: a generic dataset of 400 rows (300 train, 100 val)."""
    rng = np.random.RandomState(0)
    x = rng.rand(400, 1, 4, 4).astype(np.float32)
    w, b = rng.randn(16, 3), rng.randn(3)
    y = x.reshape(400, -1) @ w + b
    return create_generic_dataset(str(tmp_path_factory.mktemp("lin") / "ds"), x, y, seed=2)["path"]


def test_layout_and_round_trip(tmp_path):
    """Float inputs, 25% of 10 rows for validation by a seeded shuffle: each input record sits beside its label
    vector (K x 1 x 1 floats), and the mean is the training inputs' float mean."""
    rng = np.random.RandomState(1)
    x = rng.randn(10, 2, 3, 4)
    y = rng.randn(10, 5)
    summary = create_generic_dataset(str(tmp_path / "ds"), x, y, seed=7)
    folder = summary["path"]
    assert sorted(os.listdir(folder)) == ["dataset.json", "mean.binaryproto", "train_db", "train_labels_db",
                                          "val_db", "val_labels_db"]
    with open(os.path.join(folder, "dataset.json")) as f:
        on_disk = json.load(f)
    assert on_disk["format"] == "digits-generic" and on_disk["generic"] is True
    assert (on_disk["channels"], on_disk["height"], on_disk["width"], on_disk["label_dim"]) == (2, 3, 4, 5)
    assert on_disk["counts"] == {"train": 7, "val": 3} and on_disk["input_dtype"] == "float32"
    order = list(range(10))
    random.Random(7).shuffle(order)
    rows = {"val": order[:3], "train": order[3:]}  # 2.5 rounds half away from zero, as DIGITS
    for split, idx in rows.items():
        inputs, labels = read_db(os.path.join(folder, f"{split}_db")), read_db(os.path.join(folder,
                                                                                           f"{split}_labels_db"))
        assert [k for k, _ in inputs] == [k for k, _ in labels] == [f"{i:08d}" for i in range(len(idx))]
        np.testing.assert_allclose(np.stack([a for _, a in inputs]), x[idx], rtol=1e-6)
        assert all(a.shape == (5, 1, 1) for _, a in labels)
        np.testing.assert_allclose(np.stack([a[:, 0, 0] for _, a in labels]), y[idx], rtol=1e-6)
    blob = caffe_pb2.BlobProto()
    with open(os.path.join(folder, "mean.binaryproto"), "rb") as f:
        blob.ParseFromString(f.read())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 2, 3, 4)
    np.testing.assert_allclose(np.array(blob.data).reshape(2, 3, 4), x[rows["train"]].mean(0), rtol=1e-5)


def test_uint8_npz_with_validation_arrays_from_the_command_line(tmp_path, capsys):
    """N x H x W uint8 inputs stay uint8 Datums (one channel); an .npz names inputs, labels, val_inputs and
    val_labels; N-long labels are vectors of one."""
    rng = np.random.RandomState(2)
    x, vx = (rng.randint(0, 256, (n, 5, 6)).astype(np.uint8) for n in (6, 3))
    npz = str(tmp_path / "a.npz")
    np.savez(npz, inputs=x, labels=np.arange(6.0), val_inputs=vx, val_labels=np.arange(3.0) + 10)
    assert main(["dataset", "create", "--generic", "--out", str(tmp_path / "ds"), "--inputs", npz]) == 0
    assert "6 train, 3 val rows, inputs 1x5x6 uint8, label vectors of 1" in capsys.readouterr().out
    val = read_db(str(tmp_path / "ds" / "val_db"))
    assert all(a.dtype == np.uint8 for _, a in val)
    np.testing.assert_array_equal(np.stack([a for _, a in val]), vx[:, None])
    labels = read_db(str(tmp_path / "ds" / "val_labels_db"))
    assert [float(a.ravel()[0]) for _, a in labels] == [10.0, 11.0, 12.0]


def test_bad_arrays_leave_nothing(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DatasetError, match="4 label rows for 5 inputs"):
        create_generic_dataset(str(out), np.zeros((5, 2, 2)), np.zeros((4, 1)))
    with pytest.raises(DatasetError, match=r"N x C x H x W or N x H x W"):
        create_generic_dataset(str(out), np.zeros((5, 2)), np.zeros((5, 1)))
    with pytest.raises(DatasetError, match="needs labels"):
        create_generic_dataset(str(out), np.zeros((5, 2, 2)))
    assert not out.exists() and os.listdir(tmp_path) == []


def test_regression_loss_falls(tmp_path, linear):
    """zoo/torch-regression on y = xW + b: two Data layers (inputs, label vectors) in lockstep, MSE, no
    Accuracy; the loss falls by more than 10x."""
    solver = make_solver(REGRESSION, linear, solver_file=solver_file(tmp_path, 300), mean="none")
    types = [(lp.name, lp.type) for lp in solver.param.net_param.layer]
    assert ("train-labels", "Data") in types and ("label-flatten", "Flatten") in types
    assert "accuracy" not in solver.test_nets[0].outputs
    solver.solve()
    losses = [v for _, v in solver.history["train"]["loss"]]
    assert np.mean(losses[-20:]) < np.mean(losses[:5]) / 10, (losses[:5], losses[-20:])


def test_default_loss_is_mse_on_generic_datasets(tmp_path, linear):
    path = tmp_path / "model.py"
    path.write_text("from torch import nn\n\ndef network(params):\n    return {'model': nn.Sequential(nn.Flatten(), "
                    "nn.Linear(16, params.nclasses)), 'trainBatchSize': 10}\n")
    solver = make_solver(str(path), linear, solver_file=solver_file(tmp_path, 2), mean="none")
    assert isinstance(solver.spec.loss, torch.nn.MSELoss)
    loss = solver.forward_backward()
    output, label = (solver.net.blobs[n].tensor for n in ("output", "label"))
    assert tuple(label.shape) == (10, 3)
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(output.detach(), label)), rel=1e-6)


def test_generic_resume_keeps_inputs_and_labels_together(tmp_path, linear):
    text = (SOLVER % 6) + 'snapshot: 3 snapshot_prefix: "%s"\n'
    files = {}
    for name in "ab":
        (tmp_path / f"{name}.prototxt").write_text(text % (tmp_path / name))
        files[name] = str(tmp_path / f"{name}.prototxt")
    whole = make_solver(REGRESSION, linear, solver_file=files["a"])
    whole.solve()
    resumed = make_solver(REGRESSION, linear, solver_file=files["b"], random_seed=5)
    resumed.restore(str(tmp_path / "a_iter_3.solverstate"))
    resumed.solve()
    losses = [[v for _, v in s.history["train"]["loss"]] for s in (whole, resumed)]
    assert losses[0][3:] == pytest.approx(losses[1], rel=1e-5)


def test_autoencoder_trains_with_its_label_hook(tmp_path):
    """zoo/torch-autoencoder: the target is the input (scaled), whatever the labels; the loss falls."""
    rng = np.random.RandomState(3)
    codes = rng.rand(300, 4)
    x = (codes @ rng.rand(4, 64) * 60).reshape(300, 1, 8, 8).astype(np.uint8)
    folder = create_generic_dataset(str(tmp_path / "ds"), x, np.zeros(300))["path"]
    solver = make_solver(AUTOENCODER, folder, solver_file=solver_file(tmp_path, 150), mean="none")
    assert solver.spec.label_hook is not None
    loss = solver.forward_backward()
    data, output = (solver.net.blobs[n].tensor for n in ("data", "output"))
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(output.detach(), data / 255)), rel=1e-5)
    solver.solve()
    losses = [v for _, v in solver.history["train"]["loss"]]
    assert np.mean(losses[-10:]) < np.mean(losses[:3]) / 5, (losses[:3], losses[-10:])


def test_autoencoder_on_a_classification_dataset(tmp_path):
    folder = create_dataset(str(tmp_path / "digits"), "bundled", max_per_class=20)["path"]
    solver = make_solver(AUTOENCODER, folder, solver_file=solver_file(tmp_path, 3), mean="none")
    assert "accuracy" not in solver.test_nets[0].outputs
    solver.solve()
    assert solver.iter == 3


# --------------------------------------------------------------------------- Caffe prototxt nets (model_files)
DATA_LAYERS = """
layer { name: "train-data" type: "Data" top: "data" include { stage: "train" } data_param { batch_size: 10 } }
layer { name: "train-label" type: "Data" top: "label" include { stage: "train" } data_param { batch_size: 10 } }
layer { name: "val-data" type: "Data" top: "data" include { stage: "val" } data_param { batch_size: 20 } }
layer { name: "val-label" type: "Data" top: "label" include { stage: "val" } data_param { batch_size: 20 } }
"""
REGRESSOR = """
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" exclude { stage: "deploy" } }
"""


def parse_net(path):
    return text_format.Parse(open(path).read(), caffe_pb2.NetParameter())  # as written: no upgrade of `input`


def data_layers(path):
    return [(lp.name, list(lp.top), os.path.basename(lp.data_param.source), lp.data_param.batch_size,
             bool(lp.transform_param.mean_file), [r.phase for r in lp.include])
            for lp in read_net(path).layer if lp.type == "Data"]


def test_caffe_net_trains_on_a_generic_dataset(tmp_path, monkeypatch):
    """DIGITS' stage-based regression net (Data layers 'data' and 'label' per stage, InnerProduct, EuclideanLoss
    outside deploy): each phase reads the inputs (with the mean) and the label vectors (without) in the same
    batches, record i beside record i, so the label blob is y = xW + b of the data blob and SGD fits it."""
    rng = np.random.RandomState(4)
    x = rng.rand(400, 1, 4, 4).astype(np.float32)
    w, b = rng.randn(16, 3), rng.randn(3)
    folder = create_generic_dataset(str(tmp_path / "ds"), x, x.reshape(400, -1) @ w + b, seed=2)["path"]
    network = tmp_path / "net.prototxt"
    network.write_text(DATA_LAYERS + REGRESSOR)
    job = tmp_path / "job"
    info = write_model_files(str(network), folder, str(job), epochs=10, base_lr=0.05, random_seed=1)
    assert info["generic"] and info["label_dim"] == 3 and info["counts"] == {"train": 300, "val": 100}
    train, test = caffe_pb2.TRAIN, caffe_pb2.TEST
    assert data_layers(info["files"]["train_val"]) == [
        ("train-data", ["data"], "train_db", 10, True, [train]),
        ("train-label", ["label"], "train_labels_db", 10, False, [train]),
        ("val-data", ["data"], "val_db", 20, True, [test]),
        ("val-label", ["label"], "val_labels_db", 20, False, [test])]
    deploy = parse_net(info["files"]["deploy"])
    assert list(deploy.input_shape[0].dim) == [1, 1, 4, 4] and [lp.name for lp in deploy.layer] == ["ip"]
    monkeypatch.chdir(job)  # the solver's snapshot prefix is relative, as DIGITS writes it
    solver = Solver(info["files"]["solver"])
    assert list(solver.param.test_iter) == [5] and solver.param.max_iter == 300
    with open(os.path.join(folder, "mean.binaryproto"), "rb") as f:
        mean = np.array(caffe_pb2.BlobProto.FromString(f.read()).data).reshape(1, 1, 4, 4)
    for net in (solver.net, solver.test_nets[0]):
        net.forward()
        inputs = net.blobs["data"].data + mean
        np.testing.assert_allclose(net.blobs["label"].data.reshape(-1, 3), inputs.reshape(-1, 16) @ w + b,
                                   rtol=1e-4, atol=1e-4)
    solver.solve()
    losses = [v for _, v in solver.history["train"]["loss"]]
    assert np.mean(losses[-10:]) < min(1e-2, np.mean(losses[:5]) / 100), (losses[:5], losses[-10:])
    assert solver.history["test"]["loss"][-1][1] < 1e-2


def test_caffe_net_data_layers_on_a_generic_dataset(tmp_path, linear):
    """Without Data layers the four are made (DIGITS' names, batch 16); a job batch size and crop apply to both /
    the inputs; a net that cannot pair inputs and labels is refused by name."""
    network = tmp_path / "net.prototxt"
    network.write_text(REGRESSOR)
    info = write_model_files(str(network), linear, str(tmp_path / "made"), batch_size=25, crop_size=3)
    assert [(n, t, s, bs) for n, t, s, bs, _, _ in data_layers(info["files"]["train_val"])] == [
        ("train-data", ["data"], "train_db", 25), ("train-label", ["label"], "train_labels_db", 25),
        ("val-data", ["data"], "val_db", 25), ("val-label", ["label"], "val_labels_db", 25)]
    layers = {lp.name: lp for lp in read_net(info["files"]["train_val"]).layer}
    assert layers["train-data"].transform_param.crop_size == 3 and not layers["train-label"].HasField(
        "transform_param")
    assert list(parse_net(info["files"]["deploy"]).input_shape[0].dim) == [1, 1, 3, 3]

    cases = {
        "tops": ('layer { name: "both" type: "Data" top: "data" top: "label" }',
                 r"'both' has tops \['data', 'label'\]: .* two Data layers per phase"),
        "two": (DATA_LAYERS + 'layer { name: "more" type: "Data" top: "data" include { stage: "val" } }',
                "'val-data' and 'more': two val Data layers with a 'data' top"),
        "batch": (DATA_LAYERS.replace("batch_size: 20 } }\n", "batch_size: 5 } }\n", 1),
                  "'val-data' and 'val-label': batch sizes 5 and 20"),
        "num_output": (REGRESSOR.replace("num_output: 3 ", ""), "'ip': an InnerProduct .* must set .*num_output"),
    }
    for name, (text, message) in cases.items():
        network.write_text(text if name == "tops" else text + REGRESSOR * (name != "num_output"))
        with pytest.raises(PrototxtError, match=message):
            write_model_files(str(network), linear, str(tmp_path / name))
