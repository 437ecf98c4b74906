"""BVLC Caffe's example nets in the zoo: mnist_autoencoder, siamese, cifar10_quick and cifar10_full.

Every prototxt is built in every phase and stage it declares and run forward and backward at batch N = 2 on
seeded weights.  Every blob and every parameter must have the shape that Caffe derives. The tables below were
worked out by hand from Caffe's rules: convolution floor((H + 2p - k) / s) + 1, pooling ceil((H - k) / s) + 1,
InnerProduct flattening from axis 1, scalar loss tops, label (N,) and the Split blobs
`<blob>_<producer>_<top index>_split_<i>` inserted where a blob feeds two layers. The train_test nets read
tiny LMDBs written here. Each Data layer's BVLC source is pointed at the LMDB of the same role, so every
phase and stage can be seen reading its own database. Every solver parses, builds on those LMDBs and trains
two iterations. The cifar10_quick deploy net reproduces the output of real Caffe (tests/fixtures/nets/cifar10_quick).
"""
import math
import pathlib

import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import Case, assert_blob_close

import caffelike as caffe
from caffelike import zoo
from caffelike.data.dbwriter import LmdbWriter, image_to_datum
from caffelike.format.prototxt import read_net, read_solver
from caffelike.train.solver import get_solver

N = 2  # the batch every net runs at here
RECORDS = 4  # per LMDB: two batches
MNIST_SCALE = np.float32(0.0039215684)  # the autoencoder's transform_param.scale (1/255)
LENET_SCALE = np.float32(0.00390625)  # the siamese net's (1/256)


# ----------------------------------------------------------------------------------------- expected blob shapes
def in_test_phase(train: dict, logits: str) -> dict:
    """The TEST-phase table of a cifar10 train_test net, from its TRAIN table: `label` and the logits now feed
    both Accuracy and SoftmaxWithLoss, so each gets a Split right after its producer, and `accuracy` (a scalar)
    comes before `loss`."""
    out = {}
    for blob, shape in train.items():
        if blob == "loss":
            out["accuracy"] = ()
        out[blob] = shape
        if blob == "label":
            out.update({"label_cifar_1_split_0": (N,), "label_cifar_1_split_1": (N,)})
        elif blob == logits:
            out.update({f"{logits}_{logits}_0_split_0": (N, 10), f"{logits}_{logits}_0_split_1": (N, 10)})
    return out



AUTOENCODER = {
    "data": (N, 1, 28, 28), "data_data_0_split_0": (N, 1, 28, 28), "data_data_0_split_1": (N, 1, 28, 28),
    "flatdata": (N, 784), "flatdata_flatdata_0_split_0": (N, 784), "flatdata_flatdata_0_split_1": (N, 784),
    "encode1": (N, 1000), "encode1neuron": (N, 1000),
    "encode2": (N, 500), "encode2neuron": (N, 500),
    "encode3": (N, 250), "encode3neuron": (N, 250),
    "encode4": (N, 30),
    "decode4": (N, 250), "decode4neuron": (N, 250),
    "decode3": (N, 500), "decode3neuron": (N, 500),
    "decode2": (N, 1000), "decode2neuron": (N, 1000),
    "decode1": (N, 784), "decode1_decode1_0_split_0": (N, 784), "decode1_decode1_0_split_1": (N, 784),
    "cross_entropy_loss": (),
    "decode1neuron": (N, 784),
    "l2_error": (),
}
AUTOENCODER_PARAMS = {
    "encode1": [(1000, 784), (1000,)], "encode2": [(500, 1000), (500,)], "encode3": [(250, 500), (250,)],
    "encode4": [(30, 250), (30,)], "decode4": [(250, 30), (250,)], "decode3": [(500, 250), (500,)],
    "decode2": [(1000, 500), (1000,)], "decode1": [(784, 1000), (784,)],
}

