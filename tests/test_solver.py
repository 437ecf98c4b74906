"""Caffe's solvers: lr policies, update arithmetic against a NumPy re-derivation of Caffe's formulas, clipping,
iter_size, weight decay, hooks, snapshots and exact resume, and the errors."""
import math

import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from caffelike.train.powx import powx
from google.protobuf import text_format

import caffelike as caffe
from caffelike.errors import CaffeError
from caffelike.train.lr_policy import learning_rate
from caffelike.train.solver import Solver, TrainingError, get_solver

NET = """
name: "regress"
layer { name: "data" type: "Input" top: "x" top: "t" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" param { lr_mult: 1 decay_mult: 1 }
        param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def solver_param(**fields) -> caffe_pb2.SolverParameter:
    p = caffe_pb2.SolverParameter()
    text_format.Merge(NET, p.train_net_param)
    defaults = dict(base_lr=0.1, lr_policy="fixed", max_iter=6, display=0, snapshot_after_train=False,
                    random_seed=7)
    defaults.update(fields)
    for k, v in defaults.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


def batch(it):
    rng = np.random.default_rng(100 + it)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)


def feed(solver):
    x, t = batch(solver._pass)
    solver._pass += 1
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["t"].data[...] = t


def make(**fields) -> Solver:
    s = Solver(solver_param(**fields))
    s._pass = 0
    s.add_hook("on_sample", feed)
    return s


# ------------------------------------------------------------------------------------------- reference arithmetic
def numpy_net_grads(params, x, t):
    """Gradients of EuclideanLoss(ip2(ip1(x)), t) for params [W1, b1, W2, b2] (float64)."""
    w1, b1, w2, b2 = params
    h = x @ w1.T + b1
    y = h @ w2.T + b2
    dy = (y - t) / x.shape[0]
    dw2, db2 = dy.T @ h, dy.sum(0)
    dh = dy @ w2
    return [dh.T @ x, dh.sum(0), dw2, db2]


def reference_run(s0: Solver, p: caffe_pb2.SolverParameter, iters: int):
    """Re-derive Caffe's update rules in float64 NumPy (semantics doc §3.3-3.4)."""
    params = [e.param.detach().double().numpy().copy() for e in s0.net.learnable]
    lr_mult = [e.lr_mult for e in s0.net.learnable]
    decay_mult = [e.decay_mult for e in s0.net.learnable]
    hist = [np.zeros_like(w) for w in params] * (2 if p.type in ("Adam", "AdaDelta") else 1)
    hist = [np.zeros_like(h) for h in hist]
    n, step, k = len(params), 0, 0
    for it in range(iters):
        grads = [np.zeros_like(w) for w in params]
        for _ in range(p.iter_size):
            x, t = batch(k)
            k += 1
            grads = [g + d for g, d in zip(grads, numpy_net_grads(params, x, t))]
        rate, step = learning_rate(p, it, step)
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum((g ** 2).sum() for g in grads))
            if norm > p.clip_gradients:
                grads = [g * p.clip_gradients / norm for g in grads]
        for i in range(n):
            g = grads[i] / p.iter_size
            decay = p.weight_decay * decay_mult[i]
            g = g + decay * (params[i] if p.regularization_type == "L2" else np.sign(params[i]))
            lr = rate * lr_mult[i]
            if p.type == "SGD":
                hist[i] = p.momentum * hist[i] + lr * g
                upd = hist[i]
            elif p.type == "Nesterov":
                prev = hist[i].copy()
                hist[i] = p.momentum * hist[i] + lr * g
                upd = (1 + p.momentum) * hist[i] - p.momentum * prev
            elif p.type == "AdaGrad":
                hist[i] = hist[i] + g * g
                upd = lr * g / (np.sqrt(hist[i]) + p.delta)
            elif p.type == "RMSProp":
                hist[i] = p.rms_decay * hist[i] + (1 - p.rms_decay) * g * g
                upd = lr * g / (np.sqrt(hist[i]) + p.delta)
            elif p.type == "AdaDelta":
                hist[i] = p.momentum * hist[i] + (1 - p.momentum) * g * g
                d = g * np.sqrt((hist[i + n] + p.delta) / (hist[i] + p.delta))
                hist[i + n] = p.momentum * hist[i + n] + (1 - p.momentum) * d * d
                upd = lr * d
            else:  # Adam
                b1, b2, tt = p.momentum, p.momentum2, it + 1
                hist[i] = b1 * hist[i] + (1 - b1) * g
                hist[i + n] = b2 * hist[i + n] + (1 - b2) * g * g
                upd = lr * math.sqrt(1 - b2 ** tt) / (1 - b1 ** tt) * hist[i] / (np.sqrt(hist[i + n]) + p.delta)
            params[i] = params[i] - upd
    return params


