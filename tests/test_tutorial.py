"""`caffelike tutorial occlusion`: the DIGITS python-layer tutorial end to end, on a small share of the bundled
digits so that it stays quick (the README's full run uses all 5,000)."""
import json
import pathlib
import sys

import pytest
from helpers import chromium_or_skip

from caffelike.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tutorial")
    assert main(["tutorial", "occlusion", "--out", str(out), "--epochs", "2", "--max-per-class", "120"]) == 0
    return out


def test_summary_names_the_outputs(run):
    summary = json.loads((run / "summary.json").read_text())
    for key in ("plain_val_accuracy", "occluded_val_accuracy", "report_html", "curves_png"):
        assert key in summary
    assert 0 <= summary["occluded_val_accuracy"] <= 1 and summary["plain_val_accuracy"] > 0.5
    assert (run / summary["report_html"]).exists() and (run / summary["curves_png"]).read_bytes()[:4] == b"\x89PNG"


def test_digits_model_folders(run):
    for job in ("plain_lenet", "occlusion_lenet"):
        for name in ("original.prototxt", "train_val.prototxt", "deploy.prototxt", "solver.prototxt", "curves.png"):
            assert (run / job / name).exists(), f"{job}/{name}"
    assert (run / "occlusion_lenet" / "digits_python_layers.py").exists()
    assert (run / "dataset" / "labels.txt").read_text().split() == [str(d) for d in range(10)]


def test_report_shows_the_zeroed_square_in_scaled(run):
    import numpy as np
    from PIL import Image

    html = (run / "report" / "report.html").read_text()
    assert "scaled" in html and "blank_square" in html and "http://" not in html
    scaled = np.asarray(Image.open(run / "report" / "blobs" / "scaled.png").convert("RGB"))
    # A 14x14 square of one colour (the value 0) fills a quarter of the upscaled picture.
    colours, counts = np.unique(scaled.reshape(-1, 3), axis=0, return_counts=True)
    assert counts.max() >= scaled.shape[0] * scaled.shape[1] // 4


def test_the_job_folders_module_runs_again_only_with_consent(run, monkeypatch):
    """The tutorial consents for the job folders it writes; a user loading its deploy net later consents too."""
    import caffelike as caffe

    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    # a clean search path: other tests may have added the zoo's folder, which holds a module of the same name
    monkeypatch.setattr(sys.modules["caffelike.layers.python"], "EXTRA_PATHS", [])
    monkeypatch.delitem(sys.modules, "digits_python_layers", raising=False)
    deploy = str(run / "occlusion_lenet" / "deploy.prototxt")
    with pytest.raises(caffe.LayerError, match="digits_python_layers.py from the model's folder"):
        caffe.Net(deploy, caffe.TEST)
    net = caffe.Net(deploy, caffe.TEST, trust_python=True)
    assert "Python" in [layer.type for layer in net.layers]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run, tmp_path):
    import importlib.util
    import sys

    chromium_or_skip()
    script = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "screenshot_report.py"
    spec = importlib.util.spec_from_file_location("screenshot_report", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["screenshot_report"] = module
    spec.loader.exec_module(module)
    shot = tmp_path / "report.png"
    module.screenshot(str(run / "report" / "report.html"), str(shot))
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