# 28 -conv5-> 24 -pool2/2-> 12 -conv5-> 8 -pool2/2-> 4: ip1 sees 50 * 4 * 4 = 800 inputs.
SIAMESE_DEPLOY = {
    "data": (N, 1, 28, 28), "conv1": (N, 20, 24, 24), "pool1": (N, 20, 12, 12), "conv2": (N, 50, 8, 8),
    "pool2": (N, 50, 4, 4), "ip1": (N, 500), "ip2": (N, 10), "feat": (N, 2),
}
SIAMESE_PARAMS = {
    "conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)], "ip1": [(500, 800), (500,)],
    "ip2": [(10, 500), (10,)], "feat": [(2, 10), (2,)],
}
SIAMESE = {
    "pair_data": (N, 2, 28, 28), "sim": (N,), "data": (N, 1, 28, 28), "data_p": (N, 1, 28, 28),
    "conv1": (N, 20, 24, 24), "pool1": (N, 20, 12, 12), "conv2": (N, 50, 8, 8), "pool2": (N, 50, 4, 4),
    "ip1": (N, 500), "ip2": (N, 10), "feat": (N, 2),
    "conv1_p": (N, 20, 24, 24), "pool1_p": (N, 20, 12, 12), "conv2_p": (N, 50, 8, 8), "pool2_p": (N, 50, 4, 4),
    "ip1_p": (N, 500), "ip2_p": (N, 10), "feat_p": (N, 2),
    "loss": (),
}
SIAMESE_TRAIN_PARAMS = {**SIAMESE_PARAMS, **{f"{k}_p": v for k, v in SIAMESE_PARAMS.items()}}

# 32 -conv5 pad2-> 32 -pool3/2 (ceil)-> 16 -conv-> 16 -pool-> 8 -conv-> 8 -pool-> 4: ip1 sees 64 * 4 * 4 = 1024.
CIFAR10_QUICK = {
    "data": (N, 3, 32, 32), "label": (N,),
    "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16),
    "conv2": (N, 32, 16, 16), "pool2": (N, 32, 8, 8),
    "conv3": (N, 64, 8, 8), "pool3": (N, 64, 4, 4),
    "ip1": (N, 64), "ip2": (N, 10), "loss": (),
}
CIFAR10_QUICK_DEPLOY = {
    "data": (N, 3, 32, 32), "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16), "conv2": (N, 32, 16, 16),
    "pool2": (N, 32, 8, 8), "conv3": (N, 64, 8, 8), "pool3": (N, 64, 4, 4), "ip1": (N, 64), "ip2": (N, 10),
    "prob": (N, 10),
}
CIFAR10_QUICK_PARAMS = {
    "conv1": [(32, 3, 5, 5), (32,)], "conv2": [(32, 32, 5, 5), (32,)], "conv3": [(64, 32, 5, 5), (64,)],
    "ip1": [(64, 1024), (64,)], "ip2": [(10, 64), (10,)],
}
CIFAR10_FULL = {
    "data": (N, 3, 32, 32), "label": (N,),
    "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16), "norm1": (N, 32, 16, 16),
    "conv2": (N, 32, 16, 16), "pool2": (N, 32, 8, 8), "norm2": (N, 32, 8, 8),
    "conv3": (N, 64, 8, 8), "pool3": (N, 64, 4, 4),
    "ip1": (N, 10), "loss": (),
}
CIFAR10_FULL_DEPLOY = {
    "data": (N, 3, 32, 32), "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16), "norm1": (N, 32, 16, 16),
    "conv2": (N, 32, 16, 16), "pool2": (N, 32, 8, 8), "norm2": (N, 32, 8, 8), "conv3": (N, 64, 8, 8),
    "pool3": (N, 64, 4, 4), "ip1": (N, 10), "prob": (N, 10),
}
CIFAR10_FULL_PARAMS = {
    "conv1": [(32, 3, 5, 5), (32,)], "conv2": [(32, 32, 5, 5), (32,)], "conv3": [(64, 32, 5, 5), (64,)],
    "ip1": [(10, 1024), (10,)],
}
CIFAR10_SIGMOID = {
    "data": (N, 3, 32, 32), "label": (N,),
    "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16), "Sigmoid1": (N, 32, 16, 16),
    "conv2": (N, 32, 16, 16), "Sigmoid2": (N, 32, 16, 16), "pool2": (N, 32, 8, 8),
    "conv3": (N, 64, 8, 8), "Sigmoid3": (N, 64, 8, 8), "pool3": (N, 64, 4, 4),
    "ip1": (N, 10), "loss": (),
}
CIFAR10_SIGMOID_BN = {
    "data": (N, 3, 32, 32), "label": (N,),
    "conv1": (N, 32, 32, 32), "pool1": (N, 32, 16, 16), "bn1": (N, 32, 16, 16), "Sigmoid1": (N, 32, 16, 16),
    "conv2": (N, 32, 16, 16), "bn2": (N, 32, 16, 16), "Sigmoid2": (N, 32, 16, 16), "pool2": (N, 32, 8, 8),
    "conv3": (N, 64, 8, 8), "bn3": (N, 64, 8, 8), "Sigmoid3": (N, 64, 8, 8), "pool3": (N, 64, 4, 4),
    "ip1": (N, 10), "loss": (),
}
# The BN variant's convolutions have no bias (bias_term: false); BatchNorm keeps mean, variance, scale factor.
CIFAR10_SIGMOID_BN_PARAMS = {
    "conv1": [(32, 3, 5, 5)], "bn1": [(32,), (32,), (1,)],
    "conv2": [(32, 32, 5, 5)], "bn2": [(32,), (32,), (1,)],
    "conv3": [(64, 32, 5, 5)], "bn3": [(64,), (64,), (1,)],
    "ip1": [(10, 1024), (10,)],
}