@pytest.mark.parametrize("fields", [
    dict(type="SGD", momentum=0.9, weight_decay=0.01),
    dict(type="SGD", momentum=0.9, weight_decay=0.01, regularization_type="L1"),
    dict(type="SGD", momentum=0.5, lr_policy="step", gamma=0.5, stepsize=2),
    dict(type="SGD", momentum=0.9, iter_size=3, weight_decay=0.005),
    dict(type="SGD", momentum=0.9, clip_gradients=0.05),
    dict(type="Nesterov", momentum=0.9, weight_decay=0.01),
    dict(type="AdaGrad", base_lr=0.05, delta=1e-6),
    dict(type="RMSProp", base_lr=0.01, rms_decay=0.9, delta=1e-6),
    dict(type="AdaDelta", base_lr=1.0, momentum=0.95, delta=1e-6),
    dict(type="Adam", base_lr=0.01, momentum=0.9, momentum2=0.999, weight_decay=0.01),
], ids=["sgd-l2", "sgd-l1", "sgd-step", "sgd-itersize", "sgd-clip", "nesterov", "adagrad", "rmsprop", "adadelta",
        "adam"])
def test_updates_follow_caffes_formulas(fields):
    s = make(**fields)
    expected = reference_run(s, s.param, 6)
    s.step(6)
    for entry, ref in zip(s.net.learnable, expected):
        np.testing.assert_allclose(entry.param.detach().numpy(), ref, rtol=2e-4, atol=1e-6,
                                   err_msg=f"{entry.layer}[{entry.index}]")


def _one_tensor_step(kind, p, hist, g, rate, it):
    """The update of one parameter with plain per-tensor torch ops, in Caffe's order (the grouped `_foreach`
    rules must give exactly these bits)."""
    if kind == "SGD":
        hist[0].mul_(p.momentum).add_(g, alpha=rate)
        return hist[0]
    if kind == "Nesterov":
        previous = hist[0].clone()
        hist[0].mul_(p.momentum).add_(g, alpha=rate)
        return hist[0] * (1 + p.momentum) - previous * p.momentum
    if kind == "AdaGrad":
        hist[0].add_(g * g)
        return g / (hist[0].sqrt() + p.delta) * rate
    if kind == "RMSProp":
        hist[0].mul_(p.rms_decay).add_(g * g, alpha=1 - p.rms_decay)
        return g / (hist[0].sqrt() + p.delta) * rate
    if kind == "AdaDelta":  # Caffe's caffe_powx here (tests/test_powx.py checks it against the C library)
        hist[0].mul_(p.momentum).add_(powx(g, 2), alpha=1 - p.momentum)
        update = g * powx((hist[1] + p.delta) / (hist[0] + p.delta), 0.5)
        hist[1].mul_(p.momentum).add_(powx(update, 2), alpha=1 - p.momentum)
        return update * rate
    t = it + 1
    correction = math.sqrt(1 - p.momentum2 ** t) / (1 - p.momentum ** t)
    hist[0].mul_(p.momentum).add_(g, alpha=1 - p.momentum)
    hist[1].mul_(p.momentum2).add_(g * g, alpha=1 - p.momentum2)
    return hist[0] / (hist[1].sqrt() + p.delta) * (rate * correction)


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_grouped_updates_are_bitwise_the_per_tensor_arithmetic(kind):
    from caffelike.train.updates import make_rule
    p = caffe_pb2.SolverParameter(type=kind, momentum=0.9 if kind in ("SGD", "Nesterov", "AdaDelta", "Adam") else 0,
                                  rms_decay=0.95, delta=1e-6)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=gen) for shape in [(5, 3), (7,), (2, 2, 3)]]
    rule = make_rule(p, params)
    hists = [[torch.zeros_like(t) for _ in range(rule.histories_per_param)] for t in params]
    for it in range(4):
        grads = [torch.randn(t.shape, generator=gen) for t in params]
        grouped = rule.step([0, 1, 2], [g.clone() for g in grads], 0.03, it)
        for i, g in enumerate(grads):
            expected = _one_tensor_step(kind, p, hists[i], g, 0.03, it)
            assert torch.equal(grouped[i], expected), (kind, it, i)


