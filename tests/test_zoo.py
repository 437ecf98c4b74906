"""The zoo: every generated net builds in every phase and stage it declares (TRAIN/TEST for train_val files, the
DIGITS stages train/val/deploy for stage-based files, TEST for deploy files), runs forward and backward at batch
2 (TRAIN) or 1 on seeded weights, and every blob has the shape Caffe derives (pooling rounding included): the
shapes come from tests/zoo_shapes.py's arithmetic (blob_shapes) and its hand-derived CHECKPOINTS, never from
caffelike's layers.  Train/val nets read a two-image LMDB, image list and mean file written here."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import zoo_shapes
from caffelike.proto import caffe_pb2

import caffelike as caffe
from caffelike import zoo
from caffelike.data.datum import array_to_datum
from caffelike.data.dbwriter import LmdbWriter
from caffelike.format.prototxt import read_net, read_solver
from caffelike.io import array_to_blobproto

ROOT = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("zoo_generate", ROOT / "zoo" / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)

IMAGE = (3, 256, 256)  # what the Data layers read: ImageNet's stored size, before the crop
DIGITS_CLASSES = 6  # enough for the top-5 Accuracy layers DIGITS keeps only when there are >= 5 classes
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
DATA_TYPES = ("Data", "ImageData")


def test_generated_prototxts_are_current():
    run = subprocess.run([sys.executable, str(ROOT / "zoo" / "generate.py"), "--check"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


# ------------------------------------------------------------------------------------------------ test data
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two random 3x256x256 images (labels 0 and 1) as an LMDB of raw Datums and as PNGs of another size listed
    for ImageData (which resizes them to 256x256), and their mean image as mean.binaryproto (1x3x256x256)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("zoo_data")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, *IMAGE), dtype=np.uint8)
    with LmdbWriter(str(d / "lmdb")) as db:
        for i, image in enumerate(images):
            db.put(f"{i:08d}".encode(), array_to_datum(image, label=i))
    lines = []
    for i in range(2):
        path = d / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(200, 300, 3), dtype=np.uint8)).save(path)
        lines.append(f"{path} {i}\n")
    (d / "list.txt").write_text("".join(lines))
    mean = images.mean(axis=0, keepdims=True).astype(np.float32)
    (d / "mean.binaryproto").write_bytes(array_to_blobproto(mean).SerializeToString())
    return d


# ------------------------------------------------------------------------------------------ states and setup
def declared_states(param):
    """(phase, stages) the file declares: DIGITS' three stages when its rules name stages, TRAIN and TEST when
    they name phases, TEST alone for a deploy file."""
    rules = [r for layer in param.layer for r in (*layer.include, *layer.exclude)]
    if any(r.stage or r.not_stage for r in rules):
        return [(TRAIN, ("train",)), (TEST, ("val",)), (TEST, ("deploy",))]
    if any(r.HasField("phase") for r in rules):
        return [(TRAIN, ()), (TEST, ())]
    return [(TEST, ())]


CASES = [(path, phase, stages) for path in generate.NET_FILES
         for phase, stages in declared_states(read_net(zoo.path(*path.split("/"))))]


def case_id(case):
    path, phase, stages = case
    return f"{path.rsplit('.', 1)[0]}-{stages[0] if stages else ('TRAIN' if phase == TRAIN else 'TEST')}"


def prepare(path, phase, stages, data):
    """The file's NetParameter made runnable here: data layers read the test LMDB / image list and mean file at
    batch 2 in TRAIN, 1 in TEST; Input layers take batch 1; DIGITS' unset classifier sizes are filled and its
    deploy stage gets the input DIGITS writes (1 x C x crop x crop), as digits_model does."""
    param = read_net(zoo.path(*path.split("/")))
    batch = 2 if phase == TRAIN else 1
    crop = 0
    for layer in param.layer:
        if layer.type == "Data":
            layer.data_param.source = str(data / "lmdb")
            layer.data_param.backend = caffe_pb2.DataParameter.LMDB
            layer.data_param.batch_size = batch
        elif layer.type == "ImageData":
            layer.image_data_param.source = str(data / "list.txt")
            layer.image_data_param.batch_size = batch
        elif layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = 1
        elif layer.type == "InnerProduct" and not layer.inner_product_param.HasField("num_output"):
            layer.inner_product_param.num_output = DIGITS_CLASSES
        if layer.type in DATA_TYPES:
            crop = crop or layer.transform_param.crop_size
            if layer.transform_param.HasField("mean_file"):
                layer.transform_param.mean_file = str(data / "mean.binaryproto")
    if "deploy" in stages:  # DIGITS writes `input`/`input_shape`; read_net would upgrade them to this layer
        with_input = caffe_pb2.NetParameter()
        with_input.CopyFrom(param)
        del with_input.layer[:]
        with_input.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(
            dim=[1, IMAGE[0], crop, crop])
        with_input.layer.extend(param.layer)
        param = with_input
    if not any(zoo_shapes.included(layer, phase, stages) and layer.type in DATA_TYPES for layer in param.layer):
        param.force_backward = True  # deploy nets have no loss; Caffe plans their backward only when forced
    return param


def seed_weights(net, seed=2):
    """Blobs a deploy file leaves at Caffe's default filler (constant 0) get N(0, 0.01) noise, so gradients
    flow; BatchNorm statistics become a trained net's (zero mean, unit variance)."""
    rng = np.random.default_rng(seed)
    for layer in net.layer_list:
        if layer.type == "BatchNorm":
            layer.blobs[1].data.fill_(1.0)
            layer.blobs[2].data.fill_(1.0)
            continue
        for blob in net.params.get(layer.layer_name, []):
            if not blob.data.any():
                blob.data[...] = rng.standard_normal(blob.data.shape, dtype=np.float32) * 0.01