# (file, phase, stages, blob table, param table, which LMDB role each phase/stage reads)
TRAIN_TEST = [
    ("mnist_autoencoder/mnist_autoencoder.prototxt", "TRAIN", (), AUTOENCODER, AUTOENCODER_PARAMS, "mnist_train"),
    ("mnist_autoencoder/mnist_autoencoder.prototxt", "TEST", ("test-on-train",), AUTOENCODER, AUTOENCODER_PARAMS,
     "mnist_train"),
    ("mnist_autoencoder/mnist_autoencoder.prototxt", "TEST", ("test-on-test",), AUTOENCODER, AUTOENCODER_PARAMS,
     "mnist_test"),
    ("siamese/mnist_siamese_train_test.prototxt", "TRAIN", (), SIAMESE, SIAMESE_TRAIN_PARAMS, "siamese_train"),
    ("siamese/mnist_siamese_train_test.prototxt", "TEST", (), SIAMESE, SIAMESE_TRAIN_PARAMS, "siamese_test"),
    ("cifar10_quick/cifar10_quick_train_test.prototxt", "TRAIN", (), CIFAR10_QUICK, CIFAR10_QUICK_PARAMS,
     "cifar_train"),
    ("cifar10_quick/cifar10_quick_train_test.prototxt", "TEST", (), in_test_phase(CIFAR10_QUICK, "ip2"),
     CIFAR10_QUICK_PARAMS, "cifar_test"),
    ("cifar10_full/cifar10_full_train_test.prototxt", "TRAIN", (), CIFAR10_FULL, CIFAR10_FULL_PARAMS,
     "cifar_train"),
    ("cifar10_full/cifar10_full_train_test.prototxt", "TEST", (), in_test_phase(CIFAR10_FULL, "ip1"),
     CIFAR10_FULL_PARAMS, "cifar_test"),
    ("cifar10_full/cifar10_full_sigmoid_train_test.prototxt", "TRAIN", (), CIFAR10_SIGMOID, CIFAR10_FULL_PARAMS,
     "cifar_train"),
    ("cifar10_full/cifar10_full_sigmoid_train_test.prototxt", "TEST", (), in_test_phase(CIFAR10_SIGMOID, "ip1"),
     CIFAR10_FULL_PARAMS, "cifar_test"),
    ("cifar10_full/cifar10_full_sigmoid_train_test_bn.prototxt", "TRAIN", (), CIFAR10_SIGMOID_BN,
     CIFAR10_SIGMOID_BN_PARAMS, "cifar_train"),
    ("cifar10_full/cifar10_full_sigmoid_train_test_bn.prototxt", "TEST", (), in_test_phase(CIFAR10_SIGMOID_BN, "ip1"),
     CIFAR10_SIGMOID_BN_PARAMS, "cifar_test"),
]

