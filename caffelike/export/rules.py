"""Export-specific forwards, for the layer types whose ordinary forward does not trace into a faithful, static,
side-effect-free graph.  Each computes Caffe's numbers with operations every ONNX runtime implements the same
way; tests/test_export_layers.py checks each one against BVLC Caffe's recorded outputs and against caffelike.

Why each type is here:

* Pooling, SPP: ONNX's `ceil_mode` does not drop a last window that starts in the right padding (Caffe clips it,
  torch does too, onnxruntime and OpenCV do not agree), and ONNX AveragePool cannot divide by Caffe's
  per-window size (padding counted, the ceil-mode overhang not).  Here every window is made explicit: the input
  is padded (with -FLT_MAX for MAX, Caffe's start value; zeros for AVE) or trimmed so the windows tile it
  exactly, pooled with no padding and no ceil rule, and AVE is rescaled by a constant map kernel / divisor
  where the two differ.  Where Caffe's windows are the runtimes' own (symmetric padding, nothing past
  H + pad), the pool keeps its padding attribute instead: one op, same numbers.
* BatchNorm: the moving-average scale factor is folded into constant mean and standard deviation before
  tracing (the graph holds no accumulators); with batch statistics the running averages are not updated.
* Power, MVN, Eltwise PROD, LSTMUnit, LSTM: their forwards are custom autograd Functions (for Caffe's
  backward).  torch.export and the ONNX exporter trace through them, but TorchScript cannot save one ("Could
  not export Python function call"); inference needs only the forward formula, one path for all three formats.
* RNN, LSTM: Caffe carries the hidden state from one forward call to the next, which a stateless graph cannot;
  the exported graph starts from zero state (Caffe's state after Reset, and the state that matters not at all
  when cont is 0 at the first timestep, as at every sequence start) unless expose_hidden makes h_0/c_0 inputs.
* ArgMax (ONNX only): ONNX has no stable sort; TopK on the reversed values breaks ties Caffe's way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from caffelike.proto import caffe_pb2

_POOL = caffe_pb2.PoolingParameter
_ELTWISE = caffe_pb2.EltwiseParameter
_FLT_MAX = float(torch.finfo(torch.float32).max)
_FLT_MIN = float(torch.finfo(torch.float32).tiny)


@dataclass(frozen=True)
class Rule:
    """forward(layer, constants, *bottoms) -> top(s); prepare(layer) -> {name: tensor} folded before tracing
    (held as buffers of the exported module, so they become the file's constants)."""
    forward: Callable
    prepare: Callable | None = None
    onnx_only: bool = False  # torch.export and TorchScript run the layer's own forward


# --------------------------------------------------------------------------------------------------- Pooling
def _tile_exactly(x: torch.Tensor, top: int, left: int, bottom: int, right: int, value: float) -> torch.Tensor:
    """x padded by (top, left, bottom, right); a negative bottom/right trims rows/columns no window reaches
    (a slice rather than a negative pad, which not every ONNX runtime accepts)."""
    if bottom < 0:
        x = x[:, :, :x.shape[2] + bottom]
    if right < 0:
        x = x[:, :, :, :x.shape[3] + right]
    spec = (left, max(right, 0), top, max(bottom, 0))
    return F.pad(x, spec, value=value) if any(spec) else x


def _window_extent(size: int, kernel: int, pad: int, stride: int, out: int) -> list[int]:
    """Caffe's AVE divisor along one axis: each window's extent clipped to size + pad (before clipping to the
    image, so padding counts)."""
    return [min(i * stride - pad + kernel, size + pad) - (i * stride - pad) for i in range(out)]


def pool(layer, x: torch.Tensor, phase_train: bool = False):
    """Caffe's Pooling forward (MAX, AVE, STOCHASTIC in TEST) on `layer`'s geometry, with explicit windows."""
    pp = layer.param.pooling_param
    height, width = int(x.shape[2]), int(x.shape[3])
    (kh, kw), (ph, pw), (sh, sw), (oh, ow) = layer.windows(height, width)
    after_h = (oh - 1) * sh + kh - height - ph
    after_w = (ow - 1) * sw + kw - width - pw
    if (after_h, after_w) == (ph, pw) and 2 * ph <= kh and 2 * pw <= kw and layer.num_tops < 2 \
            and pp.pool != _POOL.STOCHASTIC:
        # Symmetric padding and no window past H + pad (GoogLeNet's 3x3 stride-1 pools): the runtimes' own
        # padding places Caffe's windows, a window always holds a real value (pad < kernel), and AVE's divisor is
        # the kernel area everywhere, as Caffe's.  One op instead of Pad + pool.
        if pp.pool == _POOL.MAX:
            return F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
        return F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), count_include_pad=True)
    if pp.pool == _POOL.MAX:
        # -FLT_MAX is where Caffe starts every window: a padded position never wins over a real value.
        padded = _tile_exactly(x, ph, pw, after_h, after_w, -_FLT_MAX)
        if layer.num_tops < 2:
            return F.max_pool2d(padded, (kh, kw), (sh, sw))
        y, index = F.max_pool2d(padded, (kh, kw), (sh, sw), return_indices=True)
        # The mask (h * W + w in the unpadded map) in float arithmetic, exact below 2^24 positions per channel:
        # OpenCV's dnn refuses integer division.
        index = index.to(x.dtype)
        padded_width = float(padded.shape[3])
        row = torch.floor(index / padded_width)
        return y, (row - ph) * width + (index - row * padded_width - pw)
    area = kh * kw
    padded = _tile_exactly(x, ph, pw, after_h, after_w, 0.0)
    if pp.pool == _POOL.STOCHASTIC:
        # TEST: sum(x^2) / (FLT_MIN + sum(x)) per window, the sums as area * mean (zeros add nothing).
        squares = F.avg_pool2d(padded * padded, (kh, kw), (sh, sw)) * area
        return squares / (F.avg_pool2d(padded, (kh, kw), (sh, sw)) * area + _FLT_MIN)
    y = F.avg_pool2d(padded, (kh, kw), (sh, sw))  # = window sum / area: no padding left for the op to count
    rows = _window_extent(height, kh, ph, sh, oh)
    cols = _window_extent(width, kw, pw, sw, ow)
    if all(r == kh for r in rows) and all(c == kw for c in cols):
        return y  # every window's divisor is the kernel area, which is what avg_pool divided by
    correction = torch.tensor([[area / (r * c) for c in cols] for r in rows], dtype=x.dtype, device=x.device)
    return y * correction


