"""Recurrent layers (layers/recurrent.py): RNN, LSTM, LSTMUnit.

Each layer is checked against real Caffe output (tests/fixtures/layers/{rnn,lstm,lstmunit}), against a NumPy
reference for what the fixtures do not cover (static input, expose_hidden), for the hidden state Caffe carries
between forward calls, by float64 central differences, and on its errors.
"""
import numpy as np
import pytest
import torch
from google.protobuf import text_format
from helpers import Case, as_tuple, assert_blob_close, check_gradient, forward, make_layer, rand

from caffelike.errors import LayerError

H = 3


def set_blobs(layer, values):
    for blob, value in zip(layer.blobs, values):
        blob.data.copy_(torch.as_tensor(np.asarray(value, np.float32)).reshape(blob.shape))


def recurrent_text(kind, *, expose=False, h=H, std=0.5):
    return (f'type: "{kind}" recurrent_param {{ num_output: {h} expose_hidden: {str(expose).lower()} '
            f'weight_filler {{ type: "gaussian" std: {std} }} bias_filler {{ type: "gaussian" std: 0.5 }} }}')


def conts(t, n, restarts=()):
    """cont (T, N): 0 at t = 0 for every stream and at each (t, n) in `restarts`, 1 elsewhere."""
    c = np.ones((t, n), np.float32)
    c[0] = 0
    for t_, n_ in restarts:
        c[t_, n_] = 0
    return c


# ------------------------------------------------------------------------------------------ NumPy references
def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_rnn(blobs, x, cont, x_static=None, h0=None):
    w_xh, b_h = blobs[0], blobs[1]
    w_s = blobs[2] if x_static is not None else None
    w_hh, w_ho, b_o = blobs[-3:]
    t_len, n = cont.shape
    h = np.zeros((n, w_hh.shape[0])) if h0 is None else h0[0]
    os = []
    for t in range(t_len):
        pre = (cont[t][:, None] * h) @ w_hh.T + x[t].reshape(n, -1) @ w_xh.T + b_h
        if w_s is not None:
            pre = pre + x_static.reshape(n, -1) @ w_s.T
        h = np.tanh(pre)
        os.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(os), h[None]


def np_lstm_unit(c_prev, gates, cont):
    i, f, o, g = np.split(gates, 4, axis=-1)
    i, o, g = sigmoid(i), sigmoid(o), np.tanh(g)
    f = np.where(cont[..., None] == 0, 0.0, cont[..., None] * sigmoid(f))
    c = f * c_prev + i * g
    return c, o * np.tanh(c)


def np_lstm(blobs, x, cont, x_static=None, h0=None, c0=None):
    w_xc, b_c = blobs[0], blobs[1]
    w_s = blobs[2] if x_static is not None else None
    w_hc = blobs[-1]
    t_len, n = cont.shape
    h = np.zeros((n, w_hc.shape[1])) if h0 is None else h0[0]
    c = np.zeros((n, w_hc.shape[1])) if c0 is None else c0[0]
    hs = []
    for t in range(t_len):
        gates = (cont[t][:, None] * h) @ w_hc.T + x[t].reshape(n, -1) @ w_xc.T + b_c
        if w_s is not None:
            gates = gates + x_static.reshape(n, -1) @ w_s.T
        c, h = np_lstm_unit(c, gates, cont[t])
        hs.append(h)
    return np.stack(hs), h[None], c[None]


# ------------------------------------------------------------------------------------------- real-Caffe fixtures
def fixture_layer(case: Case, layer_name: str):
    (lp,) = [lp for lp in case.net_param().layer if lp.name == layer_name]
    layer = make_layer(text_format.MessageToString(lp), [case.data(b).shape for b in lp.bottom])
    set_blobs(layer, case.stored_weights().get(layer_name, []))
    return layer, list(lp.bottom), list(lp.top)


