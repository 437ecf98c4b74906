"""DIGITS' model files: a stage-based network becomes the train_val/deploy/solver prototxts DIGITS writes
(compared with the files real DIGITS wrote for the tutorial, reference/digits-derived/out_*)."""
import pathlib

import pytest
from google.protobuf import text_format

from caffelike import zoo
from caffelike.digits_model import write_model_files
from caffelike.proto import caffe_pb2
from caffelike.weights import array_to_blob

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
