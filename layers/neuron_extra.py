"""More neuron layers: AbsVal, BNLL, Exp, Log, Threshold, Clip, Swish.

Caffe's sources: absval_layer.cpp, bnll_layer.cpp, exp_layer.cpp, log_layer.cpp, threshold_layer.cpp,
clip_layer.cpp, swish_layer.cpp.  Each is one bottom to one top of the same shape, any number of axes, and may
run in place.  Backward comes from autograd on a forward written the way Caffe computes it; where Caffe's
backward is not autograd's (the kinks of Clip, overflow in BNLL's unused branch), the forward says why.
"""
from __future__ import annotations

import math

import torch

from .base import register
from .neuron import NeuronLayer


@register("AbsVal")
class AbsVal(NeuronLayer):
    """y = |x|.  bottom: any shape.  top: same shape.  Backward: dy * sign(x), 0 at x == 0 as in Caffe.
    Not in place: Caffe's LayerSetUp refuses top == bottom (its backward reads the bottom's data)."""
    forbids_in_place = True

    def forward(self, x):
        return x.abs()


@register("BNLL")
class BNLL(NeuronLayer):
    """Binomial normal log likelihood (softplus): y = x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise.

    bottom: any shape.  top: same shape.  No parameters.  Backward: dy * sigmoid(x) (Caffe caps the exponent at
    50, where the sigmoid is already 1 in float).
    """

    def forward(self, x):
        # log(1 + exp(.)) rather than log1p, as Caffe writes it (the two round differently for large |x|); each
        # branch only sees its own sign so that the unused one cannot overflow and turn a zero gradient into NaN.
        positive = x + torch.log(1 + torch.exp(-x.clamp(min=0)))
        negative = torch.log(1 + torch.exp(x.clamp(max=0)))
        return torch.where(x > 0, positive, negative)


def _base(layer, msg) -> float:
    """ln(base) for Exp and Log: base -1 means e; any other base must be positive."""
    if msg.base == -1:
        return 1.0
    if not msg.base > 0:
        layer.fail(f"base must be strictly positive (or -1 for e), got {msg.base}")
    return math.log(msg.base)


@register("Exp")
class Exp(NeuronLayer):
    """y = base^(shift + scale * x), computed as Caffe does: base^shift * exp(ln(base) * scale * x).

    bottom: any shape.  top: same shape.  Honours exp_param.base (-1 = e, else > 0), scale, shift.
    Backward: dy * y * ln(base) * scale.
    """

    def setup(self, bottom_shapes):
        _base(self, self.param.exp_param)

    def forward(self, x):
        p = self.param.exp_param
        log_base = _base(self, p)
        inner = log_base * p.scale
        outer = 1.0 if p.shift == 0 else math.exp(log_base * p.shift) if p.base == -1 else p.base ** p.shift
        y = torch.exp(x * inner) if inner != 1 else torch.exp(x)
        return y * outer if outer != 1 else y


@register("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x) = ln(shift + scale * x) / ln(base).

    bottom: any shape.  top: same shape.  Honours log_param.base (-1 = e, else > 0), scale, shift.
    Backward: dy * scale / ln(base) / (shift + scale * x).  Non-positive arguments give NaN / -inf as in Caffe.
    """

    def setup(self, bottom_shapes):
        _base(self, self.param.log_param)

    def forward(self, x):
        p = self.param.log_param
        inv_log_base = 1.0 / _base(self, p)
        arg = x
        if p.scale != 1:
            arg = arg * p.scale
        if p.shift != 0:
            arg = arg + p.shift
        y = torch.log(arg)
        return y * inv_log_base if inv_log_base != 1 else y


@register("Threshold")
class Threshold(NeuronLayer):
    """y = 1 if x > threshold else 0 (strictly greater).

    bottom: any shape.  top: same shape, in the bottom's dtype.  Honours threshold_param.threshold.
    No backward in Caffe (its Backward is NOT_IMPLEMENTED): the top carries no gradient, and a net that asks for
    the bottom's gradient (a learnable layer below, propagate_down or force_backward) is refused at build time.
    """
    backward_free = True
    backward_not_implemented = True

    def forward(self, x):
        return (x > self.param.threshold_param.threshold).to(x.dtype)


@register("Clip")
class Clip(NeuronLayer):
    """y = max(min, min(x, max)).

    bottom: any shape.  top: same shape.  Honours clip_param.min and clip_param.max (both required).
    Backward: dy where min <= x <= max (bounds included), 0 elsewhere; with min > max every output is min and
    no gradient passes, as in Caffe.
    """

    def setup(self, bottom_shapes):
        p = self.param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            self.fail(f"clip_param.{' and clip_param.'.join(missing)} must be given (required fields)")

    def forward(self, x):
        p = self.param.clip_param
        lo, hi = float(p.min), float(p.max)
        clipped = x.clamp(max=hi).clamp(min=lo)
        # The mask spells out Caffe's inclusive gradient rule independently of how torch's clamp treats its
        # boundaries; inside the mask the value is x itself.
        inside = (x >= lo) & (x <= hi)
        return torch.where(inside, x, clipped.detach())


@register("Swish")
class Swish(NeuronLayer):
    """y = x * sigmoid(beta * x), the sigmoid computed as 0.5 * tanh(0.5 t) + 0.5 like Caffe.

    bottom: any shape.  top: same shape.  Honours swish_param.beta.
    Backward: dy * (beta * y + sigmoid(beta x) * (1 - beta * y)), the derivative autograd computes.
    """

    def forward(self, x):
        beta = self.param.swish_param.beta
        t = x * beta if beta != 1 else x
        return x * (0.5 * torch.tanh(0.5 * t) + 0.5)