@pytest.mark.parametrize("name", ["rnn", "lstm", "lstmunit"])
def test_matches_caffe_fixture(name):
    case = Case.load("layers", name)
    layer_name = {"lstmunit": "unit"}.get(name, name)
    layer, bottoms, tops = fixture_layer(case, layer_name)
    tol = case.tolerance
    xs = [torch.tensor(case.data(b), requires_grad=b != "cont") for b in bottoms]
    ys = as_tuple(layer(*xs))
    for top, y in zip(tops, ys):
        assert_blob_close(y, case.data(top), name=top, **tol)
    torch.autograd.backward(ys, [torch.from_numpy(case.output_diff(t)) for t in tops])
    for b, x in zip(bottoms, xs):
        if b == "cont":
            assert x.grad is None
        else:
            assert_blob_close(x.grad, case.diff(b), name=f"{b} diff", **tol)
    assert len(layer.blobs) == len(case.meta["params"].get(layer_name, []))
    for i, blob in enumerate(layer.blobs):
        assert_blob_close(blob, case.param_data(layer_name, i), name=f"param {i} data", **tol)
        assert_blob_close(blob.grad, case.param_diff(layer_name, i), name=f"param {i} diff", **tol)


# ----------------------------------------------------------------------------------------------- blobs, fillers
@pytest.mark.parametrize("kind,static,expected", [
    ("RNN", False, [(3, 4), (3,), (3, 3), (3, 3), (3,)]),
    ("RNN", True, [(3, 4), (3,), (3, 5), (3, 3), (3, 3), (3,)]),
    ("LSTM", False, [(12, 4), (12,), (12, 3)]),
    ("LSTM", True, [(12, 4), (12,), (12, 5), (12, 3)]),
], ids=["rnn", "rnn-static", "lstm", "lstm-static"])
def test_blob_shapes_in_caffe_order(kind, static, expected):
    shapes = [(2, 3, 2, 2), (2, 3)] + ([(3, 5)] if static else [])   # x's trailing axes flatten to D = 4
    layer = make_layer(f'type: "{kind}" recurrent_param {{ num_output: 3 }}', shapes)
    assert [tuple(b.shape) for b in layer.blobs] == expected
    assert layer.infer_top_shapes(shapes) == [(2, 3, 3)]


def test_fillers_weight_and_bias():
    layer = make_layer('type: "LSTM" recurrent_param { num_output: 2 weight_filler { type: "constant" value: 0.25 }'
                       ' bias_filler { type: "constant" value: -1 } }', [(2, 1, 3), (2, 1), (1, 4)])
    w_xc, b_c, w_static, w_hc = layer.blobs
    for w in (w_xc, w_static, w_hc):
        assert torch.all(w == 0.25)
    assert torch.all(b_c == -1)
    unset = make_layer('type: "RNN" recurrent_param { num_output: 2 }', [(2, 1, 3), (2, 1)])
    assert all(torch.all(b == 0) for b in unset.blobs)     # Caffe's default filler: constant 0


def test_cont_never_takes_a_gradient():
    for kind, index in (("RNN", 1), ("LSTM", 1), ("LSTMUnit", 2)):
        shapes = [(1, 2, 3), (1, 2, 12), (1, 2)] if kind == "LSTMUnit" else [(2, 2, 3), (2, 2)]
        layer = make_layer(f'type: "{kind}"' + ("" if kind == "LSTMUnit" else ' recurrent_param { num_output: 3 }'),
                           shapes)
        assert [layer.allow_force_backward(i) for i in range(len(shapes))] == [i != index for i in range(len(shapes))]


# ------------------------------------------------------------------------------------------ NumPy references
@pytest.mark.parametrize("static", [False, True], ids=["plain", "static"])
@pytest.mark.parametrize("expose", [False, True], ids=["carried", "exposed"])
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_matches_numpy_reference(kind, expose, static):
    t_len, n = 4, 3
    x = rand((t_len, n, 2, 2), seed=1)
    cont = conts(t_len, n, restarts=[(2, 1)])
    if expose:
        cont[0] = [1, 0, 1]                       # exposed states matter where cont_1 = 1
    bottoms = [x, cont] + ([rand((n, 5), seed=2)] if static else [])
    states = [rand((1, n, H), seed=3 + k, low=-1, high=1) for k in range(2 if kind == "LSTM" else 1)]
    if expose:
        bottoms += states
    layer = make_layer(recurrent_text(kind, expose=expose), [b.shape for b in bottoms])
    tops = as_tuple(forward(layer, *bottoms))
    blobs = [b.detach().double().numpy() for b in layer.blobs]
    ref = (np_rnn if kind == "RNN" else np_lstm)(
        blobs, x.astype(np.float64), cont.astype(np.float64), bottoms[2] if static else None,
        *([s.astype(np.float64) for s in states] if expose else []))
    assert len(tops) == (len(ref) if expose else 1)
    for i, (top, expected) in enumerate(zip(tops, ref)):
        assert_blob_close(top, expected.astype(np.float32), rtol=1e-5, atol=1e-6, name=f"top {i}")


