"""The benchmark suite runs and checks what it claims to check.  Nothing here times anything: speed is shown by
bench/run.py's tables of ratios, never by timed tests."""
import json
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]

from bench import handwritten, opencv_dnn, zoo_nets  # bench/ is not installed: pytest puts the root on sys.path


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "nets,opencv,training,pylayer,time",
            "--nets", "lenet", "--modes", "eager", "--iters", "2", "--warmup", "1", "--train-iters", "2",
            "--threads", "1", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_quick_run_writes_every_section(quick_results):
    results, stdout = quick_results
    assert {"machine", "settings", "checks", "nets", "opencv", "training", "pylayer", "time"} <= set(results)
    assert results["errors"] == {}
    assert {"cpu", "cores", "torch", "torch_threads", "device", "date"} <= set(results["machine"])
    assert "ratio = caffelike / torch" in stdout


def test_quick_run_checked_outputs_before_timing(quick_results):
    results, _ = quick_results
    check = results["checks"]["lenet"]
    assert check["outputs_match"] is True
    assert check["blobs_compared"] == 7  # conv1, pool1, conv2, pool2, ip1 (after relu1), ip2, prob
    assert results["checks"]["lrn_vs_local_response_norm_max_abs_diff"] < 1e-4


def test_quick_run_rows(quick_results):
    results, _ = quick_results
    rows = results["nets"]
    assert [(r["net"], r["batch"], r["mode"], r["pass"]) for r in rows] == [
        ("lenet", 64, "eager", "forward"), ("lenet", 64, "eager", "fwd+bwd")]
    for r in rows:
        assert r["caffelike_ms"] > 0 and r["torch_ms"] > 0
        assert r["ratio"] == pytest.approx(r["caffelike_ms"] / r["torch_ms"])


def test_quick_run_other_sections(quick_results):
    results, _ = quick_results
    opencv = results["opencv"]
    if opencv["rows"]:
        row = opencv["rows"][0]
        assert opencv["status"].startswith("OpenCV") and row["outputs_match"]
        # the pycaffe path (numpy in and out) with the memory-format policy on and off, the module call, torch
        for side in ("pycaffe", "pycaffe_nchw", "module", "torch"):
            assert row[f"{side}_vs_opencv"] == pytest.approx(row[f"{side}_ms"] / row["opencv_ms"])
        assert row["max_abs_diff_nchw"] < 1e-4
    else:
        assert opencv["status"].startswith("not installed")
    runs = results["training"]
    assert [(r["net"], r["data_processes"]) for r in runs] == [("lenet", 1), ("lenet", 0)]
    for training in runs:
        assert training["iterations"] == 2 and training["images_per_s"] > 0
        assert training["pipeline_prefetch_images_per_s"] > 0
        assert training["iteration_vs_fwd_bwd"] == pytest.approx(training["iteration_ms"] / training["fwd_bwd_ms"])
    pylayer = results["pylayer"]
    assert {(r["variant"], r["pass"]) for r in pylayer["rows"]} == {
        (v, p) for v in ("none", "BlankSquare", "TorchLayer") for p in ("forward", "fwd+bwd")}
    assert pylayer["loss_check"]["BlankSquare"] == pytest.approx(pylayer["loss_check"]["TorchLayer"], rel=1e-5)
    timed = results["time"]
    assert timed["returncode"] == 0
    assert set(timed["average_ms"]) == {"Forward pass", "Backward pass", "Forward-Backward"}
    assert any("*** Benchmark begins ***" in line for line in timed["lines"])


def test_opencv_section_without_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    out = opencv_dnn.run([(zoo_nets.NETS["lenet"], 2, 1)], 0, "cpu")
    assert out == {"status": out["status"], "rows": []}
    assert out["status"].startswith("not installed")


@pytest.mark.parametrize("net_name", ["lenet", "cifar10_quick"])
def test_handwritten_net_matches_caffelike(net_name):
    spec = zoo_nets.NETS[net_name]
    net = zoo_nets.build(spec, 2)
    hand = handwritten.load_from(handwritten.MODULES[net_name](), net)
    check = handwritten.check_against(net, hand, zoo_nets.sample_input(spec, 2))
    assert check["blobs_compared"] >= 7 and check["max_abs_diff_output"] < 1e-5


def _perturb_weight(hand):
    with torch.no_grad():
        hand.conv2.weight[0, 0, 0, 0] += 0.5


def _floor_pooling(hand):
    hand.pool1.ceil_mode = False  # Caffe rounds up: 32 -> 16, floor gives 15


@pytest.mark.parametrize("net_name, spoil, message", [
    ("lenet", _perturb_weight, "differs from caffelike's"),
    ("cifar10_quick", _floor_pooling, "of shape"),
], ids=["changed-weight", "floor-pooling"])
def test_handwritten_check_catches_a_different_net(net_name, spoil, message):
    spec = zoo_nets.NETS[net_name]
    net = zoo_nets.build(spec, 2)
    hand = handwritten.load_from(handwritten.MODULES[net_name](), net)
    spoil(hand)
    with pytest.raises(AssertionError, match=message):
        handwritten.check_against(net, hand, zoo_nets.sample_input(spec, 2))