# (file, the input shape the file declares, blob table, param table, output)
DEPLOY = [
    ("siamese/mnist_siamese.prototxt", (10000, 1, 28, 28), SIAMESE_DEPLOY, SIAMESE_PARAMS, "feat"),
    ("cifar10_quick/cifar10_quick.prototxt", (1, 3, 32, 32), CIFAR10_QUICK_DEPLOY, CIFAR10_QUICK_PARAMS, "prob"),
    ("cifar10_full/cifar10_full.prototxt", (1, 3, 32, 32), CIFAR10_FULL_DEPLOY, CIFAR10_FULL_PARAMS, "prob"),
]

# Solver file -> (train_test net it names, type, base_lr, lr_policy, test stages): the facts read back.
SOLVERS = {
    "mnist_autoencoder/mnist_autoencoder_solver.prototxt":
        ("mnist_autoencoder.prototxt", "SGD", 0.01, "step", ["test-on-train", "test-on-test"]),
    "mnist_autoencoder/mnist_autoencoder_solver_nesterov.prototxt":
        ("mnist_autoencoder.prototxt", "Nesterov", 0.01, "step", ["test-on-train", "test-on-test"]),
    "mnist_autoencoder/mnist_autoencoder_solver_adagrad.prototxt":
        ("mnist_autoencoder.prototxt", "AdaGrad", 0.01, "fixed", ["test-on-train", "test-on-test"]),
    "mnist_autoencoder/mnist_autoencoder_solver_adadelta.prototxt":
        ("mnist_autoencoder.prototxt", "AdaDelta", 1.0, "fixed", ["test-on-train", "test-on-test"]),
    "siamese/mnist_siamese_solver.prototxt": ("mnist_siamese_train_test.prototxt", "SGD", 0.001, "inv", []),
    "cifar10_quick/cifar10_quick_solver.prototxt": ("cifar10_quick_train_test.prototxt", "SGD", 0.001, "fixed", []),
    "cifar10_quick/cifar10_quick_solver_lr1.prototxt":
        ("cifar10_quick_train_test.prototxt", "SGD", 0.0001, "fixed", []),
    "cifar10_full/cifar10_full_solver.prototxt": ("cifar10_full_train_test.prototxt", "SGD", 0.001, "fixed", []),
    "cifar10_full/cifar10_full_solver_lr1.prototxt": ("cifar10_full_train_test.prototxt", "SGD", 0.0001, "fixed", []),
    "cifar10_full/cifar10_full_solver_lr2.prototxt": ("cifar10_full_train_test.prototxt", "SGD", 0.00001, "fixed", []),
    "cifar10_full/cifar10_full_sigmoid_solver.prototxt":
        ("cifar10_full_sigmoid_train_test.prototxt", "SGD", 0.001, "step", []),
    "cifar10_full/cifar10_full_sigmoid_solver_bn.prototxt":
        ("cifar10_full_sigmoid_train_test_bn.prototxt", "SGD", 0.001, "step", []),
}

# BVLC's relative data paths, as the train_test files keep them -> the LMDB role standing in for each here.
SOURCES = {
    "examples/mnist/mnist_train_lmdb": "mnist_train",
    "examples/mnist/mnist_test_lmdb": "mnist_test",
    "examples/siamese/mnist_siamese_train_leveldb": "siamese_train",  # an LMDB: see local_data
    "examples/siamese/mnist_siamese_test_leveldb": "siamese_test",
    "examples/cifar10/cifar10_train_lmdb": "cifar_train",
    "examples/cifar10/cifar10_test_lmdb": "cifar_test",
}
MEAN_FILE = "examples/cifar10/mean.binaryproto"


def test_every_zoo_file_is_covered():
    folders = ("mnist_autoencoder", "siamese", "cifar10_quick", "cifar10_full")
    files = {f"{d}/{p.name}" for d in folders for p in pathlib.Path(zoo.path(d)).glob("*.prototxt")}
    covered = {c[0] for c in TRAIN_TEST} | {d[0] for d in DEPLOY} | set(SOLVERS)
    assert files == covered
    assert all(pathlib.Path(zoo.path(d, "README.md")).is_file() for d in folders)


