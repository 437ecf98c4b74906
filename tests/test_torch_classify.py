"""`caffelike classify --network`: a PyTorch model file (docs/torch_models.md) with a .pt snapshot, its dataset's
preprocessing, the top 5 or a regression's output vector, and the report built from forward hooks
(caffelike.digits.torch_classify, caffelike.digits.module_report)."""
import contextlib
import io
import logging
import pathlib
import re

import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from PIL import Image

from caffelike import zoo
from caffelike.cli import main
from caffelike.data.bundled import mnist_5k
from caffelike.digits import module_report, torch_classify
from caffelike.digits.dataset import create_dataset
from caffelike.digits.generic_dataset import create_generic_dataset
from caffelike.digits.torch_model import load_model_file
from caffelike.digits.torch_training import make_solver

LENET = zoo.path("torch-lenet", "lenet.py")
REGRESSION = zoo.path("torch-regression", "regression.py")
SOLVER = 'base_lr: 0.001 momentum: 0.9 lr_policy: "fixed" max_iter: 30 display: 0 test_iter: 1 ' \
         'test_interval: 1000 test_initialization: false random_seed: 3 type: "Adam"\n'
TOP = re.compile(r"^ +(\d)\. (\S+) +(\d+\.\d\d)%$")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The bundled digits as a DIGITS dataset folder (28x28 gray, stored inverted as DIGITS' MNIST is)."""
    return create_dataset(str(tmp_path_factory.mktemp("digits") / "ds"), "bundled")["path"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, digits):
    """zoo/torch-lenet after 30 Adam iterations: its .pt snapshot."""
    folder = tmp_path_factory.mktemp("lenet")
    (folder / "solver.prototxt").write_text(SOLVER)
    solver = make_solver(LENET, digits, solver_file=str(folder / "solver.prototxt"), batch_size=32,
                         snapshot_prefix=str(folder / "lenet"))
    solver.solve()
    return str(folder / "lenet_iter_30.pt")


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """A held-out bundled '7' as a PNG, inverted like the dataset's images; and its pixels."""
    images, labels = mnist_5k()
    assert labels[3500] == 7
    pixels = 255 - images[3500]
    path = tmp_path_factory.mktemp("image") / "seven.png"
    Image.fromarray(pixels, "L").save(path)
    return str(path), pixels


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def read_mean(folder) -> np.ndarray:
    bp = caffe_pb2.BlobProto()
    bp.ParseFromString((pathlib.Path(folder) / "mean.binaryproto").read_bytes())
    return np.asarray(bp.data, dtype=np.float32).reshape(bp.channels, bp.height, bp.width)


def direct(model_file, weights, x: np.ndarray, nclasses: int) -> torch.Tensor:
    """The model run by hand: built from its file, the snapshot loaded, eval mode, one sample."""
    spec = load_model_file(model_file, nclasses=nclasses, input_shape=x.shape)
    spec.model.load_state_dict(torch.load(weights, weights_only=True))
    spec.model.eval()
    with torch.no_grad():
        return spec.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None])


@pytest.fixture(scope="module")
def classified(tmp_path_factory, digits, snapshot, seven):
    out = tmp_path_factory.mktemp("vis") / "out"
    rc, printed, _ = run_cli(["classify", "--network", LENET, "--weights", snapshot, "--dataset", digits,
                              "--visualize", str(out), seven[0]])
    assert rc == 0, printed
    return printed, out


# ----------------------------------------------------------------------------------------------- prediction
def test_top5_is_the_module_run_by_hand(classified, digits, snapshot, seven):
    printed, _ = classified
    lines = printed.splitlines()
    assert lines[0] == f"Predictions for {seven[0]} (output of lenet.py):"
    top = [TOP.match(line) for line in lines[1:6]]
    assert all(top), lines
    assert [int(m.group(1)) for m in top] == [1, 2, 3, 4, 5]
    percents = [float(m.group(3)) for m in top]
    assert percents == sorted(percents, reverse=True) and sum(percents) <= 100.0 + 0.05
    # Independently: the image minus the dataset's mean image, through the module by hand.
    x = seven[1].astype(np.float32)[None] - read_mean(digits)
    log_probs = direct(LENET, snapshot, x, 10)[0]
    labels = (pathlib.Path(digits) / "labels.txt").read_text().split()
    assert top[0].group(2) == labels[int(log_probs.argmax())]
    assert float(top[0].group(3)) == pytest.approx(100 * float(log_probs.max().exp()), abs=0.006)