def check_shapes(net, expected, checkpoints, batch):
    """Every blob as `expected` (Split blobs, which Caffe adds, as the blob they copy) and the hand-derived
    checkpoints (per-image shapes) at this batch."""
    actual = {name: tuple(net.blobs[name].shape) for name in net.blobs}
    split_of = {}
    for layer in net.layer_list:
        if layer.type == "Split":
            (source,) = net.bottom_names[layer.layer_name]
            split_of.update((top, source) for top in net.top_names[layer.layer_name])
    assert {b: s for b, s in actual.items() if b not in split_of} == expected
    assert {b: actual[b] for b in split_of} == {b: expected[source] for b, source in split_of.items()}
    assert {b: actual.get(b) for b in checkpoints} == {b: (batch, *s) for b, s in checkpoints.items()}


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_zoo_net_builds_runs_and_has_caffes_shapes(case, data):
    path, phase, stages = case
    param = prepare(path, phase, stages, data)
    batch = 2 if phase == TRAIN else 1
    expected = zoo_shapes.blob_shapes(param, phase, stages, image=IMAGE)
    checkpoints = zoo_shapes.CHECKPOINTS[path]
    # The hand-derived checkpoints and the arithmetic agree before caffelike is asked anything.
    assert {b: expected.get(b) for b in checkpoints} == {b: (batch, *s) for b, s in checkpoints.items()}

    caffe.set_random_seed(3)
    net = caffe.Net(param, phase, stages=list(stages))
    seed_weights(net)
    check_shapes(net, expected, checkpoints, batch)
    if "data" in net.inputs:
        net.blobs["data"].data[...] = np.random.default_rng(0).normal(size=net.blobs["data"].shape)
    outs = net.forward()
    check_shapes(net, expected, checkpoints, batch)  # the data layers' reshape on forward keeps them
    assert all(np.isfinite(v).all() for v in outs.values())

    types = {layer.layer_name: layer.type for layer in net.layer_list}
    losses = [t for name, tops in net.top_names.items() if types[name] == "SoftmaxWithLoss" for t in tops]
    for name, tops in net.top_names.items():
        if types[name] == "Accuracy":
            assert 0 <= float(net.blobs[tops[0]].data) <= 1
        elif types[name] == "Softmax":
            probs = net.blobs[tops[0]].data.reshape(batch, -1)
            np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    if losses:
        assert all(float(net.blobs[t].data) > 0 for t in losses)
        net.backward()
    else:
        # Seed the gradient below a final Softmax: random deep nets saturate it, and a one-hot softmax passes
        # nothing back.
        last = net.layer_list[-1]
        top = net.bottom_names[last.layer_name][0] if last.type == "Softmax" else net.top_names[last.layer_name][0]
        net.blobs[top].diff[...] = np.random.default_rng(1).normal(size=net.blobs[top].shape)
        net.backward(start=net._layer_names[-2] if last.type == "Softmax" else None)
        assert np.isfinite(net.blobs["data"].diff).all() and np.abs(net.blobs["data"].diff).sum() > 0
    first = next(iter(net.params))
    weight_diff = net.params[first][0].diff
    assert np.isfinite(weight_diff).all() and np.abs(weight_diff).sum() > 0


