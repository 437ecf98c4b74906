"""The `caffelike` command: Caffe's verbs, flag spellings and log lines."""
import re

import pytest
import torch

from caffelike import zoo
from caffelike.cli import main, normalize_flags

NET = """name: "cli"
layer { name: "data" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 bias_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" loss_weight: 2 }
"""
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return str(path)


def messages(err: str) -> list[str]:
    lines = [line for line in err.splitlines() if GLOG.match(line)]
    return [GLOG.sub("", line) for line in lines]


def test_single_dash_and_equals_flags_are_accepted():
    assert normalize_flags(["-model", "a", "-gpu=0", "--weights=w", "-x", "-1"]) == \
        ["--model", "a", "--gpu=0", "--weights=w", "-x", "-1"]


@pytest.mark.parametrize("flags", [["--iterations=3"], ["-iterations", "3"], ["--iterations", "3"]],
                         ids=["equals", "single-dash", "double-dash"])
def test_test_command_reports_like_caffe(model, capsys, flags):
    assert main(["test", "-model", model, *flags]) == 0
    lines = messages(capsys.readouterr().err)
    assert "Running for 3 iterations." in lines
    assert sum(line.startswith("Batch ") for line in lines) == 3
    # y = 0.5 (bias only, zero weights), t = 0: loss = 4 * 0.25 / 2 / 2 = 0.25 per batch, weighted by 2.
    assert "Loss: 0.5" in lines
    assert "loss = 0.25 (* 2 = 0.5 loss)" in lines


def test_time_command_prints_caffe_time_lines(model, capsys):
    assert main(["time", "--model", model, "--iterations", "2"]) == 0
    lines = messages(capsys.readouterr().err)
    assert "*** Benchmark begins ***" in lines and "*** Benchmark ends ***" in lines
    assert sum(bool(re.match(r"Iteration: \d+ forward-backward time: [\d.e-]+ ms\.", ln)) for ln in lines) == 2
    assert any(re.match(r"^\s+ip\tforward: [\d.e-]+ ms\.$", ln) for ln in lines)
    assert any(ln.startswith("Average Forward-Backward: ") for ln in lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_device_query_without_cuda_says_so(capsys):
    assert main(["device_query"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_flag_without_cuda_is_a_clear_error(model, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["test", "--model", model, "--gpu", "0"]) == 1
    assert "--gpu 0: no CUDA device" in capsys.readouterr().err


def test_bad_model_path_is_reported(capsys):
    assert main(["test", "--model", "/nope.prototxt"]) == 1
    assert "Could not open file /nope.prototxt" in capsys.readouterr().err


def test_digits_trains_lenet_on_the_bundled_digits(tmp_path, capsys):
    assert main(["digits", "--out", str(tmp_path), "--max_iter", "60"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy on the 1000 held-out digits: ([\d.]+)", out).group(1))
    assert accuracy > 0.8, out
    assert (tmp_path / "lenet_iter_60.caffemodel").exists() and (tmp_path / "lenet_curves.png").exists()
    # A second run reuses the LMDBs it wrote.
    assert main(["digits", "--out", str(tmp_path), "--max_iter", "1"]) == 0


def test_digits_pretrained_scores_the_shipped_weights(capsys):
    assert main(["digits", "--pretrained"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))
    assert accuracy > 0.95, out
    assert zoo.path("lenet", "lenet.prototxt") in out