def _pooling(layer, consts, x):
    return pool(layer, x)


def _spp(layer, consts, x):
    height = layer.param.spp_param.pyramid_height
    if height == 1:
        return pool(layer._pooling(0, x.shape), x)
    levels = [pool(layer._pooling(level, x.shape), x).flatten(1) for level in range(height)]
    return torch.cat(levels, dim=1)


# ------------------------------------------------------------------------------------------------- BatchNorm
def _batchnorm_constants(layer) -> dict[str, torch.Tensor]:
    """mean = blob0 / s and std = sqrt(blob1 / s + eps), s the moving-average factor (0 gives 0 and 0), in
    float32 as the layer computes them, so the folded graph reproduces its numbers exactly."""
    if not layer.use_global_stats:
        return {}
    with torch.no_grad():
        factor = layer.blobs[2].detach().reshape(-1)[0]
        factor = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
        mean = layer.blobs[0].detach() * factor
        var = layer.blobs[1].detach() * factor
        std = torch.sqrt(var + layer.param.batch_norm_param.eps)
    return {"mean": mean.clone(), "std": std}


def _batchnorm(layer, consts, x):
    per_channel = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    if consts is not None and hasattr(consts, "mean"):
        return (x - consts.mean.reshape(per_channel)) / consts.std.reshape(per_channel)
    # Batch statistics (use_global_stats false): the same normalisation, without moving the running averages.
    dims = [0] + list(range(2, x.dim()))
    centered = x - x.mean(dim=dims).reshape(per_channel)
    var = centered.square().mean(dim=dims)
    return centered / torch.sqrt(var + layer.param.batch_norm_param.eps).reshape(per_channel)


# -------------------------------------------------------------------------------------------- element-wise
def _power(layer, consts, x):
    p = layer.param.power_param
    power, scale, shift = float(p.power), float(p.scale), float(p.shift)
    if power * scale == 0:  # the input is ignored, as in Caffe (a negative shift to a fractional power: NaN)
        return torch.ones_like(x) if power == 0 else torch.full_like(x, shift).pow(power)
    base = x * scale if scale != 1 else x
    base = base + shift if shift != 0 else base
    if power == 1:
        return base if base is not x else x * 1.0
    return base.pow(power)