# ------------------------------------------------------------------------------------------------ tiny datasets
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four Datums per role (different pixels per role), a CIFAR mean image, and the role -> path map."""
    root = tmp_path_factory.mktemp("zoo_examples_data")
    rng = np.random.default_rng(7)
    made = {"paths": {}, "pixels": {}, "labels": {}}

    def write(role, shape, datum_of):
        pixels = rng.integers(0, 256, (RECORDS, *shape), dtype=np.uint8)
        labels = rng.integers(0, 2 if role.startswith("siamese") else 10, RECORDS)
        path = root / f"{role}_lmdb"
        with LmdbWriter(str(path)) as db:
            for i in range(RECORDS):
                db.put(f"{i:08d}", datum_of(pixels[i], int(labels[i])))
        made["paths"][role], made["pixels"][role], made["labels"][role] = str(path), pixels, labels

    def pair_datum(chw, label):  # two gray digits stacked as channels, as convert_mnist_siamese_data writes them
        return caffe_pb2.Datum(channels=2, height=28, width=28, data=chw.tobytes(), label=label)

    for split in ("train", "test"):
        write(f"mnist_{split}", (1, 28, 28), lambda chw, label: image_to_datum(chw[0], label, gray=True))
        write(f"siamese_{split}", (2, 28, 28), pair_datum)
        # image_to_datum takes RGB (H, W, 3) and stores BGR planes: hand it the planes reversed back to RGB.
        write(f"cifar_{split}", (3, 32, 32), lambda chw, label: image_to_datum(chw[::-1].transpose(1, 2, 0), label))
    mean = rng.uniform(0, 255, (1, 3, 32, 32)).astype(np.float32)
    blob = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=mean.shape), data=mean.ravel())
    (root / "mean.binaryproto").write_bytes(blob.SerializeToString())
    made["mean"], made["mean_path"] = mean[0], str(root / "mean.binaryproto")
    return made


def local_data(net: caffe_pb2.NetParameter, data: dict) -> caffe_pb2.NetParameter:
    """Point every Data layer's BVLC source (and mean_file) at the tiny stand-ins, at batch N. The siamese
    sources keep backend LEVELDB (the proto default), which caffelike reads when the folder holds an LMDB."""
    for layer in net.layer:
        if layer.type != "Data":
            continue
        assert layer.data_param.source in SOURCES, f"{layer.name}: unexpected source {layer.data_param.source!r}"
        layer.data_param.source = data["paths"][SOURCES[layer.data_param.source]]
        layer.data_param.batch_size = N
        if layer.transform_param.HasField("mean_file"):
            assert layer.transform_param.mean_file == MEAN_FILE
            layer.transform_param.mean_file = data["mean_path"]
    return net


def expected_data(role: str, data: dict) -> np.ndarray:
    """The first batch of `role` after the net's transform_param, in float32 as Caffe computes it."""
    pixels = data["pixels"][role][:N].astype(np.float32)
    if role.startswith("mnist"):
        return pixels * MNIST_SCALE
    if role.startswith("siamese"):
        return pixels * LENET_SCALE
    return pixels - data["mean"]


# --------------------------------------------------------------------------------------------------- checks
def shapes_of(net) -> dict:
    return {name: tuple(blob.shape) for name, blob in net.blobs.items()}


def check_shapes(net, blobs: dict, params: dict) -> None:
    assert list(shapes_of(net).items()) == list(blobs.items()), "blobs, their order or their shapes differ"
    assert {k: [tuple(b.shape) for b in v] for k, v in net.params.items()} == params


def check_gradients(net, where: str, zero=frozenset()) -> None:
    """Every parameter the net learns (lr_mult != 0) gets a finite gradient, non-zero except for the (layer,
    index) pairs in `zero`, which must be exactly zero."""
    for entry in net.learnable:
        if entry.lr_mult == 0:
            continue
        grad, what = entry.param.grad, f"{where}: {entry.layer}[{entry.index}]"
        assert grad is not None and torch.isfinite(grad).all(), f"{what} gradient"
        if (entry.layer, entry.index) in zero:
            assert not grad.any(), f"{what} should get two gradients that cancel"
        else:
            assert grad.abs().sum() > 0, f"{what} got no gradient"


# The contrastive loss depends on feat - feat_p only, so a bias shared by both towers after their last ReLU
# (ip2's, feat's) shifts both features alike and gets two gradients that cancel exactly: zero once the shared
# blob sums both towers' contributions, as Caffe's does.
SIAMESE_CANCELLING = frozenset({("ip2", 1), ("feat", 1)})