def test_lstmunit_matches_numpy_reference_with_fractional_cont():
    c_prev, gates = rand((1, 4, 3), seed=1), rand((1, 4, 12), seed=2)
    cont = np.array([[1.0, 0.0, 0.5, 2.0]], np.float32)
    layer = make_layer('type: "LSTMUnit"', [c_prev.shape, gates.shape, cont.shape])
    c, h = forward(layer, c_prev, gates, cont)
    c_ref, h_ref = np_lstm_unit(c_prev.astype(np.float64), gates.astype(np.float64), cont.astype(np.float64))
    assert_blob_close(c, c_ref.astype(np.float32), rtol=1e-6, atol=1e-7, name="c")
    assert_blob_close(h, h_ref.astype(np.float32), rtol=1e-6, atol=1e-7, name="h")


def test_lstmunit_forget_gradient_is_caffes():
    """Caffe back-propagates df * f * (1 - f) with f = cont * sigmoid(f'), not the exact cont * s * (1 - s)."""
    gates = torch.tensor(rand((1, 2, 4), seed=5), dtype=torch.float64, requires_grad=True)
    c_prev = torch.ones((1, 2, 1), dtype=torch.float64)
    cont = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    layer = make_layer('type: "LSTMUnit"', [(1, 2, 1), (1, 2, 4), (1, 2)]).double()
    c, _ = layer(c_prev, gates, cont)
    c.sum().backward()
    f = 0.5 * sigmoid(gates.detach().numpy()[0, 0, 1])
    assert gates.grad[0, 0, 1].item() == pytest.approx(f * (1 - f))
    assert gates.grad[0, 1, 1].item() == 0.0


# ------------------------------------------------------------------------------------------ state across calls
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_state_is_carried_across_calls(kind):
    """Two calls of T steps with cont = 1 at the second call's start equal one call of 2T steps."""
    t_len, n = 3, 2
    x = rand((2 * t_len, n, 4), seed=1)
    cont = conts(2 * t_len, n, restarts=[(4, 0)])
    long = make_layer(recurrent_text(kind), [x.shape, cont.shape])
    short = make_layer(recurrent_text(kind), [(t_len, n, 4), (t_len, n)])
    set_blobs(short, [b.detach() for b in long.blobs])
    expected = forward(long, x, cont)
    first = forward(short, x[:t_len], cont[:t_len])
    second = forward(short, x[t_len:], cont[t_len:])
    assert_blob_close(torch.cat([first, second]), expected, rtol=1e-6, atol=1e-6, name="two calls")


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_cont_zero_resets_the_carried_state(kind):
    x1, x2 = rand((3, 2, 4), seed=1), rand((3, 2, 4), seed=2)
    cont, ones = conts(3, 2), np.ones((3, 2), np.float32)
    used = make_layer(recurrent_text(kind), [x1.shape, cont.shape])
    fresh = make_layer(recurrent_text(kind), [x1.shape, cont.shape])
    set_blobs(fresh, [b.detach() for b in used.blobs])
    forward(used, x1, ones)                           # leaves a non-zero state behind
    carried = forward(used, x2, ones)
    assert not torch.allclose(carried, forward(fresh, x2, ones))
    assert_blob_close(forward(used, x2, cont), forward(fresh, x2, cont), name="after cont = 0")