def test_probabilities_read_the_output_sensibly(caplog):
    p = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(torch_classify.probabilities(np.log(p)), p)
    np.testing.assert_array_equal(torch_classify.probabilities(p), p)
    with caplog.at_level(logging.WARNING, logger="caffelike"):
        soft = torch_classify.probabilities(np.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(soft, np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum())
    assert "neither log-probabilities nor probabilities; showing its softmax" in caplog.text


@pytest.mark.parametrize("mean", ["image", "pixel", "none"])
def test_mean_and_centre_crop_as_in_training(tmp_path, digits, seven, mean):
    """A model file naming crop_size 24 sees the centre 24x24 of (image - mean), as the TEST Data layer gives."""
    model = tmp_path / "crop.py"
    model.write_text("from torch import nn\n\ndef network(params):\n    return {'model': nn.Sequential("
                     "nn.Flatten(), nn.Linear(24 * 24, params.nclasses), nn.LogSoftmax(1)), 'crop_size': 24}\n")
    spec = load_model_file(str(model), nclasses=10, input_shape=(1, 24, 24))
    torch.save(spec.model.state_dict(), tmp_path / "crop.pt")
    prepared = torch_classify.prepare(str(model), str(tmp_path / "crop.pt"), digits, seven[0], mean=mean)
    full = read_mean(digits)
    subtract = {"image": full, "pixel": full.mean(axis=(1, 2), keepdims=True), "none": 0}[mean]
    expected = (seven[1].astype(np.float32)[None] - subtract)[:, 2:26, 2:26]
    np.testing.assert_allclose(prepared.x[0].numpy(), expected, rtol=1e-6, atol=1e-4)
    assert prepared.crop == 24 and prepared.pixels.shape == (1, 24, 24)
    np.testing.assert_array_equal(prepared.pixels[0], seven[1][2:26, 2:26])
    output = torch_classify.forward(prepared)
    torch.testing.assert_close(output, direct(str(model), str(tmp_path / "crop.pt"), expected, 10))


def test_a_fine_tuned_snapshot_fits_the_model_its_hook_adapts(tmp_path, digits, seven):
    model = tmp_path / "tuned.py"
    model.write_text("from torch import nn\n\ndef adapt(model):\n    model[1] = nn.Linear(784, 10)\n"
                     "    return model\n\ndef network(params):\n    return {'model': nn.Sequential(nn.Flatten(), "
                     "nn.Linear(784, 3), nn.LogSoftmax(1)), 'fine_tune_hook': adapt}\n")
    spec = load_model_file(str(model), nclasses=10, input_shape=(1, 28, 28))
    tuned = spec.fine_tune_hook(spec.model)
    torch.save(tuned.state_dict(), tmp_path / "tuned.pt")
    prepared = torch_classify.prepare(str(model), str(tmp_path / "tuned.pt"), digits, seven[0])
    torch.testing.assert_close(prepared.model.state_dict(), tuned.state_dict())


@pytest.mark.gpu
def test_gpu_gives_the_cpu_prediction(digits, snapshot, seven):
    argv = ["classify", "--network", LENET, "--weights", snapshot, "--dataset", digits, seven[0]]
    rc_cpu, cpu, _ = run_cli(argv)
    rc_gpu, gpu, _ = run_cli([*argv[:-1], "--gpu", "0", seven[0]])
    assert rc_cpu == rc_gpu == 0
    assert TOP.match(cpu.splitlines()[1]).group(2) == TOP.match(gpu.splitlines()[1]).group(2)


# --------------------------------------------------------------------------------------------------- report
def test_report_has_a_row_per_layer_output_and_parameter(classified, snapshot):
    _, out = classified
    text = (out / "report.html").read_text(encoding="utf-8")
    layers = load_model_file(LENET, nclasses=10, input_shape=(1, 28, 28)).model
    outputs = ["input"] + [str(i) for i in range(len(layers))]  # the Sequential's output is its last layer's
    assert re.findall(r'id="blob-([^"]+)"', text) == outputs
    for kind in ("Conv2d", "Linear"):
        assert text.count(f"output of {kind} ·") == 2
    state = torch.load(snapshot, weights_only=True)
    assert re.findall(r'id="param-([^"]+)"', text) == list(state)
    total = sum(v.numel() for v in state.values())
    assert total == 431_080 and "431,080 learned parameters" in text  # as Caffe's LeNet
    assert text.count('alt="histogram of the ') == len(outputs) + len(state)
    files = [out / "input.png"] + [out / "blobs" / f"{name}.png" for name in outputs] + \
            [out / "weights" / f"{key}.png" for key in state]
    for f in files:
        with Image.open(f) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) > 0
    with Image.open(out / "blobs" / "1.png") as im:
        assert im.mode == "RGB"  # activations as heat maps


def all_hooks(model):
    return [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]


