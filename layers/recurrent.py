"""Recurrent layers: RNN and LSTM (Caffe's unrolled nets, run here as a time loop) and LSTMUnit (one LSTM step).

Caffe builds an internal net of per-timestep InnerProduct/Eltwise/Scale layers; its numbers are reproduced with
one matmul for the input transform of all timesteps and a loop over time for the recurrence, and autograd gives
backpropagation through time within one forward call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, count, is_meta, register, shape_str


# ------------------------------------------------------------------------------------------------------- LSTM step
class _ForgetGate(torch.autograd.Function):
    """f = cont * sigmoid(f') where cont != 0, exactly 0 where cont == 0.

    The backward is Caffe's df' = df * f * (1 - f): the sigmoid derivative taken at f, cont included.  It is the
    true derivative when cont is 0 or 1 (the only values Caffe's nets feed) and differs from it otherwise."""

    @staticmethod
    def forward(ctx, pre, cont):
        f = torch.where(cont == 0, torch.zeros_like(pre), cont * torch.sigmoid(pre))
        ctx.save_for_backward(f)
        return f

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        return grad * f * (1 - f), None


def lstm_step(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, Caffe's gate layout [i, f, o, g] on the last axis: c = f*c_prev + i*g, h = o*tanh(c).
    c_prev (..., N, H), gates (..., N, 4H), cont (..., N); cont carries no gradient."""
    pre_i, pre_f, pre_o, pre_g = gates.chunk(4, dim=-1)
    cont = cont.detach().to(gates.dtype).unsqueeze(-1).expand_as(pre_f)
    i = torch.sigmoid(pre_i)
    f = _ForgetGate.apply(pre_f, cont)
    o = torch.sigmoid(pre_o)
    g = torch.tanh(pre_g)
    c = f * c_prev + i * g
    return c, o * torch.tanh(c)


@register("LSTMUnit")
class LSTMUnit(Layer):
    """One LSTM timestep: i = σ(i'), f = cont·σ(f') (0 where cont == 0), o = σ(o'), g = tanh(g');
    c = f·c_prev + i·g, h = o·tanh(c).

    bottoms: c_prev (1, N, H), gates (1, N, 4H) pre-activations in blocks [i, f, o, g], cont (1, N).
    tops: c (1, N, H), h (1, N, H).  No parameters; cont gets no gradient, even under force_backward.
    Backward is Caffe's, including its forget-gate derivative f·(1 − f) with f = cont·σ(f').
    """
    exact_bottoms = 3
    exact_tops = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def setup(self, bottom_shapes):
        self._check([tuple(s) for s in bottom_shapes])

    def _check(self, shapes) -> None:
        names = ("c_prev", "gates", "cont")
        for name, shape, axes in zip(names, shapes, (3, 3, 2)):
            if len(shape) != axes:
                self.fail(f"bottom {name} must have {axes} axes, got shape {shape_str(shape)}")
            if shape[0] != 1:
                self.fail(f"bottom {name} must have 1 on axis 0 (one timestep), got shape {shape_str(shape)}")
            if shape[1] != shapes[0][1]:
                self.fail(f"bottom {name} has {shape[1]} streams (shape {shape_str(shape)}), c_prev has "
                          f"{shapes[0][1]}")
        if shapes[1][2] != 4 * shapes[0][2]:
            self.fail(f"bottom gates must have 4 * H = {4 * shapes[0][2]} values per stream (H from c_prev "
                      f"{shape_str(shapes[0])}), got shape {shape_str(shapes[1])}")

    def forward(self, c_prev, gates, cont):
        self._check([tuple(t.shape) for t in (c_prev, gates, cont)])
        return lstm_step(c_prev, gates, cont)


# ------------------------------------------------------------------------------------------------- RNN and LSTM
class _Recurrent(Layer):
    """What RNN and LSTM share: the bottoms x (T, N, ...), cont (T, N), optional x_static (N, ...), with
    expose_hidden the initial states; arity, shape checks, and the hidden state carried between calls."""

    state_names: tuple[str, ...] = ()
    gate_mult = 1

    def __init__(self, param, phase):
        super().__init__(param, phase)
        rp = param.recurrent_param
        self.hidden = int(rp.num_output)
        self.expose_hidden = bool(rp.expose_hidden)
        exposed = len(self.state_names) if self.expose_hidden else 0
        # Caffe's MinBottomBlobs/MaxBottomBlobs/ExactNumTopBlobs depend on expose_hidden.
        self.min_bottoms = 2 + exposed
        self.max_bottoms = 3 + exposed
        self.exact_tops = 1 + exposed
        self.static_input = False
        self.T = None
        # Per state: Caffe's h_T/c_T buffer, flat, as long as the largest count it has held (Blob capacity).
        self._carried: list[torch.Tensor | None] = [None] * len(self.state_names)
        self._capacity = 0

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    # ----------------------------------------------------------------------------------------------- shapes
    def _check(self, shapes) -> None:
        x, cont = shapes[0], shapes[1]
        if len(x) < 2:
            self.fail(f"bottom x must have at least 2 axes (#timesteps, #streams, ...), got shape {shape_str(x)}")
        if self.T is not None and x[0] != self.T:
            self.fail(f"input number of timesteps changed: the layer was set up with T = {self.T}, bottom x has "
                      f"shape {shape_str(x)}")
        t, n = x[0], x[1]
        if len(cont) != 2 or tuple(cont) != (t, n):
            self.fail(f"bottom cont must have shape (#timesteps, #streams) = {shape_str((t, n))}, got "
                      f"{shape_str(cont)}")
        exposed = shapes[2 + self.static_input:]
        if self.static_input:
            s = shapes[2]
            if len(s) < 1 or s[0] != n:
                self.fail(f"static input x_static must have shape (#streams = {n}, ...), got {shape_str(s)}")
        state_shape = (1, n, self.hidden)
        for name, shape in zip(self.state_names, exposed):
            if tuple(shape) != state_shape:
                self.fail(f"bottom {name} must have the hidden state shape {shape_str(state_shape)}, got "
                          f"{shape_str(shape)}")

    def setup(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        if self.hidden <= 0:
            self.fail(f"recurrent_param.num_output must be positive, got {self.hidden}")
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.static_input = len(shapes) > 2 + exposed
        self._check(shapes)
        self.T = shapes[0][0]
        self._capacity = shapes[0][1] * self.hidden
        rp = self.param.recurrent_param
        gh = self.gate_mult * self.hidden
        self.add_blob((gh, count(shapes[0], 2)), rp.weight_filler)
        self.add_blob((gh,), rp.bias_filler)
        if self.static_input:
            self.add_blob((gh, count(shapes[2], 1)), rp.weight_filler)
        self.add_blob((gh, self.hidden), rp.weight_filler)
        self._add_output_blobs(rp)

    def _add_output_blobs(self, rp) -> None:
        """Blobs created after the recurrent weight (RNN's output layer)."""

    def _input_transform(self, x, x_static):
        """W·x_t + b for every timestep at once (T, N, G), and W_static·x_static (N, G) or None."""
        w, b = self.blobs[0], self.blobs[1]
        if count(x.shape, 2) != w.shape[1]:
            self.fail(f"bottom x has {count(x.shape, 2)} values per timestep and stream (shape "
                      f"{shape_str(x.shape)}), the layer was set up with {w.shape[1]}")
        xw = F.linear(x.reshape(x.shape[0], x.shape[1], -1), w, b)
        if x_static is None:
            return xw, None
        ws = self.blobs[2]
        if count(x_static.shape, 1) != ws.shape[1]:
            self.fail(f"static input x_static has {count(x_static.shape, 1)} values per stream (shape "
                      f"{shape_str(x_static.shape)}), the layer was set up with {ws.shape[1]}")
        return xw, F.linear(x_static.reshape(x_static.shape[0], -1), ws)

    # ------------------------------------------------------------------------------------------ carried state
    def _initial_states(self, like: torch.Tensor, n: int) -> list[torch.Tensor]:
        """h_0 (and c_0) from the previous call's h_T (and c_T), as Caffe copies them.  When N changes, Caffe
        reshapes its h_T blob: the buffer is kept while it is big enough (streams 0..N-1 keep their state when
        N shrinks) and replaced by zeros when N exceeds every earlier size."""
        size = n * self.hidden
        if is_meta(like):
            return [like.new_zeros(1, n, self.hidden) for _ in self.state_names]
        states = []
        for k, buf in enumerate(self._carried):
            if buf is None or buf.numel() < size:
                buf = torch.zeros(max(size, self._capacity if buf is None else 0))
                self._carried[k] = buf
            states.append(buf[:size].to(device=like.device, dtype=like.dtype).view(1, n, self.hidden))
        return states

    def _carry(self, finals: list[torch.Tensor]) -> None:
        for k, final in enumerate(finals):
            buf = self._carried[k]
            flat = final.detach().reshape(-1)
            buf = buf.to(device=flat.device, dtype=flat.dtype)
            self._carried[k] = torch.cat([flat, buf[flat.numel():]])

    def reset_state(self) -> None:
        """Zero the carried hidden state (Caffe's RecurrentLayer::Reset)."""
        self._carried = [None if buf is None else torch.zeros_like(buf) for buf in self._carried]

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, *bottoms):
        self._check([tuple(b.shape) for b in bottoms])
        x, cont = bottoms[0], bottoms[1]
        x_static = bottoms[2] if self.static_input else None
        cont = cont.detach().to(x.dtype)
        n = x.shape[1]
        if self.expose_hidden:
            # Caffe shares only the data of the exposed states: no gradient reaches h_0/c_0 or leaves h_T/c_T.
            states = [s.detach() for s in bottoms[2 + self.static_input:]]
        else:
            states = self._initial_states(x, n)
        xw, xw_static = self._input_transform(x, x_static)
        out, finals = self._unroll(xw, xw_static, cont, [s.reshape(n, self.hidden) for s in states])
        finals = [f.unsqueeze(0) for f in finals]
        if self.expose_hidden:
            return (out, *(f.detach() for f in finals))
        if not is_meta(x):
            self._carry(finals)
        return out

    def _unroll(self, xw, xw_static, cont, states):
        raise NotImplementedError


@register("RNN")
class RNN(_Recurrent):
    """Elman RNN with an output layer, Caffe's RNNLayer:
    h_t = tanh(W_hh·(cont_t·h_{t-1}) + W_xh·x_t + b_h [+ W_xh_static·x_static]),  o_t = tanh(W_ho·h_t + b_o).

    bottoms: x (T, N, ...), cont (T, N) (0 = a sequence starts at this step; no gradient), optional
    x_static (N, ...), and with expose_hidden h_0 (1, N, H).  tops: o (T, N, H), with expose_hidden h_T (1, N, H).
    blobs: W_xh (H, D), b_h (H), [W_xh_static (H, Ds)], W_hh (H, H), W_ho (H, H), b_o (H).
    recurrent_param: num_output (H), weight_filler, bias_filler, expose_hidden; debug_info is accepted and ignored.

    Stateful like Caffe: without expose_hidden, h_0 of a call is h_T of the previous call (zero at first), with
    no gradient across calls.  T is fixed at setup; N may change (see `_initial_states` for the carried state).
    As in Caffe, exposed states pass data only: h_0 gets no gradient and a gradient on h_T is ignored.
    """
    state_names = ("h_0",)

    def _add_output_blobs(self, rp):
        self.add_blob((self.hidden, self.hidden), rp.weight_filler)
        self.add_blob((self.hidden,), rp.bias_filler)

    def _unroll(self, xw, xw_static, cont, states):
        w_hh, w_ho, b_o = self.blobs[-3], self.blobs[-2], self.blobs[-1]
        (h,) = states
        hs = []
        for t in range(xw.shape[0]):
            pre = F.linear(cont[t].unsqueeze(-1) * h, w_hh) + xw[t]
            if xw_static is not None:
                pre = pre + xw_static
            h = torch.tanh(pre)
            hs.append(h)
        o = torch.tanh(F.linear(torch.stack(hs), w_ho, b_o))
        return o, [h]


@register("LSTM")
class LSTM(_Recurrent):
    """LSTM, Caffe's LSTMLayer: gates_t = W_hc·(cont_t·h_{t-1}) + W_xc·x_t + b_c [+ W_xc_static·x_static]
    in blocks [i, f, o, g], then the LSTMUnit step (f = 0 where cont_t == 0): c_t = f·c_{t-1} + i·g,
    h_t = o·tanh(c_t).

    bottoms: x (T, N, ...), cont (T, N) (no gradient), optional x_static (N, ...), with expose_hidden
    h_0 and c_0 (1, N, H).  tops: h (T, N, H), with expose_hidden h_T and c_T (1, N, H).
    blobs: W_xc (4H, D), b_c (4H) — one bias, unlike torch's two —, [W_xc_static (4H, Ds)], W_hc (4H, H).
    Gate order i, f, o, g differs from torch.nn.LSTM's i, f, g, o.
    recurrent_param: num_output (H), weight_filler, bias_filler, expose_hidden; debug_info is accepted and ignored.

    Stateful like Caffe: without expose_hidden, (h_0, c_0) of a call are (h_T, c_T) of the previous call, with
    no gradient across calls.  T is fixed at setup; N may change (see `_initial_states`).  Exposed states pass
    data only, as in Caffe: no gradient to h_0/c_0, none taken from h_T/c_T.
    """
    state_names = ("h_0", "c_0")
    gate_mult = 4

    def _unroll(self, xw, xw_static, cont, states, step=lstm_step):
        """`step`: the LSTMUnit arithmetic (the ONNX export passes its own form of it)."""
        w_hc = self.blobs[-1]
        h, c = states
        hs = []
        for t in range(xw.shape[0]):
            gates = F.linear(cont[t].unsqueeze(-1) * h, w_hc) + xw[t]
            if xw_static is not None:
                gates = gates + xw_static
            c, h = step(c, gates, cont[t])
            hs.append(h)
        return torch.stack(hs), [h, c]
