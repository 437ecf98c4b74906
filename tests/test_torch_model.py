"""DIGITS' Torch model contract (caffelike.digits.torch_model): model files, their errors, hooks, resume, the
command line, torch-lenet's accuracy, and the one-engine proof against the prototxt LeNet."""
import logging
import os
import time

import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

from caffelike import zoo
from caffelike.cli import main
from caffelike.digits.dataset import create_dataset
from caffelike.digits.torch_model import ModelFileError, load_model_file
from caffelike.digits.torch_training import make_solver
from caffelike.errors import CaffeError
from caffelike.format.prototxt import read_net
from caffelike.train.solver import Solver

LENET = zoo.path("torch-lenet", "lenet.py")
LINEAR = zoo.path("torch-linear", "linear.py")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The bundled 5,000 digits as a DIGITS dataset folder: 3,750 train, 1,250 val, 28x28 grayscale, 10 classes."""
    return create_dataset(str(tmp_path_factory.mktemp("digits") / "ds"), "bundled")["path"]


def model_file(tmp_path, body: str, name: str = "model.py") -> str:
    path = tmp_path / name
    path.write_text("import torch\nfrom torch import nn\n\n" + body)
    return str(path)


def solver_file(tmp_path, text: str, name: str = "solver.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


QUICK = 'base_lr: 0.0001 momentum: 0.9 lr_policy: "fixed" max_iter: 4 display: 0 test_iter: 1 test_interval: 1000 ' \
        'test_initialization: false random_seed: 3 type: "SGD"\n'
LINEAR_NET = "def network(params):\n    return {'model': nn.Sequential(nn.Flatten(), nn.Linear(784, params.nclasses), " \
             "nn.LogSoftmax(1)), 'trainBatchSize': 16, 'validationBatchSize': 50}\n"


# ---------------------------------------------------------------------------------------------------- contract
BAD = {
    "syntax error": ("def network(params)\n    return {}\n", "syntax error"),
    "no network": ("def net(params):\n    return {}\n", "defines no function network(params)"),
    "not a dict": ("def network(params):\n    return nn.Linear(2, 2)\n", "returned a Linear; it must return a dict"),
    "no model": ("def network(params):\n    return {'loss': nn.NLLLoss()}\n", "returned no model"),
    "model not a module": ("def network(params):\n    return {'model': 3}\n", "key 'model' must be a torch.nn.Module"),
    "unknown key": ("def network(params):\n    return {'model': nn.Linear(2, 2), 'batchSize': 3}\n",
                    "unknown key 'batchSize'"),
    "wrong type": ("def network(params):\n    return {'model': nn.Linear(2, 2), 'trainBatchSize': '64'}\n",
                   "key 'trainBatchSize' must be a positive int, got '64' (str)"),
    "twice": ("def network(params):\n    return {'model': nn.Linear(2, 2), 'labelHook': len, 'label_hook': len}\n",
              "gives 'label_hook' twice"),
    "raises": ("def network(params):\n    raise ValueError('no such layer')\n",
               "network(params) raised ValueError: no such layer (line 5)"),
    "top level raises": ("import no_such_module_here\n", "running the model file raised ModuleNotFoundError"),
    "exits": ("import sys\nsys.exit(2)\n", "running the model file raised SystemExit: 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_file_is_one_line_naming_the_file(tmp_path, case):
    body, expected = BAD[case]
    path = model_file(tmp_path, body)
    with pytest.raises(ModelFileError) as e:
        load_model_file(path, nclasses=10, input_shape=(1, 28, 28))
    message = str(e.value)
    assert isinstance(e.value, CaffeError)
    assert message.startswith(path) and expected in message and "\n" not in message, message


def test_wrong_input_shape_names_the_file(tmp_path, digits):
    path = model_file(tmp_path, "def network(params):\n    return {'model': nn.Sequential(nn.Flatten(), "
                                "nn.Linear(1000, 10), nn.LogSoftmax(1))}\n")
    with pytest.raises(ModelFileError, match=r"model\.py: the model cannot run on the dataset's input of shape "
                                             r"\(2, 1, 28, 28\).*mat1 and mat2") as e:
        make_solver(path, digits, epochs=1)
    assert "\n" not in str(e.value)


def test_default_loss_needs_one_column_per_class(tmp_path, digits):
    path = model_file(tmp_path, "def network(params):\n    return {'model': nn.Sequential(nn.Flatten(), "
                                "nn.Linear(784, 3))}\n")
    with pytest.raises(ModelFileError, match=r"output has shape \(2, 3\).*needs \(N, 10\)"):
        make_solver(path, digits, epochs=1)


def test_params_and_camel_case_keys(tmp_path):
    path = model_file(tmp_path, "seen = {}\ndef network(params):\n    seen.update(params)\n"
                                "    assert params.inputShape == params['input_shape'] == (1, 28, 28)\n"
                                "    return {'model': nn.Linear(2, 2), 'trainBatchSize': 8, 'validationBatchSize': 9,"
                                " 'labelHook': None, 'croplen': 24, 'disableAutoDataParallelism': True}\n")
    spec = load_model_file(path, nclasses=10, input_shape=(1, 28, 28), ngpus=2)
    assert (spec.train_batch_size, spec.validation_batch_size, spec.crop_size) == (8, 9, 24)
    assert spec.disable_auto_data_parallelism is True and spec.label_hook is None
    assert isinstance(spec.loss, torch.nn.NLLLoss) and spec.default_loss


def test_drawing_passes_no_input_shape():
    spec = load_model_file(LENET, nclasses=10, input_shape=None)
    assert isinstance(spec.model, torch.nn.Sequential)


def test_solver_file_may_not_name_a_net(tmp_path, digits):
    solver = solver_file(tmp_path, 'net: "lenet.prototxt"\n' + QUICK)
    with pytest.raises(CaffeError, match="net cannot be used with --network"):
        make_solver(LINEAR, digits, solver_file=solver)


# ------------------------------------------------------------------------------------------------------ hooks
def test_label_hook_gives_the_target(tmp_path, digits):
    """An autoencoder: label_hook returns the input, the loss is MSE against it."""
    path = model_file(tmp_path, "def network(params):\n    c, h, w = params.input_shape\n"
                                "    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), "
                                "nn.Linear(16, c * h * w), nn.Unflatten(1, (c, h, w)))\n"
                                "    return {'model': model, 'loss': nn.MSELoss(), 'labelHook': lambda x, y: x / 255}\n")
    solver = make_solver(path, digits, solver_file=solver_file(tmp_path, QUICK), mean="none")
    assert "accuracy" not in solver.test_nets[0].outputs
    loss = solver.forward_backward()
    data, output = (solver.net.blobs[n].tensor for n in ("data", "output"))
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(output.detach(), data / 255)), rel=1e-6)
    solver.solve()
    assert solver.iter == 4


def test_fine_tune_hook(tmp_path, digits):
    """Weights of a 5-class model: refused without the hook (naming what mismatches), loaded where they fit with
    it; the hook freezes the features, which then stay as loaded while the classifier trains."""
    pretrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(),
                                     torch.nn.Linear(32, 5), torch.nn.LogSoftmax(1))
    weights = str(tmp_path / "pretrained.pt")
    torch.save(pretrained.state_dict(), weights)
    body = "def network(params):\n    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), " \
           "nn.Linear(32, params.nclasses), nn.LogSoftmax(1))\n    return {'model': model%s}\n"
    plain = model_file(tmp_path, body % "", "plain.py")
    with pytest.raises(CaffeError, match=r"mismatching shapes: 3\.weight \(5, 32\) vs the model's \(10, 32\), "
                                         r"3\.bias \(5\) vs the model's \(10\)"):
        make_solver(plain, digits, solver_file=solver_file(tmp_path, QUICK), weights=weights)
    hook = "def freeze(model):\n    model[1].requires_grad_(False)\n    return model\n\n"
    tuned = model_file(tmp_path, hook + body % ", 'fineTuneHook': freeze", "tuned.py")
    solver = make_solver(tuned, digits, solver_file=solver_file(tmp_path, QUICK), weights=weights)
    model = solver.model
    assert torch.equal(model[1].weight, pretrained[1].weight)
    last = model[3].weight.detach().clone()
    solver.solve()
    assert torch.equal(model[1].weight, pretrained[1].weight) and torch.equal(model[1].bias, pretrained[1].bias)
    assert not torch.equal(model[3].weight, last)


# ------------------------------------------------------------------------------------- torchnet's engine pattern
def test_engine_hooks_and_meters_fire_for_model_files(tmp_path, digits):
    """Torchnet's pattern on a model file: every hook fires in order, on_end_epoch once per pass over the 3,750
    training digits, and a ClassErrorMeter fed in on_forward and reset each epoch measures training accuracy."""
    from caffelike.train.meters import AverageValueMeter, ClassErrorMeter

    text = QUICK.replace("max_iter: 4", "max_iter: 600").replace("base_lr: 0.0001", "base_lr: 0.01") \
        .replace("test_interval: 1000", "test_interval: 300") + \
        'snapshot: 300 snapshot_prefix: "%s"\n' % (tmp_path / "h")
    solver = make_solver(LINEAR, digits, solver_file=solver_file(tmp_path, text), batch_size=16)
    events, epochs = [], []
    accuracy, loss = ClassErrorMeter(topk=(1,), accuracy=True), AverageValueMeter()

    def on_forward(s):
        accuracy.add(s.net.blobs["output"].data, s.net.blobs["label"].data)
        loss.add(float(s.net.blobs["loss"].data))

    def on_end_epoch(s):
        epochs.append((s.iter, s.epoch, accuracy.value(1), loss.value()[0]))
        accuracy.reset()
        loss.reset()

    for event in ("on_start", "on_sample", "on_backward", "on_update", "on_test", "on_snapshot", "on_end"):
        solver.add_hook(event, lambda s, *args, e=event: events.append(e))
    solver.add_hook("on_forward", on_forward)
    solver.add_hook("on_end_epoch", on_end_epoch)
    solver.solve()
    # 16 x 600 = 9,600 samples: epochs end after iterations 235 (3,760 >= 3,750) and 469
    assert [it for it, *_ in epochs] == [235, 469]
    assert epochs[0][1] == pytest.approx(235 * 16 / 3750)
    assert epochs[1][2] > epochs[0][2] > 50  # percent, as torchnet's meter gives it
    assert events[:4] == ["on_start", "on_sample", "on_backward", "on_update"]
    assert events.count("on_update") == 600 and events.count("on_snapshot") == 2 and events[-1] == "on_end"
    assert "on_test" in events


def test_epoch_events_for_a_caffe_net(tmp_path):
    """The same event for a prototxt's Data layer: 20 records, batch 8, iter_size 2: 16 records per iteration."""
    from caffelike.data.datum import array_to_datum
    from caffelike.data.dbwriter import LmdbWriter

    with LmdbWriter(str(tmp_path / "db")) as db:
        for i in range(20):
            db.put(b"%08d" % i, array_to_datum(np.full((1, 2, 2), i, np.uint8), i % 2).SerializeToString())
    net = f"""layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path / 'db'}"
                 batch_size: 8 backend: LMDB }} }}
               layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 2 }} }}
               layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}"""
    param = text_format.Parse('base_lr: 0.01 lr_policy: "fixed" max_iter: 10 iter_size: 2 display: 0 '
                              'snapshot_after_train: false', caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(text_format.Parse(net, caffe_pb2.NetParameter()))
    solver = Solver(param)
    ends = []
    solver.add_hook("on_end_epoch", lambda s: ends.append((s.iter, s.epoch)))
    solver.solve()
    assert [it for it, _ in ends] == [2, 3, 4, 5, 7, 8, 9, 10]  # floor(16 i / 20) grows
    assert ends[0][1] == pytest.approx(1.6)


# ----------------------------------------------------------------------------------------------------- resume
def test_snapshot_and_exact_resume(tmp_path, digits):
    text = QUICK.replace("max_iter: 4", "max_iter: 6") + 'snapshot: 3 snapshot_prefix: "%s"\n'
    whole = make_solver(LINEAR, digits, solver_file=solver_file(tmp_path, text % (tmp_path / "a"), "a.prototxt"))
    whole.solve()
    state = torch.load(str(tmp_path / "a_iter_6.pt"), weights_only=True)
    assert set(state) == {"1.weight", "1.bias"}
    assert torch.equal(state["1.weight"], whole.model[1].weight.detach())

    resumed = make_solver(LINEAR, digits, solver_file=solver_file(tmp_path, text % (tmp_path / "b"), "b.prototxt"),
                          random_seed=99)  # other initial weights: the snapshot must bring them back
    resumed.restore(str(tmp_path / "a_iter_3.solverstate"))
    assert resumed.iter == 3
    resumed.solve()
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    losses = [[v for _, v in s.history["train"]["loss"]] for s in (whole, resumed)]
    assert losses[0][3:] == pytest.approx(losses[1], rel=1e-6)


# ---------------------------------------------------------------------------------------------- command line
def test_cli_trains_a_model_file(tmp_path, digits, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = model_file(tmp_path, LINEAR_NET)
    rc = main(["train", "--network", path, "--dataset", digits, "--solver", solver_file(tmp_path, QUICK),
               "--snapshot-prefix", str(tmp_path / "lin"), "--base-lr", "0.02"])
    assert rc == 0
    assert (tmp_path / "lin_iter_4.pt").is_file() and (tmp_path / "lin_iter_4.solverstate").is_file()
    assert (tmp_path / "lin_curves.png").is_file()
    rc = main(["train", "--network", path, "--dataset", digits, "--solver", solver_file(tmp_path, QUICK.replace(
        "max_iter: 4", "max_iter: 6")), "--snapshot-prefix", str(tmp_path / "lin"),
        "--snapshot", str(tmp_path / "lin_iter_4.solverstate")])
    assert rc == 0 and (tmp_path / "lin_iter_6.pt").is_file()


def test_cli_reports_a_bad_model_file(tmp_path, digits, capsys):
    path = model_file(tmp_path, "def network(params)\n")
    assert main(["train", "--network", path, "--dataset", digits]) == 1
    assert f"{path}:4: syntax error" in capsys.readouterr().err


def test_cli_digits_form_flags(tmp_path, digits, monkeypatch):
    """DIGITS' form: epochs and batch size make max_iter, step at 33%, a snapshot and a test every epoch."""
    monkeypatch.chdir(tmp_path)
    solver = make_solver(LINEAR, digits, epochs=2, batch_size=250, lr_policy="step", solver_type="Adam",
                         base_lr=0.001)
    p = solver.param
    assert (p.max_iter, p.stepsize, p.snapshot, p.test_interval, p.test_iter) == (30, 10, 15, 15, [13])
    assert p.type == "Adam" and p.snapshot_prefix == "snapshot"


@pytest.mark.parametrize("policy, field, expected", [
    ("exp", "gamma", 0.95 ** (100 / 30)), ("inv", "gamma", 0.1 / 0.3), ("sigmoid", "gamma", -0.1 / 0.3),
    ("sigmoid", "stepsize", 15), ("multistep", "stepvalue", [15, 26])])
def test_digits_lr_policies_scale_to_the_training(tmp_path, digits, monkeypatch, policy, field, expected):
    """DIGITS' policy fields are per percent of the training (caffe_train.py), as for the Caffe model files."""
    monkeypatch.chdir(tmp_path)
    p = make_solver(LINEAR, digits, epochs=2, batch_size=250, lr_policy=policy).param
    assert p.max_iter == 30 and p.lr_policy == policy
    value = getattr(p, field)
    assert (list(value) == expected) if field == "stepvalue" else value == pytest.approx(expected)


# ------------------------------------------------------------------------------------------- several processes
@pytest.fixture
def two_solvers():
    from caffelike.core import runtime

    runtime.set_solver_count(2)
    yield
    runtime.set_solver_count(1)


def test_epochs_count_every_process_batch(tmp_path, digits, monkeypatch, two_solvers):
    """With 2 processes an iteration reads 2 x 250 digits: 2 epochs of 3,750 are 16 iterations, not 30."""
    monkeypatch.chdir(tmp_path)
    p = make_solver(LINEAR, digits, epochs=2, batch_size=250).param
    assert (p.max_iter, p.snapshot, p.test_interval) == (16, 8, 8)


def test_disabling_data_parallelism_refuses_several_processes(tmp_path, digits, two_solvers):
    path = model_file(tmp_path, "def network(params):\n    return {'model': nn.Sequential(nn.Flatten(), "
                                "nn.Linear(784, 10), nn.LogSoftmax(1)), 'disableAutoDataParallelism': True}\n")
    with pytest.raises(ModelFileError, match="disable_auto_data_parallelism.*2 processes"):
        make_solver(path, digits, epochs=1)


def test_a_model_file_trains_on_two_cpu_processes(tmp_path, digits):
    """`--workers 2`: the model file's parameters are averaged like a prototxt's; rank 0 snapshots."""
    import subprocess
    import sys

    path = model_file(tmp_path, LINEAR_NET)
    run = subprocess.run([sys.executable, "-m", "caffelike", "train", "--network", path, "--dataset", digits,
                          "--solver", solver_file(tmp_path, QUICK), "--workers", "2", "--snapshot-prefix",
                          str(tmp_path / "two")], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    state = torch.load(str(tmp_path / "two_iter_4.pt"), weights_only=True)
    assert set(state) == {"1.weight", "1.bias"}


# --------------------------------------------------------------------------------------------------- figures
def test_torch_lenet_smoke(tmp_path, digits):
    """One epoch of torch-lenet: it learns (well above chance) and logs Caffe's test lines."""
    solver = make_solver(LENET, digits, epochs=1, lr_policy="fixed", random_seed=1,
                         snapshot_prefix=str(tmp_path / "lenet"))
    solver.solve()
    accuracy = solver.history["test"]["accuracy"][-1][1]
    assert accuracy > 0.6, accuracy


def test_torch_lenet_reaches_95_percent_in_5_epochs(tmp_path, digits):
    start = time.perf_counter()
    solver = make_solver(LENET, digits, epochs=5, solver_type="Adam", base_lr=0.001, lr_policy="fixed",
                         random_seed=1, snapshot_prefix=str(tmp_path / "lenet"))
    solver.solve()
    accuracy = solver.history["test"]["accuracy"][-1][1]
    logging.getLogger("caffelike").warning("torch-lenet: %.4f validation accuracy after 5 epochs in %.1f s",
                                           accuracy, time.perf_counter() - start)
    assert accuracy >= 0.95, accuracy


# ------------------------------------------------------------------------------------------------ one engine
SOLVERS = {
    "SGD": 'type: "SGD" base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 '
           'power: 0.75',
    "Adam": 'type: "Adam" base_lr: 0.001 momentum: 0.9 momentum2: 0.999 weight_decay: 0.0005 lr_policy: "fixed"',
}


@pytest.mark.parametrize("solver_type", sorted(SOLVERS))
def test_one_engine_prototxt_and_module_lenet_train_alike(tmp_path, digits, solver_type):
    """zoo/lenet's prototxt and torch-lenet, the same initial weights, batches and solver: the same loss at each
    of 50 iterations.  The prototxt's bias lr_mult 2 is set to 1 (a module's parameters all have 1); its
    transform scale 1/256 is torch-lenet's first module, so the data layers subtract no mean.

    Both run in float64 (the default dtype, the data layers' tops cast by a hook): in float32 the two agree to
    the last digit at first, but SoftmaxWithLoss and LogSoftmax+NLL round differently (1e-7) and training
    amplifies that about 1.3x per iteration, past 1e-4 after some 35 iterations, as two Caffe builds with
    different convolution algorithms would.  In float64 the same amplification stays far below 1e-4."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        a, b = _train_both(tmp_path, digits, solver_type)
    finally:
        torch.set_default_dtype(previous)
    assert len(a) == len(b) == 50
    np.testing.assert_allclose(b, a, rtol=1e-4)
    assert a[-1] < a[0] * 0.5  # it did learn: the equality is not of two flat lines


def _as_double(module, inputs, outputs):
    return tuple(t.double() for t in outputs)


def _train_both(tmp_path, digits, solver_type):
    text = SOLVERS[solver_type] + " max_iter: 50 display: 0 test_iter: 1 test_interval: 1000 " \
                                  "test_initialization: false random_seed: 5 snapshot_after_train: false\n"
    net = read_net(zoo.path("lenet", "lenet_train_test.prototxt"))
    for lp in net.layer:
        if lp.type == "Data":
            lp.data_param.source = os.path.join(digits, "train_db" if lp.include[0].phase == caffe_pb2.TRAIN
                                                else "val_db")
        for spec in lp.param:
            spec.lr_mult = 1
    param = text_format.Parse(text, caffe_pb2.SolverParameter())
    param.net_param.CopyFrom(net)
    caffe = Solver(param)
    torch_solver = make_solver(LENET, digits, solver_file=solver_file(tmp_path, text), mean="none",
                               batch_size=64, val_batch_size=100)
    with torch.no_grad():
        mine = list(torch_solver.model.parameters())
        assert len(mine) == len(caffe.net.learnable) == 8
        for p, entry in zip(mine, caffe.net.learnable):
            p.copy_(entry.param)
    for solver in (caffe, torch_solver):
        for layer in solver.net.layer_list:
            if layer.type == "Data":
                layer.register_forward_hook(_as_double)
    caffe.solve()
    torch_solver.solve()
    return [np.array([v for _, v in s.history["train"]["loss"]]) for s in (caffe, torch_solver)]
