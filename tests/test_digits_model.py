"""DIGITS' model files: a stage-based network becomes the train_val/deploy/solver prototxts DIGITS writes
(compared with the files real DIGITS wrote for the tutorial, reference/digits-derived/out_*)."""
import pathlib

import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

import caffelike as caffe
from caffelike import zoo
from caffelike.digits.model_files import write_model_files
from caffelike.errors import PrototxtError
from caffelike.format.blobproto import array_to_blob
from caffelike.format.prototxt import read_net
from caffelike.net.netstate import filter_net, make_state

REFERENCE = pathlib.Path(__file__).resolve().parent / "fixtures" / "digits_derived"


@pytest.fixture
def mnist_like_dataset(tmp_path):
    """A dataset folder with DIGITS' MNIST counts (45,002 train / 14,998 val); no images are needed here."""
    import numpy as np

    d = tmp_path / "dataset"
    d.mkdir()
    (d / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
    (d / "train.txt").write_text("x.png 0\n" * 45002)
    (d / "val.txt").write_text("x.png 0\n" * 14998)
    bp = array_to_blob(np.zeros((1, 1, 28, 28), np.float32))
    (d / "mean.binaryproto").write_bytes(bp.SerializeToString())
    return d


def parse(path, msg):
    return text_format.Parse(pathlib.Path(path).read_text(), msg)


def strip_paths(net):
    for lp in net.layer:
        lp.data_param.ClearField("source")
        lp.transform_param.ClearField("mean_file")
    return net


@pytest.mark.parametrize("network,reference", [
    (("digits-lenet", "lenet.prototxt"), "out_plain_lenet"),
    (("digits-occlusion", "lenet_blank_square.prototxt"), "out_lenet_blank_square"),
], ids=["plain", "occlusion"])
def test_files_match_what_digits_wrote(network, reference, mnist_like_dataset, tmp_path):
    info = write_model_files(zoo.path(*network), str(mnist_like_dataset), str(tmp_path / "job"), epochs=30,
                             solver_mode="GPU")
    ref = REFERENCE / reference
    ours = strip_paths(parse(info["files"]["train_val"], caffe_pb2.NetParameter()))
    theirs = strip_paths(parse(ref / "train_val.prototxt", caffe_pb2.NetParameter()))
    assert ours == theirs
    assert parse(info["files"]["deploy"], caffe_pb2.NetParameter()) == \
        parse(ref / "deploy.prototxt", caffe_pb2.NetParameter())
    solver = parse(info["files"]["solver"], caffe_pb2.SolverParameter())
    expected = parse(ref / "solver.prototxt", caffe_pb2.SolverParameter())
    for field in ("test_iter", "test_interval", "base_lr", "display", "max_iter", "lr_policy", "gamma", "momentum",
                  "weight_decay", "stepsize", "snapshot", "snapshot_prefix", "solver_mode", "net"):
        assert getattr(solver, field) == getattr(expected, field), field


def test_train_only_python_layer_is_dropped_from_deploy(mnist_like_dataset, tmp_path):
    src = pathlib.Path(zoo.path("digits-occlusion", "lenet_blank_square.prototxt")).read_text()
    network = tmp_path / "trainonly.prototxt"
    network.write_text(src.replace('layer: "BlankSquareLayer"\n  }', 'layer: "BlankSquareLayer"\n  }\n'
                                   '  include { phase: TRAIN }'))
    info = write_model_files(str(network), str(mnist_like_dataset), str(tmp_path / "job"))
    deploy = parse(info["files"]["deploy"], caffe_pb2.NetParameter())
    train_val = parse(info["files"]["train_val"], caffe_pb2.NetParameter())
    assert "blank_square" not in [lp.name for lp in deploy.layer]
    square = [lp for lp in train_val.layer if lp.name == "blank_square"][0]
    assert [r.phase for r in square.include] == [caffe_pb2.TRAIN]


# ------------------------------------------------------------------- DIGITS' standard AlexNet and GoogLeNet
def image_dataset(folder, classes, size):
    """A colour dataset folder of size x size images: labels, split lists and mean (no images are needed)."""
    import numpy as np

    folder.mkdir()
    (folder / "labels.txt").write_text("".join(f"class{i}\n" for i in range(classes)))
    (folder / "train.txt").write_text("x.png 0\n" * 1000)
    (folder / "val.txt").write_text("x.png 0\n" * 100)
    bp = array_to_blob(np.zeros((1, 3, size, size), np.float32))
    (folder / "mean.binaryproto").write_bytes(bp.SerializeToString())
    return folder


def layer_names(net, phase, stages=()):
    return [lp.name for lp in filter_net(net, make_state(phase, stages=stages)).layer]


# network, its crop, its classifiers, how many top-5 Accuracy layers it has, a pooled blob and its deploy shape
STANDARD = {"alexnet": (("digits-alexnet", "alexnet.prototxt"), 227, ["fc8"], 0, "pool5", (1, 256, 6, 6)),
            "googlenet": (("digits-googlenet", "googlenet.prototxt"), 224,
                          ["loss1/classifier", "loss2/classifier", "loss3/classifier"], 3, "pool5/7x7_s1",
                          (1, 1024, 1, 1))}


@pytest.mark.parametrize("classes", [3, 6])
@pytest.mark.parametrize("name", list(STANDARD))
def test_standard_networks_give_runnable_model_files(name, classes, tmp_path):
    """On 256x256 images: the network's crop goes on both data layers and sizes the deploy input (as DIGITS'
    caffe_train.py does), every classifier gets the class count, top-5 Accuracy survives only with >= 5 classes,
    and each file holds the stage-based network's layers for train, val and deploy."""
    network, crop, classifiers, top5_layers, pooled, pooled_shape = STANDARD[name]
    dataset = image_dataset(tmp_path / "dataset", classes, 256)
    info = write_model_files(zoo.path(*network), str(dataset), str(tmp_path / "job"))
    train_val = parse(info["files"]["train_val"], caffe_pb2.NetParameter())
    deploy = parse(info["files"]["deploy"], caffe_pb2.NetParameter())

    train, val = train_val.layer[:2]
    assert [(lp.name, lp.transform_param.crop_size) for lp in (train, val)] == [("train-data", crop),
                                                                                 ("val-data", crop)]
    assert train.transform_param.mirror and train.transform_param.mean_file.endswith("mean.binaryproto")
    assert tuple(deploy.input_shape[0].dim) == (1, 3, crop, crop)
    for net in (train_val, deploy):
        assert {lp.name: lp.inner_product_param.num_output for lp in net.layer if lp.name in classifiers} == \
            dict.fromkeys([c for c in classifiers if net is train_val or c == classifiers[-1]], classes)
    top5 = {lp.name for lp in train_val.layer if lp.type == "Accuracy" and lp.accuracy_param.top_k == 5}
    assert len(top5) == (top5_layers if classes >= 5 else 0)
    original = read_net(zoo.path(*network))
    dropped = {lp.name for lp in original.layer if lp.accuracy_param.top_k == 5} - top5
    for phase, stage in ((caffe_pb2.TRAIN, "train"), (caffe_pb2.TEST, "val")):
        expected = [n for n in layer_names(original, phase, [stage]) if n not in dropped]
        assert layer_names(train_val, phase) == expected
    assert [lp.name for lp in deploy.layer] == layer_names(original, caffe_pb2.TEST, ["deploy"])
    assert not any(lp.name.startswith(("loss1/", "loss2/")) for lp in deploy.layer)

    net = caffe.Net(info["files"]["deploy"], caffe.TEST)
    assert tuple(net.blobs[pooled].shape) == pooled_shape
    assert net.forward()["softmax"].shape == (1, classes)


def test_crop_size_follows_digits_rules(tmp_path):
    """The job's crop wins and must fit the images; the network's own crop is cut down to small images."""
    network = zoo.path("digits-alexnet", "alexnet.prototxt")

    def crops(info):
        train_val = parse(info["files"]["train_val"], caffe_pb2.NetParameter())
        deploy = parse(info["files"]["deploy"], caffe_pb2.NetParameter())
        return [lp.transform_param.crop_size for lp in train_val.layer[:2]], tuple(deploy.input_shape[0].dim)

    big = image_dataset(tmp_path / "big", 3, 256)
    assert crops(write_model_files(network, str(big), str(tmp_path / "asked"), crop_size=240)) == \
        ([240, 240], (1, 3, 240, 240))
    with pytest.raises(PrototxtError, match="crop_size 300 is larger than the images"):
        write_model_files(network, str(big), str(tmp_path / "too_big"), crop_size=300)
    small = image_dataset(tmp_path / "small", 3, 200)
    assert crops(write_model_files(network, str(small), str(tmp_path / "small_job"))) == \
        ([200, 200], (1, 3, 200, 200))
