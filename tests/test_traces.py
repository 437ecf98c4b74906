"""Training parity with real `caffe train`: LeNet on the fixture MNIST LMDBs, from the same initial weights,
must show Caffe's displayed loss at every iteration, Caffe's test outputs, and end near Caffe's final weights
(tests/fixtures/traces/<slug>, recorded by BVLC Caffe; README there gives the measured bounds)."""
import json

import numpy as np
import pytest
from helpers import FIXTURES

from caffelike.format.blobproto import blob_to_array
from caffelike.format.prototxt import read_solver
from caffelike.format.weights import read_caffemodel
from caffelike.train.solver import Solver

TRACES = sorted(p.name for p in (FIXTURES / "traces").iterdir() if p.is_dir())
ADAPTIVE = {"AdaGrad", "RMSProp", "AdaDelta", "Adam"}


def run_trace(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder)
    trace = json.loads((folder / "trace.json").read_text())
    param = read_solver("solver.prototxt")
    param.snapshot_prefix = str(tmp_path / "snap")  # keep the fixture folder clean
    solver = Solver(param, solver_file="solver.prototxt")
    solver.copy_weights(trace["init_weights"])
    displayed = {}
    solver.add_hook("on_backward", lambda s: displayed.__setitem__(s.iter, s.smoothed_loss))
    solver.solve()
    return trace, solver, displayed


@pytest.mark.parametrize("name", TRACES)
def test_trace_matches_caffe(name, tmp_path, monkeypatch):
    folder = FIXTURES / "traces" / name
    trace, solver, displayed = run_trace(folder, tmp_path, monkeypatch)
    for entry in trace["iterations"][:60]:
        it = entry["iter"]
        rtol = 1e-3 if it < 20 else 1e-2
        assert displayed[it] == pytest.approx(entry["loss"], rel=rtol), f"displayed loss at iteration {it}"
    assert solver.smoothed_loss == pytest.approx(trace["iterations"][60]["loss"], rel=1e-2)
    lrs = dict(solver.history["lr"])
    for entry in trace["iterations"][:60]:
        assert lrs[entry["iter"]] == pytest.approx(entry["lr"], rel=1e-6)
    ours = {(it, name): v for name, series in solver.history["test"].items() for it, v in series}
    for test in trace["tests"]:
        for out, value in test["outputs"].items():
            tol = dict(abs=0.011) if out == "accuracy" else dict(rel=2e-2)
            assert ours[(test["iter"], out)] == pytest.approx(value, **tol), f"test {out} at {test['iter']}"
    bound = 3e-2 if solver.param.type in ADAPTIVE else 2e-3
    final = read_caffemodel(str(folder / "final.caffemodel"))
    for lp in final.layer:
        for i, bp in enumerate(lp.blobs):
            expected = blob_to_array(bp)
            got = solver.net.params[lp.name][i].data
            err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
            assert err < bound, f"{lp.name}[{i}]: relative L2 error {err:.2e} >= {bound}"


def test_resume_on_lmdb_data_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    folder = FIXTURES / "traces" / "sgd_step"
    monkeypatch.chdir(folder)
    init = json.loads((folder / "trace.json").read_text())["init_weights"]

    def solver(max_iter):
        param = read_solver("solver.prototxt")
        param.snapshot_prefix = str(tmp_path / "snap")
        param.max_iter, param.display, param.snapshot = max_iter, 0, 0
        s = Solver(param, solver_file="solver.prototxt")
        s.copy_weights(init)
        return s

    full = solver(30)
    full.solve()
    first = solver(17)
    first.solve()  # snapshot_after_train writes snap_iter_17.*
    resumed = solver(30)
    resumed.solve(str(tmp_path / "snap_iter_17.solverstate"))
    for name, blobs in full.net.params.items():
        for a, b in zip(blobs, resumed.net.params[name]):
            assert np.array_equal(a.data, b.data), name