class Twice(torch.nn.Module):
    """One layer called twice, and a submodule returning a tuple."""

    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Linear(4, 4)
        self.split = torch.nn.LSTM(4, 4, batch_first=True)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        y, _ = self.split(self.shared(self.shared(x))[:, None])
        return y[:, 0] * self.scale


def test_hooks_number_repeated_calls_skip_tuples_and_are_removed():
    model = Twice()
    rows, total, output = module_report.module_rows(model, torch.randn(2, 4))
    assert not all_hooks(model)
    titles = [(r.kind, r.title) for r in rows]
    assert titles == [("Activation", "input"), ("Weights", "scale"), ("Weights", "shared.weight"),
                      ("Parameters", "shared.bias"), ("Activation", "shared (call 1)"),
                      ("Activation", "shared (call 2)"), ("Weights", "split.weight_ih_l0"),
                      ("Parameters", "split.weight_hh_l0"), ("Parameters", "split.bias_ih_l0"),
                      ("Parameters", "split.bias_hh_l0"), ("Activation", "model")]
    assert total == sum(p.numel() for p in model.parameters()) and output.shape == (2, 4)
    assert {r.path for r in rows if r.kind == "Activation"} >= {"blobs/shared_call1.png", "blobs/shared_call2.png"}


def test_hooks_are_removed_when_the_model_fails():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(5, 2))
    with pytest.raises(RuntimeError):
        module_report.module_rows(model, torch.randn(1, 4))
    assert not all_hooks(model)


# ----------------------------------------------------------------------------------------------- regression
@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A generic dataset (1x8x8 uint8 inputs, 3 values each) and zoo/torch-regression's initial weights."""
    folder = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    create_generic_dataset(str(folder / "ds"), inputs, rng.normal(size=(40, 3)))
    spec = load_model_file(REGRESSION, nclasses=3, input_shape=(1, 8, 8))
    torch.save(spec.model.state_dict(), folder / "reg.pt")
    np.save(folder / "x.npy", inputs[0, 0])
    Image.fromarray(inputs[0, 0], "L").save(folder / "x.png")
    return folder, inputs[0]


@pytest.mark.parametrize("image", ["x.npy", "x.png"])
def test_regression_prints_its_output_vector(tmp_path, regression, image):
    folder, x = regression
    rc, printed, _ = run_cli(["classify", "--network", REGRESSION, "--weights", str(folder / "reg.pt"),
                              "--dataset", str(folder / "ds"), "--visualize", str(tmp_path / "vis"),
                              str(folder / image)])
    assert rc == 0
    lines = printed.splitlines()
    assert lines[0] == f"Output for {folder / image} (regression.py, 3 values):"
    values = [float(re.match(r"^  \[(\d)\] (\S+)$", line).group(2)) for line in lines[1:4]]
    expected = direct(REGRESSION, str(folder / "reg.pt"), x.astype(np.float32) - read_mean(folder / "ds"), 3)
    np.testing.assert_allclose(values, expected[0].numpy(), rtol=1e-5)
    assert not any(TOP.match(line) for line in lines)
    text = (tmp_path / "vis" / "report.html").read_text(encoding="utf-8")
    assert "<th>Output value</th>" in text and "Probability" not in text


# ------------------------------------------------------------------------------------------------- refusals
def test_weights_of_another_model_are_a_one_line_error(regression, snapshot):
    folder, _ = regression
    rc, _, err = run_cli(["classify", "--network", REGRESSION, "--weights", snapshot, "--dataset",
                          str(folder / "ds"), str(folder / "x.png")])
    assert rc == 1 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("caffelike classify: error:")]
    assert f"{snapshot} does not fit the model of {REGRESSION} (mismatching shapes: 1.weight" in line
    assert line.endswith("give a snapshot (.pt) of this model file trained on this dataset")


def test_model_and_network_together_are_refused(capsys, snapshot, seven):
    with pytest.raises(SystemExit) as e:
        main(["classify", "--model", "deploy.prototxt", "--network", LENET, "--weights", snapshot, seven[0]])
    assert e.value.code == 2
    assert "argument --network: not allowed with argument --model" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    ([], "--network needs --dataset"),
    (["--dataset", "ds", "--scale", "0.5"], "--scale go with --model deploy nets"),
])
def test_network_flags_are_checked(snapshot, seven, extra, message):
    rc, _, err = run_cli(["classify", "--network", LENET, "--weights", snapshot, *extra, seven[0]])
    assert rc == 1 and message in err


def test_dataset_flags_are_refused_with_a_deploy_net(seven):
    rc, _, err = run_cli(["classify", "--model", zoo.path("lenet", "lenet.prototxt"), "--weights",
                          zoo.path("lenet", "lenet_mnist5k.caffemodel"), "--mean-mode", "pixel", seven[0]])
    assert rc == 1 and "--mean-mode go with --network model files" in err