@pytest.mark.parametrize("policy,fields,it,expected", [
    ("fixed", {}, 1000, 0.01),
    ("step", dict(gamma=0.1, stepsize=100), 250, 0.01 * 0.1 ** 2),
    ("exp", dict(gamma=0.99), 10, 0.01 * 0.99 ** 10),
    ("inv", dict(gamma=1e-4, power=0.75), 5000, 0.01 * (1 + 1e-4 * 5000) ** -0.75),
    ("poly", dict(power=2.0, max_iter=1000), 250, 0.01 * (1 - 0.25) ** 2),
    ("sigmoid", dict(gamma=-0.01, stepsize=500), 400, 0.01 / (1 + math.exp(0.01 * (400 - 500)))),
], ids=lambda v: v if isinstance(v, str) else None)
def test_lr_policies(policy, fields, it, expected):
    p = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy=policy, **fields)
    assert learning_rate(p, it)[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("fields, fragment", [
    (dict(lr_policy="inv", gamma=-1.0, power=0.5), 'lr_policy "inv" at iteration 5: the rate is not a number'),
    (dict(lr_policy="poly", max_iter=2, power=0.5), 'lr_policy "poly" at iteration 5: the rate is not a number'),
    (dict(lr_policy="sigmoid", gamma=-1e30, stepsize=1), 'lr_policy "sigmoid" at iteration 5'),
], ids=["inv-negative-base", "poly-past-max-iter", "sigmoid-overflow"])
def test_lr_policy_math_errors_name_the_policy_and_fields(fields, fragment):
    # Found by tests/test_fuzz.py: Python's ValueError/OverflowError ("math domain error") escaped.
    with pytest.raises(CaffeError, match=fragment) as err:
        learning_rate(caffe_pb2.SolverParameter(base_lr=0.1, **fields), 5)
    assert "gamma" in str(err.value) and "power" in str(err.value)


def test_adam_bias_correction_out_of_range_names_the_momenta():
    # Found by tests/test_fuzz.py: momentum2 > 1 made math.sqrt raise ValueError inside the update.
    from caffelike.train.updates import make_rule

    p = caffe_pb2.SolverParameter(type="Adam", momentum=0.9, momentum2=1e30)
    rule = make_rule(p, [torch.zeros(2)])
    with pytest.raises(CaffeError, match=r"Adam solver: .* momentum 0.9 and momentum2 1e\+30"):
        rule.step([0], [torch.ones(2)], 0.1, 0)


def test_multistep_advances_at_most_one_step_per_call():
    p = caffe_pb2.SolverParameter(base_lr=1.0, lr_policy="multistep", gamma=0.5, stepvalue=[2, 3])
    step, rates = 0, []
    for it in [0, 1, 2, 3, 4, 10]:
        rate, step = learning_rate(p, it, step)
        rates.append(rate)
    assert rates == [1.0, 1.0, 0.5, 0.25, 0.25, 0.25] and step == 2
    # Starting late, Caffe catches up one step per call.
    assert learning_rate(p, 10, 0) == (0.5, 1)


def test_resume_from_a_snapshot_gives_the_uninterrupted_weights(tmp_path):
    fields = dict(type="SGD", momentum=0.9, weight_decay=0.01, lr_policy="multistep", gamma=0.5,
                  stepvalue=[2, 4], snapshot_prefix=str(tmp_path / "snap"))
    full = make(**fields)
    full.step(6)
    first = make(**fields)
    first.step(3)
    model, state = first.snapshot()
    assert model.endswith("snap_iter_3.caffemodel") and state.endswith("snap_iter_3.solverstate")
    resumed = make(**fields)
    resumed._pass = 3
    resumed.restore(state)
    assert resumed.iter == 3 and resumed.current_step == first.current_step
    resumed.step(3)
    for a, b in zip(full.net.learnable, resumed.net.learnable):
        assert torch.equal(a.param, b.param)


def test_restore_errors_name_the_solverstate(tmp_path):
    # Found by tests/test_fuzz.py: a corrupt learned_net gave an error naming only the (garbled) weights path, and
    # a negative iter or current_step was taken as it came.
    s = make(type="SGD", snapshot_prefix=str(tmp_path / "s"))
    s.step(1)
    _, state = s.snapshot()
    msg = caffe_pb2.SolverState.FromString(open(state, "rb").read())
    broken = tmp_path / "broken.solverstate"
    broken.write_bytes(caffe_pb2.SolverState(iter=1, learned_net=str(tmp_path / "gone.caffemodel"),
                                             history=msg.history).SerializeToString())
    with pytest.raises(caffe.WeightsError, match=rf"^{broken}: cannot restore the weights from its learned_net "
                                                 r".*gone.caffemodel.*Could not open weights file"):
        make(type="SGD").restore(str(broken))
    for field in ("iter", "current_step"):
        negative = tmp_path / f"negative_{field}.solverstate"
        negative.write_bytes(caffe_pb2.SolverState(**{field: -3}, history=msg.history).SerializeToString())
        with pytest.raises(CaffeError, match=rf"^{negative}: {field} is -3, a negative count"):
            make(type="SGD").restore(str(negative))


def test_snapshot_files_are_valid_caffe_messages(tmp_path):
    s = make(type="Adam", base_lr=0.01, momentum=0.9, snapshot_prefix=str(tmp_path / "a"))
    s.step(2)
    model, state = s.snapshot()
    net = caffe_pb2.NetParameter.FromString(open(model, "rb").read())
    st = caffe_pb2.SolverState.FromString(open(state, "rb").read())
    assert [lp.name for lp in net.layer if lp.blobs] == ["ip1", "ip2"]
    assert st.iter == 2 and st.learned_net == model and len(st.history) == 2 * 4
    assert list(st.history[0].shape.dim) == [3, 3]
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp")]


def test_solve_runs_to_max_iter_and_snapshots_after_training(tmp_path, caplog):
    s = make(type="SGD", max_iter=4, display=2, snapshot_after_train=True, snapshot_prefix=str(tmp_path / "s"))
    with caplog.at_level("INFO", logger="caffelike"):
        s.solve()
    assert s.iter == 4 and (tmp_path / "s_iter_4.caffemodel").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert "Solving regress" in messages and "Optimization Done." in messages
    assert any(m.startswith("Iteration 2 (") and ", loss = " in m for m in messages)
    assert "Iteration 2, lr = 0.1" in messages
    assert any(m.startswith("    Train net output #0: loss = ") and "(* 1 = " in m for m in messages)
    assert any(m.startswith("Iteration 4, loss = ") for m in messages)


def test_hooks_fire_in_order():
    s = make(type="SGD")
    seen = []
    for event in ("on_start", "on_forward", "on_backward", "on_update"):
        s.add_hook(event, lambda solver, e=event: seen.append(e))
    s.add_callback(lambda: seen.append("pycaffe_start"), lambda: seen.append("pycaffe_grads"))
    s.step(1)
    assert seen == ["on_start", "pycaffe_start", "on_forward", "on_backward", "pycaffe_grads", "on_update"]


def test_shared_parameters_are_updated_once_with_summed_gradients():
    p = solver_param(type="SGD")
    p.train_net_param.layer[2].param.add(name="shared")
    p.train_net_param.layer[2].inner_product_param.num_output = 3
    p.train_net_param.layer[1].ClearField("param")
    p.train_net_param.layer[1].param.add(name="shared")
    p.train_net_param.layer[1].inner_product_param.bias_term = False
    p.train_net_param.layer[2].inner_product_param.bias_term = False
    p.train_net_param.layer[0].input_param.shape[1].dim[1] = 3
    s = Solver(p)
    assert len(s.net.learnable) == 1 and s.net.layer_list[1].blobs[0] is s.net.layer_list[2].blobs[0]


# ---------------------------------------------------------------------------------------------------------- errors
def test_unknown_solver_type():
    with pytest.raises(CaffeError, match="Unknown solver type: 'Adamm'"):
        Solver(solver_param(type="Adamm"))


def test_unknown_or_missing_lr_policy():
    with pytest.raises(CaffeError, match="Unknown learning rate policy: 'stepp'"):
        Solver(solver_param(lr_policy="stepp"))
    p = solver_param()
    p.ClearField("lr_policy")
    with pytest.raises(CaffeError, match="Unknown learning rate policy: ''"):
        Solver(p)


def test_test_iter_without_a_test_net():
    with pytest.raises(CaffeError, match="test_iter must be specified for each test network: 1 test_iter value"):
        Solver(solver_param(test_iter=[5], test_interval=10))


def test_nan_loss_stops_with_the_iteration_and_the_layer():
    s = make(type="SGD", base_lr=1e30)
    with pytest.raises(TrainingError, match=r"Iteration \d+: the training loss is (nan|inf).*InnerProduct layer"):
        s.step(5)


def test_unwritable_snapshot_prefix(tmp_path):
    with pytest.raises(CaffeError, match="Cannot write to snapshot prefix"):
        Solver(solver_param(snapshot=10, snapshot_prefix=str(tmp_path / "missing" / "dir" / "snap")))


def test_pycaffe_solver_classes_and_get_solver(tmp_path):
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(NET)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0.01 lr_policy: "fixed" type: "Adam" max_iter: 1')
    assert get_solver(str(solver_file)).param.type == "Adam"
    assert caffe.SGDSolver(str(solver_file)).param.type == "SGD"
    s = caffe.AdamSolver(str(solver_file))
    assert s.param.snapshot_prefix == str(tmp_path / "solver") and s.iter == 0 and s.test_nets == []
    assert s.lr == pytest.approx(0.01)


def test_hdf5_snapshot_and_restore(tmp_path):
    h5py = pytest.importorskip("h5py")
    fields = dict(type="Adam", base_lr=0.01, momentum=0.9, snapshot_prefix=str(tmp_path / "h"),
                  snapshot_format=caffe_pb2.SolverParameter.HDF5)
    full = make(**fields)
    full.step(4)
    first = make(**fields)
    first.step(2)
    model, state = first.snapshot()
    assert model.endswith("h_iter_2.caffemodel.h5") and state.endswith("h_iter_2.solverstate.h5")
    with h5py.File(model, "r") as f:
        assert sorted(f["data"]) == ["data", "ip1", "ip2", "loss"] and f["data"]["ip1"]["0"].shape == (3, 3)
    resumed = make(**fields)
    resumed._pass = 2
    resumed.restore(state)
    resumed.step(2)
    for a, b in zip(full.net.learnable, resumed.net.learnable):
        assert torch.equal(a.param, b.param)