def test_no_gradient_crosses_calls_and_meta_leaves_the_state():
    x1 = torch.tensor(rand((2, 2, 3), seed=1), requires_grad=True)
    x2 = torch.tensor(rand((2, 2, 3), seed=2))
    cont = torch.ones(2, 2)
    layer = make_layer(recurrent_text("LSTM"), [(2, 2, 3), (2, 2)])
    layer(x1, cont)
    assert layer.infer_top_shapes([(2, 2, 3), (2, 2)]) == [(2, 2, 3)]
    with torch.no_grad():
        twin = make_layer(recurrent_text("LSTM"), [(2, 2, 3), (2, 2)])
        set_blobs(twin, [b.detach() for b in layer.blobs])
        twin(x1.detach(), cont)
    y = layer(x2, cont)
    assert_blob_close(y, twin(x2, cont).detach(), name="after a meta pass")
    assert torch.autograd.grad(y.sum(), x1, allow_unused=True) == (None,)


def test_batch_size_change_follows_caffes_blob_reshape():
    """N shrinks: streams 0..N-1 keep their state (Caffe keeps the buffer).  N grows past every earlier size:
    Caffe allocates a new, zeroed buffer, so every stream starts from 0."""
    ones = lambda n: np.ones((2, n), np.float32)  # noqa: E731
    layer = make_layer(recurrent_text("RNN"), [(2, 3, 4), (2, 3)])
    twin = make_layer(recurrent_text("RNN"), [(2, 3, 4), (2, 3)])
    set_blobs(twin, [b.detach() for b in layer.blobs])
    x3, x2, x5 = rand((2, 3, 4), seed=1), rand((2, 2, 4), seed=2), rand((2, 5, 4), seed=3)
    forward(layer, x3, ones(3))
    forward(twin, x3, ones(3))
    small = forward(layer, x2, ones(2))
    assert_blob_close(small, forward(twin, np.concatenate([x2, x3[:, 2:]], 1), ones(3))[:, :2], name="shrunk")
    fresh = make_layer(recurrent_text("RNN"), [(2, 5, 4), (2, 5)])
    set_blobs(fresh, [b.detach() for b in layer.blobs])
    assert_blob_close(forward(layer, x5, ones(5)), forward(fresh, x5, ones(5)), name="grown")


def test_exposed_states_pass_data_only():
    """Caffe shares the data of h_0/c_0 and h_T/c_T but not their diffs."""
    x = torch.tensor(rand((2, 2, 3), seed=1), requires_grad=True)
    h0 = torch.tensor(rand((1, 2, H), seed=2), requires_grad=True)
    c0 = torch.tensor(rand((1, 2, H), seed=3), requires_grad=True)
    cont = torch.ones(2, 2)
    layer = make_layer(recurrent_text("LSTM", expose=True), [x.shape, cont.shape, h0.shape, c0.shape])
    h, h_t, c_t = layer(x, cont, h0, c0)
    assert not h_t.requires_grad and not c_t.requires_grad
    assert_blob_close(h_t, h[-1:].detach(), name="h_T")
    assert torch.autograd.grad(h.sum(), [h0, c0], allow_unused=True) == (None, None)
    again = layer(x, cont, h0, c0)[0]
    assert_blob_close(again, h.detach(), name="no state carried when exposed")


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_gradient_with_static_input(kind):
    x, cont, static = rand((3, 2, 4), seed=1, low=-1, high=1), conts(3, 2, restarts=[(2, 1)]), rand((2, 3), seed=2)
    layer = make_layer(recurrent_text(kind), [x.shape, cont.shape, static.shape])
    check_gradient(layer, [x, cont, static], grad_bottoms=[0, 2], max_elements=60)


