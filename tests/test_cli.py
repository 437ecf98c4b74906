"""The `caffelike` command: Caffe's verbs, flag spellings and log lines."""
import os
import re
import subprocess
import sys

import pytest
from helpers import MARKED_MODULE
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


# ------------------------------------------------------------------------ Python layers from the model's folder
TRUST = "CAFFELIKE_TRUST_MODEL_DIR"


def python_model(tmp_path, module):
    """A downloaded model's folder: NET with a Python layer whose module, beside the prototxt, leaves
    `<module>.imported` there when it is imported."""
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / f"{module}.py").write_text(MARKED_MODULE)
    layer = f'layer {{ name: "ten" type: "Python" bottom: "x" top: "x10" python_param {{ module: "{module}" ' \
            'layer: "Ten" } }\n'
    text = NET.replace('bottom: "x" top: "y"', 'bottom: "x10" top: "y"').replace('layer { name: "ip"',
                                                                                  layer + 'layer { name: "ip"')
    (folder / "net.prototxt").write_text(text)
    return folder


@pytest.mark.parametrize("verb", ["test", "time"])
def test_net_verbs_refuse_the_model_folders_code_without_consent(tmp_path, capsys, monkeypatch, verb):
    monkeypatch.delenv(TRUST, raising=False)
    module = f"cli_refused_{verb}"
    folder = python_model(tmp_path, module)
    assert main([verb, "--model", str(folder / "net.prototxt"), "--iterations", "1"]) == 1
    err = capsys.readouterr().err
    assert (f'caffelike {verb}: error: Python layer "ten" ({module}.Ten) would import {folder / module}.py from '
            "the model's folder") in err
    assert "--trust-model-dir" in err and "trust_python=True" in err and f"{TRUST}=1" in err
    assert not (folder / f"{module}.imported").exists()


@pytest.mark.parametrize("verb,how", [("test", "flag"), ("time", "flag"), ("test", "environment")])
def test_net_verbs_run_the_model_folders_code_with_consent(tmp_path, capsys, monkeypatch, verb, how):
    monkeypatch.delenv(TRUST, raising=False)
    module = f"cli_trusted_{verb}_{how}"
    folder = python_model(tmp_path, module)
    argv = [verb, "--model", str(folder / "net.prototxt"), "--iterations", "1"]
    if how == "flag":
        argv.append("--trust-model-dir")
    else:
        monkeypatch.setenv(TRUST, "1")
    assert main(argv) == 0, capsys.readouterr().err
    assert (folder / f"{module}.imported").exists()


def test_python_path_flag_needs_no_consent(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(TRUST, raising=False)
    folder = python_model(tmp_path, "cli_python_path")
    assert main(["test", "--model", str(folder / "net.prototxt"), "--iterations", "1",
                 "--python-path", str(folder)]) == 0, capsys.readouterr().err


def test_python_m_caffelike_run_in_the_model_folder_still_asks(tmp_path):
    """`python -m` puts the working directory on sys.path; the command drops it, as `caffelike` never has it."""
    folder = python_model(tmp_path, "cli_python_m")
    env = {k: v for k, v in os.environ.items() if k not in (TRUST, "PYTHONPATH")}
    run = subprocess.run([sys.executable, "-m", "caffelike", "test", "--model", "net.prototxt", "--iterations",
                          "1"], cwd=folder, env=env, capture_output=True, text=True)
    assert run.returncode == 1 and "would import" in run.stderr and "from the model's folder" in run.stderr, \
        run.stderr
    assert not (folder / "cli_python_m.imported").exists()


@pytest.mark.parametrize("verb", ["draw", "upgrade_net_proto_text", "upgrade_net_proto_binary"])
def test_draw_and_upgrade_never_import_the_models_code(tmp_path, capsys, monkeypatch, verb):
    module = f"cli_never_{verb}"
    folder = python_model(tmp_path, module)
    monkeypatch.chdir(folder)
    monkeypatch.setenv(TRUST, "1")  # even with consent: these verbs only read the file
    source = "net.prototxt"
    if verb == "upgrade_net_proto_binary":
        from caffelike.format.prototxt import read_net

        source = "net.binaryproto"
        (folder / source).write_bytes(read_net("net.prototxt").SerializeToString())
    out = "net.dot" if verb == "draw" else "upgraded.prototxt"
    assert main([verb, source, out]) == 0, capsys.readouterr().err
    assert (folder / out).stat().st_size > 0
    assert not (folder / f"{module}.imported").exists() and module not in sys.modules