# ----------------------------------------------------------------------------- BVLC's and DIGITS' numbers
def layers_of(path):
    return {layer.name: layer for layer in read_net(zoo.path(*path.split("/"))).layer}


def data_layers(path):
    return [layer for layer in read_net(zoo.path(*path.split("/"))).layer if layer.type in DATA_TYPES]


def mults(layer):
    return [(p.lr_mult, p.decay_mult) for p in layer.param]


def bias(layer):
    p = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
    return pytest.approx(p.bias_filler.value)


# The models/ table of caffe-semantics.md section 6 and BVLC's files: (solver, field, value).
SOLVER_FACTS = [
    *[(f"{net}/solver.prototxt", field, value) for net in ("caffenet", "alexnet") for field, value in
      (("lr_policy", "step"), ("base_lr", 0.01), ("gamma", 0.1), ("stepsize", 100000), ("momentum", 0.9),
       ("weight_decay", 0.0005), ("max_iter", 450000), ("test_iter", [1000]), ("test_interval", 1000))],
    *[("googlenet/solver.prototxt", field, value) for field, value in
      (("lr_policy", "step"), ("gamma", 0.96), ("stepsize", 320000), ("average_loss", 40),
       ("test_initialization", False), ("weight_decay", 0.0002), ("base_lr", 0.01))],
    *[("googlenet/quick_solver.prototxt", field, value) for field, value in
      (("lr_policy", "poly"), ("power", 0.5), ("max_iter", 2400000), ("average_loss", 40),
       ("test_initialization", False), ("weight_decay", 0.0002))],
    *[("flickr_style/solver.prototxt", field, value) for field, value in
      (("lr_policy", "step"), ("base_lr", 0.001), ("gamma", 0.1), ("stepsize", 20000), ("max_iter", 100000),
       ("test_iter", [100]))],
]


@pytest.mark.parametrize("path", generate.SOLVER_FILES)
def test_solver_parses_and_names_the_train_val_beside_it(path):
    solver = read_solver(zoo.path(*path.split("/")))
    folder = pathlib.Path(zoo.path(path.split("/")[0]))
    assert (folder / solver.net).is_file()
    assert solver.type == "SGD" and solver.momentum == pytest.approx(0.9)
    for file, field, value in SOLVER_FACTS:
        if file == path:
            got = getattr(solver, field)
            assert (list(got) if field == "test_iter" else got) == pytest.approx(value), field