# ---------------------------------------------------------------------------------------------- train_test nets
@pytest.mark.parametrize("path,phase,stages,blobs,params,role", TRAIN_TEST,
                         ids=[f"{c[0].split('/')[1][:-9]}-{c[1]}{''.join('-' + s for s in c[2])}" for c in TRAIN_TEST])
def test_train_test_net(path, phase, stages, blobs, params, role, data):
    caffe.set_random_seed(1701)
    net = caffe.Net(local_data(read_net(zoo.path(*path.split("/"))), data), getattr(caffe, phase),
                    stages=list(stages))
    check_shapes(net, blobs, params)
    outputs = net.forward()
    check_shapes(net, blobs, params)  # Caffe reshapes at every forward: nothing may drift
    top = "pair_data" if role.startswith("siamese") else "data"
    np.testing.assert_allclose(net.blobs[top].data, expected_data(role, data), rtol=1e-6, atol=1e-5)
    label = "sim" if role.startswith("siamese") else "label"
    if label in net.blobs:
        np.testing.assert_array_equal(net.blobs[label].data, data["labels"][role][:N].astype(np.float32))
    assert all(np.isfinite(v).all() for v in outputs.values())
    net.backward()
    check_gradients(net, f"{path} {phase}", SIAMESE_CANCELLING if role.startswith("siamese") else frozenset())


def test_autoencoder_test_net_needs_a_stage(data):
    # Both TEST Data layers name a stage, so a TEST net without one has no 'data' at all, as in Caffe.
    with pytest.raises(caffe.CaffeError, match="Unknown bottom blob 'data'"):
        caffe.Net(local_data(read_net(zoo.path("mnist_autoencoder", "mnist_autoencoder.prototxt")), data),
                  caffe.TEST)


def test_autoencoder_loss_weights(data):
    # The cross entropy is the objective (loss_weight 1); the Euclidean error is only displayed (loss_weight 0).
    caffe.set_random_seed(1701)
    net = caffe.Net(local_data(read_net(zoo.path("mnist_autoencoder", "mnist_autoencoder.prototxt")), data),
                    caffe.TRAIN)
    outs = {k: v.detach() for k, v in net.run().items()}
    assert float(net.loss(outs)) == pytest.approx(float(outs["cross_entropy_loss"]), rel=1e-6)
    assert float(outs["l2_error"]) > 0


def test_siamese_towers_share_parameters(data):
    caffe.set_random_seed(1701)
    net = caffe.Net(local_data(read_net(zoo.path("siamese", "mnist_siamese_train_test.prototxt")), data),
                    caffe.TRAIN)
    for layer in SIAMESE_PARAMS:
        for i in range(2):
            ours, theirs = net.params[layer][i], net.params[layer + "_p"][i]
            assert ours.tensor.data_ptr() == theirs.tensor.data_ptr(), f"{layer}[{i}] is not shared"
    # The solver sees each shared blob once, owned by the first tower.
    assert [(e.layer, e.index) for e in net.learnable] == [(k, i) for k in SIAMESE_PARAMS for i in range(2)]
    net.params["conv1"][0].data[...] = 0.25
    assert (net.params["conv1_p"][0].data == 0.25).all()
    # Same weights, same function: a pair of identical digits gives identical features in both towers.
    net.forward()
    pair = net.blobs["pair_data"].data
    pair[:, 1] = pair[:, 0]
    net.forward(start="slice_pair")
    np.testing.assert_array_equal(net.blobs["feat"].data, net.blobs["feat_p"].data)