def test_gradient_lstm_exposed_reaches_x_through_h_only():
    """With expose_hidden, h_T/c_T carry no gradient (Caffe does not share their diffs), so the check weights
    only the output h: x's gradient agrees with central differences of <h, R>."""
    x = torch.tensor(rand((2, 2, 3), seed=1, low=-1, high=1), dtype=torch.float64, requires_grad=True)
    cont = torch.ones(2, 2, dtype=torch.float64)
    h0, c0 = (torch.tensor(rand((1, 2, H), seed=s), dtype=torch.float64) for s in (2, 3))
    layer = make_layer(recurrent_text("LSTM", expose=True), [x.shape, cont.shape, h0.shape, c0.shape]).double()
    r = torch.randn(2, 2, H, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((layer(x, cont, h0, c0)[0] * r).sum(), x)
    with torch.no_grad():
        for k in range(x.numel()):
            step = torch.zeros_like(x).view(-1)
            step[k] = 1e-6
            step = step.view_as(x)
            plus = (layer(x + step, cont, h0, c0)[0] * r).sum()
            minus = (layer(x - step, cont, h0, c0)[0] * r).sum()
            assert grad.view(-1)[k].item() == pytest.approx(((plus - minus) / 2e-6).item(), rel=1e-5, abs=1e-8)


def test_gradient_lstmunit():
    bottoms = [rand((1, 3, 2), seed=1), rand((1, 3, 8), seed=2), np.array([[1.0, 0.0, 1.0]])]
    layer = make_layer('type: "LSTMUnit"', [b.shape for b in bottoms])
    check_gradient(layer, bottoms, grad_bottoms=[0, 1])


# -------------------------------------------------------------------------------------------------- errors
ERRORS = [
    ("timesteps changed", "RNN", [(2, 2, 3), (2, 2)], [(3, 2, 3), (3, 2)], "number of timesteps changed"),
    ("cont axes", "LSTM", [(2, 2, 3), (2, 2, 1)], None, "bottom cont must have shape"),
    ("cont streams", "RNN", [(2, 2, 3), (2, 3)], None, "bottom cont must have shape"),
    ("x one axis", "RNN", [(2,), (2, 2)], None, "at least 2 axes"),
    ("x size changed", "LSTM", [(2, 2, 3), (2, 2)], [(2, 2, 4), (2, 2)], "values per timestep"),
    ("static streams", "LSTM", [(2, 2, 3), (2, 2), (3, 5)], None, "x_static must have shape"),
    ("static size changed", "RNN", [(2, 2, 3), (2, 2), (2, 5)], [(2, 2, 3), (2, 2), (2, 4)], "values per stream"),
    ("exposed shape", "LSTM-expose", [(2, 2, 3), (2, 2), (1, 2, 3), (1, 2, 4)], None, "c_0 must have"),
    ("unit gates", "LSTMUnit", [(1, 2, 3), (1, 2, 8), (1, 2)], None, r"4 \* H = 12"),
    ("unit cont axes", "LSTMUnit", [(1, 2, 3), (1, 2, 12), (2,)], None, "cont must have 2 axes"),
    ("unit timesteps", "LSTMUnit", [(2, 2, 3), (2, 2, 12), (2, 2)], None, "one timestep"),
]


@pytest.mark.parametrize("shapes,later,message,kind", [(e[2], e[3], e[4], e[1]) for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_shape_errors(kind, shapes, later, message):
    text = {"LSTMUnit": 'type: "LSTMUnit"', "LSTM-expose": recurrent_text("LSTM", expose=True)}.get(
        kind, recurrent_text(kind))
    with pytest.raises(LayerError, match=message):
        layer = make_layer(text, shapes)
        layer.infer_top_shapes(later)


def test_arity_and_num_output_errors():
    with pytest.raises(LayerError, match=r'LSTM layer "lstm": takes at least 4 bottom blobs, got 3'):
        make_layer(recurrent_text("LSTM", expose=True), [(2, 2, 3), (2, 2), (1, 2, 3)])
    with pytest.raises(LayerError, match="takes exactly 2 top blobs"):
        make_layer('top: "o" ' + recurrent_text("RNN", expose=True), [(2, 2, 3), (2, 2), (1, 2, 3)])
    with pytest.raises(LayerError, match="takes at most 3 bottom blobs"):
        make_layer(recurrent_text("RNN"), [(2, 2, 3), (2, 2), (2, 3), (1, 2, 3)])
    with pytest.raises(LayerError, match="num_output must be positive"):
        make_layer('type: "RNN" recurrent_param { num_output: 0 }', [(2, 2, 3), (2, 2)])
