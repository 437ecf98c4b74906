"""`caffelike train`: flags, Caffe's log lines, snapshots, resume, signals and the curves PNG."""
import os
import re
import signal

import pytest
from helpers import MARKED_MODULE

from caffelike.cli import main
from caffelike.train.signals import SignalHandler

GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")
NET = """name: "tiny"
layer { name: "data" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 bias_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def messages(err):
    return [GLOG.sub("", ln) for ln in err.splitlines() if GLOG.match(ln)]


@pytest.fixture
def solver_file(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" display: 1 max_iter: 4 snapshot: 2 '
                    f'snapshot_prefix: "{tmp_path}/snap" type: "SGD"')
    return str(path)


def test_train_logs_like_caffe_and_snapshots(solver_file, tmp_path, capsys):
    assert main(["train", "-solver", solver_file]) == 0
    lines = messages(capsys.readouterr().err)
    assert "Use CPU." in lines and "Solving tiny" in lines and "Learning Rate Policy: fixed" in lines
    assert [ln for ln in lines if re.match(r"Iteration \d+, lr = ", ln)] == [f"Iteration {i}, lr = 0.1"
                                                                               for i in range(4)]
    assert sum(bool(re.match(r"Iteration \d+ \([\d.e+-]+ iter/s, [\d.e+-]+s/1 iters\), loss = 0.25$", ln))
               for ln in lines) == 1  # bias 0.5 -> y = 0.5, t = 0 -> loss 0.25 at iteration 0
    assert f"Snapshotting to binary proto file {tmp_path}/snap_iter_2.caffemodel" in lines
    assert f"Snapshotting solver state to binary proto file {tmp_path}/snap_iter_4.solverstate" in lines
    assert lines[-1] == "Optimization Done."
    assert (tmp_path / "snap_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_with_snapshot_flag(solver_file, tmp_path, capsys):
    assert main(["train", "--solver", solver_file]) == 0
    capsys.readouterr()
    assert main(["train", "--solver", solver_file, "--snapshot", str(tmp_path / "snap_iter_2.solverstate")]) == 0
    lines = messages(capsys.readouterr().err)
    assert "SGDSolver: restoring history" in lines
    assert not any(ln.startswith("Iteration 1, lr") for ln in lines) and "Iteration 3, lr = 0.1" in lines


def test_snapshot_and_weights_together_is_refused(solver_file, capsys):
    assert main(["train", "--solver", solver_file, "--snapshot", "a", "--weights", "b"]) == 1
    assert "Give a snapshot to resume training or weights to finetune but not both." in capsys.readouterr().err


def test_signal_requests():
    with SignalHandler("stop", "snapshot") as handler:
        os.kill(os.getpid(), signal.SIGHUP)
        assert handler.requested_action() == "snapshot" and handler.requested_action() is None
        os.kill(os.getpid(), signal.SIGINT)
        assert handler.requested_action() == "stop"
    with SignalHandler("none", "none") as handler:
        os.kill(os.getpid(), signal.SIGINT)
        assert handler.requested_action() is None


def test_sigint_stops_after_a_snapshot(solver_file, tmp_path, capsys, monkeypatch):
    from caffelike.train import solver as solver_module

    original = solver_module.Solver.apply_update

    def interrupt_at_iteration_1(self, display=False):
        original(self, display)
        if self.iter == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(solver_module.Solver, "apply_update", interrupt_at_iteration_1)
    assert main(["train", "--solver", solver_file]) == 0
    lines = messages(capsys.readouterr().err)
    assert "Optimization stopped early." in lines
    assert (tmp_path / "snap_iter_2.caffemodel").exists() and not (tmp_path / "snap_iter_4.caffemodel").exists()


def test_precision_and_compile_flags(solver_file, tmp_path, capsys, monkeypatch):
    from caffelike.net.graph import NetGraph
    from caffelike.train.solver import Solver

    seen = {}
    monkeypatch.setattr(NetGraph, "compile", lambda self, **kw: seen.setdefault("compiled", True))
    original = Solver.set_precision
    monkeypatch.setattr(Solver, "set_precision", lambda self, name: (seen.setdefault("precision", name),
                                                                      original(self, name)))
    assert main(["train", "--solver", solver_file, "--precision", "bf16", "--compile"]) == 0
    assert seen == {"precision": "bf16", "compiled": True}
    assert "Optimization Done." in messages(capsys.readouterr().err)




def test_trust_model_dir_lets_train_run_the_models_python_layer(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    (tmp_path / "train_layers.py").write_text(MARKED_MODULE)
    (tmp_path / "net.prototxt").write_text(NET.replace('bottom: "x" top: "y"', 'bottom: "x10" top: "y"').replace(
        'layer { name: "ip"', 'layer { name: "ten" type: "Python" bottom: "x" top: "x10" '
                              'python_param { module: "train_layers" layer: "Ten" } }\nlayer { name: "ip"'))
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 '
                                              'display: 1 snapshot_after_train: false')
    monkeypatch.chdir(tmp_path)  # `caffe train` run in the model's folder, as DIGITS does
    assert main(["train", "--solver", "solver.prototxt"]) == 1
    err = capsys.readouterr().err
    assert (f'caffelike train: error: Python layer "ten" (train_layers.Ten) would import {tmp_path}/train_layers.py '
            "from the working directory") in err and "--trust-model-dir" in err
    assert not (tmp_path / "train_layers.imported").exists()
    assert main(["train", "--solver", "solver.prototxt", "--trust-model-dir"]) == 0, capsys.readouterr().err
    assert (tmp_path / "train_layers.imported").exists()