def _mvn(layer, consts, x):
    p = layer.param.mvn_param
    shape = x.shape
    num = shape[0] if p.across_channels or x.dim() < 2 else shape[0] * shape[1]
    flat = x.reshape(num, -1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    if p.normalize_variance:
        # eps on the standard deviation, not the variance, as Caffe adds it
        centred = centred / (centred.pow(2).mean(dim=1, keepdim=True).sqrt() + float(p.eps))
    return centred.reshape(tuple(shape) + (1,) * (4 - len(shape)))


def _eltwise(layer, consts, *xs):
    if layer.param.eltwise_param.operation != _ELTWISE.PROD:
        return layer(*xs)
    y = xs[0] * xs[1]
    for x in xs[2:]:
        y = y * x
    return y


# ---------------------------------------------------------------------------------------------- recurrent
def _lstm_step(c_prev, gates, cont):
    """LSTMUnit's forward: gates [i, f, o, g]; f = cont * sigmoid(f'), exactly 0 where cont == 0."""
    pre_i, pre_f, pre_o, pre_g = gates.chunk(4, dim=-1)
    cont = cont.to(gates.dtype).unsqueeze(-1)
    f = torch.where(cont == 0, torch.zeros_like(pre_f), cont * torch.sigmoid(pre_f))
    c = f * c_prev + torch.sigmoid(pre_i) * torch.tanh(pre_g)
    return c, torch.sigmoid(pre_o) * torch.tanh(c)


def _lstm_unit(layer, consts, c_prev, gates, cont):
    return _lstm_step(c_prev, gates, cont)


def _recurrent(layer, consts, *bottoms):
    """RNN and LSTM unrolled over time from zero state, or from the exposed h_0 (c_0) inputs."""
    x, cont = bottoms[0], bottoms[1].to(bottoms[0].dtype)
    x_static = bottoms[2] if layer.static_input else None
    n = x.shape[1]
    if layer.expose_hidden:
        states = [s.reshape(n, layer.hidden) for s in bottoms[2 + layer.static_input:]]
    else:
        states = [x.new_zeros(n, layer.hidden) for _ in layer.state_names]
    xw, xw_static = layer._input_transform(x, x_static)
    if layer.type == "RNN":
        out, finals = layer._unroll(xw, xw_static, cont, states)
    else:
        out, finals = layer._unroll(xw, xw_static, cont, states, step=_lstm_step)
    if layer.expose_hidden:
        return (out, *(f.unsqueeze(0) for f in finals))
    return out


# ------------------------------------------------------------------------------------------------- ArgMax
def _argmax(layer, consts, x):
    """ONNX has no stable sort; TopK breaks ties by the lower index, which on the reversed values is the larger
    original index: Caffe's std::greater order over (value, index) pairs."""
    p = layer.param.argmax_param
    k = int(p.top_k)
    axis, dim = layer._axis_and_dim(x.shape)
    values = x.movedim(axis, -1) if axis is not None else x.reshape(x.shape[0], dim)
    top_values, rev = torch.topk(values.flip(-1), k, dim=-1, largest=True, sorted=True)
    index = (dim - 1 - rev).to(x.dtype)
    if axis is not None:
        return (top_values if p.out_max_val else index).movedim(-1, axis)
    rest = (1,) * (max(3, x.dim()) - 3)
    out = torch.stack((index, top_values), dim=1) if p.out_max_val else index.unsqueeze(1)
    return out.reshape(x.shape[0], out.shape[1], k, *rest)


RULES: dict[str, Rule] = {
    "Pooling": Rule(_pooling),
    "SPP": Rule(_spp),
    "BatchNorm": Rule(_batchnorm, _batchnorm_constants),
    "Power": Rule(_power),
    "MVN": Rule(_mvn),
    "Eltwise": Rule(_eltwise),
    "LSTMUnit": Rule(_lstm_unit),
    "RNN": Rule(_recurrent),
    "LSTM": Rule(_recurrent),
    "ArgMax": Rule(_argmax, onnx_only=True),
}