def test_caffenet_and_alexnet_differ_where_bvlc_says():
    caffenet, alexnet = layers_of("caffenet/train_val.prototxt"), layers_of("alexnet/train_val.prototxt")
    norms_and_pools = [[n for n in layers if n.startswith(("norm", "pool"))] for layers in (caffenet, alexnet)]
    assert norms_and_pools == [["pool1", "norm1", "pool2", "norm2", "pool5"],  # CaffeNet: pool before norm
                               ["norm1", "pool1", "norm2", "pool2", "pool5"]]  # AlexNet: norm before pool
    for layers in (caffenet, alexnet):
        assert [layers[f"conv{i}"].convolution_param.group for i in range(1, 6)] == [1, 2, 1, 2, 2]
        assert all(mults(layers[n]) == [(1, 1), (2, 0)] for n in ("conv1", "conv3", "fc6", "fc8"))
        assert layers["conv1"].convolution_param.weight_filler.std == pytest.approx(0.01)
        assert layers["fc6"].inner_product_param.weight_filler.std == pytest.approx(0.005)
        assert [r.phase for r in layers["accuracy"].include] == [TEST]
    assert [bias(caffenet[n]) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")] == \
        [0, 1, 0, 1, 1, 1, 1, 0]
    assert [bias(alexnet[n]) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")] == \
        [0, 0.1, 0, 0.1, 0.1, 0.1, 0.1, 0]
    for path in ("caffenet/train_val.prototxt", "alexnet/train_val.prototxt"):
        train, test = data_layers(path)
        assert [r.phase for r in train.include] == [TRAIN] and [r.phase for r in test.include] == [TEST]
        assert (train.data_param.batch_size, test.data_param.batch_size) == (256, 50)
        assert (train.transform_param.mirror, test.transform_param.mirror) == (True, False)
        assert train.transform_param.crop_size == test.transform_param.crop_size == 227
        assert train.transform_param.mean_file == test.transform_param.mean_file != ""
        assert train.data_param.backend == caffe_pb2.DataParameter.LMDB
    deploy = read_net(zoo.path("caffenet", "deploy.prototxt"))
    assert tuple(deploy.layer[0].input_param.shape[0].dim) == (10, 3, 227, 227)
    assert not any(layer.param for layer in deploy.layer)  # BVLC's CaffeNet deploy has no multipliers


def test_googlenet_heads_and_accuracies():
    layers = layers_of("googlenet/train_val.prototxt")
    losses = {n: (list(layer.top), list(layer.loss_weight)) for n, layer in layers.items()
              if layer.type == "SoftmaxWithLoss"}
    assert losses == {"loss1/loss": (["loss1/loss1"], [pytest.approx(0.3)]),
                      "loss2/loss": (["loss2/loss1"], [pytest.approx(0.3)]),
                      "loss3/loss3": (["loss3/loss3"], [1])}
    accuracies = {n: (layer.accuracy_param.top_k, [r.phase for r in layer.include]) for n, layer in layers.items()
                  if layer.type == "Accuracy"}
    assert accuracies == {f"loss{k}/top-{t}": (t, [TEST]) for k in (1, 2, 3) for t in (1, 5)}
    assert [layers[f"loss{k}/drop_fc"].dropout_param.dropout_ratio for k in (1, 2)] == [pytest.approx(0.7)] * 2
    assert layers["pool5/drop_7x7_s1"].dropout_param.dropout_ratio == pytest.approx(0.4)
    train, test = data_layers("googlenet/train_val.prototxt")
    assert list(train.transform_param.mean_value) == list(test.transform_param.mean_value) == [104, 117, 123]
    assert (train.data_param.batch_size, test.data_param.batch_size) == (32, 50)
    assert train.transform_param.crop_size == 224 and train.transform_param.mirror
    assert all(bias(layer) == 0.2 for layer in layers.values()
               if layer.type == "Convolution" or layer.name.endswith("/fc"))
    deploy = layers_of("googlenet/deploy.prototxt")
    assert "conv1/relu_7x7" in deploy and not any(n.startswith(("loss1", "loss2")) for n in deploy)


def test_rcnn_and_flickr_heads():
    rcnn = read_net(zoo.path("rcnn_ilsvrc13", "deploy.prototxt"))
    assert rcnn.layer[-1].name == "fc-rcnn" and rcnn.layer[-1].inner_product_param.num_output == 200
    assert not any(layer.type == "Softmax" for layer in rcnn.layer)
    for path in ("flickr_style/deploy.prototxt", "flickr_style/train_val.prototxt"):
        head = layers_of(path)["fc8_flickr"]
        assert head.inner_product_param.num_output == 20 and mults(head) == [(10, 1), (20, 0)]
    train, test = data_layers("flickr_style/train_val.prototxt")
    for layer in (train, test):
        p = layer.image_data_param
        assert (layer.type, p.new_height, p.new_width, p.batch_size) == ("ImageData", 256, 256, 50)
        assert layer.transform_param.crop_size == 227 and layer.transform_param.mean_file


@pytest.mark.parametrize("path,classifiers", [("digits-alexnet/alexnet.prototxt", ["fc8"]),
                                              ("digits-googlenet/googlenet.prototxt",
                                               ["loss1/classifier", "loss2/classifier", "loss3/classifier"])],
                         ids=["alexnet", "googlenet"])
def test_digits_networks_leave_the_class_count_to_digits(path, classifiers):
    layers = layers_of(path)
    unset = [n for n, layer in layers.items()
             if layer.type == "InnerProduct" and not layer.inner_product_param.HasField("num_output")]
    assert unset == classifiers
    train, val = data_layers(path)
    assert (train.name, list(train.include[0].stage)) == ("train-data", ["train"])
    assert (val.name, list(val.include[0].stage)) == ("val-data", ["val"])
    assert not train.data_param.source and not train.transform_param.mean_file  # DIGITS sets them
    assert [layer.name for layer in layers.values() if layer.type == "Softmax"] == ["softmax"]
    assert all(list(r.stage) == ["val"] for layer in layers.values() if layer.type == "Accuracy"
               for r in layer.include)


def test_lenet_deploy_builds_and_classifies():
    # lenet_train_test and the DIGITS LeNet are trained end to end by test_cli.py (digits) and test_tutorial.py.
    net = caffe.Net(zoo.path("lenet", "lenet.prototxt"), caffe.TEST,
                    weights=zoo.path("lenet", "lenet_mnist5k.caffemodel"))
    assert net.forward()["prob"].shape == (64, 10)