# -------------------------------------------------------------------------------------------------- deploy nets
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("path,declared,blobs,params,output", DEPLOY, ids=[d[0].split("/")[1][:-9] for d in DEPLOY])
def test_deploy_net(path, declared, blobs, params, output, phase):
    param = read_net(zoo.path(*path.split("/")))
    shape = param.layer[0].input_param.shape[0]
    assert tuple(shape.dim) == declared
    shape.dim[0] = N
    param.force_backward = True
    caffe.set_random_seed(1701)
    net = caffe.Net(param, getattr(caffe, phase))
    check_shapes(net, blobs, params)
    rng = np.random.default_rng(3)
    for blobs_of_layer in net.params.values():  # deploy files carry no fillers: Caffe's default would be zeros
        for blob in blobs_of_layer:
            fan_in = math.prod(blob.data.shape[1:]) if blob.data.ndim > 1 else 1
            blob.data[...] = rng.normal(scale=1 / math.sqrt(fan_in), size=blob.data.shape)
    net.blobs["data"].data[...] = rng.uniform(-1, 1, net.blobs["data"].shape)
    out = net.forward()[output]
    check_shapes(net, blobs, params)
    assert np.isfinite(out).all()
    if output == "prob":
        np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-5)
    top = net.bottom_names[output][0] if output == "prob" else output
    net.blobs[top].diff[...] = rng.normal(size=net.blobs[top].shape)
    net.backward(start=net._layer_names[-2] if output == "prob" else None)
    assert np.isfinite(net.blobs["data"].diff).all() and np.abs(net.blobs["data"].diff).sum() > 0
    check_gradients(net, path)


def test_cifar10_quick_deploy_matches_caffe():
    """The zoo's deploy net, given the fixture's weights and input (batch 2), gives Caffe's blobs and gradients."""
    case = Case.load("nets", "cifar10_quick")
    param = read_net(zoo.path("cifar10_quick", "cifar10_quick.prototxt"))
    param.layer[0].input_param.shape[0].dim[0] = case.meta["blob_shapes"]["data"][0]
    param.force_backward = True
    net = caffe.Net(param, caffe.TEST, weights=str(case.path / case.meta["weights"]))
    assert list(net.blobs) == case.meta["blobs"]
    net.blobs["data"].data[...] = case.data("data")
    net.forward()
    for name in case.meta["blobs"]:
        assert_blob_close(net.blobs[name].data, case.data(name), name=f"data of {name!r}", **case.tolerance)
    for name in case.meta["random_output_diffs"]:
        net.blobs[name].diff[...] = case.output_diff(name)
    net.backward()
    for name in case.meta["diff_blobs"]:
        assert_blob_close(net.blobs[name].diff, case.diff(name), name=f"diff of {name!r}", **case.tolerance)
    for layer, shapes in case.meta["params"].items():
        for i in range(len(shapes)):
            assert_blob_close(net.params[layer][i].diff, case.param_diff(layer, i), name=f"diff of {layer}[{i}]",
                              **case.tolerance)


# ------------------------------------------------------------------------------------------------------ solvers
@pytest.mark.parametrize("path", list(SOLVERS), ids=[p.split("/")[1][:-9] for p in SOLVERS])
def test_solver_parses_builds_and_trains(path, data, tmp_path):
    net_file, kind, base_lr, policy, stages = SOLVERS[path]
    folder = path.split("/")[0]
    solver = read_solver(zoo.path(*path.split("/")))
    assert (solver.net, solver.type, solver.lr_policy) == (net_file, kind, policy)
    assert solver.base_lr == pytest.approx(base_lr)
    assert [s for state in solver.test_state for s in state.stage] == stages
    assert len(solver.test_iter) == max(1, len(stages))
    assert pathlib.Path(zoo.path(folder, net_file)).is_file()

    # A copy that trains on the tiny LMDBs: its own net file, one test batch per test net, snapshots in tmp.
    net = local_data(read_net(zoo.path(folder, net_file)), data)
    (tmp_path / net_file).write_text(text_format.MessageToString(net))
    solver.net = str(tmp_path / net_file)
    solver.test_iter[:] = [1] * len(solver.test_iter)
    solver.snapshot_prefix = str(tmp_path / "snapshot")
    solver.solver_mode = caffe_pb2.SolverParameter.CPU
    copy = tmp_path / pathlib.Path(path).name
    copy.write_text(text_format.MessageToString(solver))

    caffe.set_random_seed(1701)
    s = get_solver(str(copy))
    assert s.param.type == kind and len(s.test_nets) == len(solver.test_iter)
    s.step(2)
    assert s.iter == 2
    losses = [v for _, v in s.history["train"]["loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    if stages:  # test_state picks each test net's Data layer: test-on-train reads the training LMDB
        for test_net, role in zip(s.test_nets, ("mnist_train", "mnist_test")):
            np.testing.assert_allclose(test_net.blobs["data"].data, expected_data(role, data), rtol=1e-6,
                                       atol=1e-5)
