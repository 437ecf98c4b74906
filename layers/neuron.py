"""Neuron layers (Caffe's NeuronLayer family): one bottom, one top of the same shape, element by element.

Every layer here accepts a bottom of any number of axes (PReLU needs at least 2, for its channel axis) and may
be computed in place by the net.  Backward comes from autograd; where Caffe's backward is not the derivative of
the natural forward (the gradient at a kink, Power's quotient form), the forward is written so that autograd
reproduces Caffe, or a small autograd Function spells Caffe's backward out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from .base import Layer, is_meta, register, shape_str


class NeuronLayer(Layer):
    """Base of the element-wise layers: exactly one bottom and one top."""
    exact_bottoms = exact_tops = 1


@register("ReLU")
class ReLU(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0).

    bottom: any shape.  top: same shape.  Honours relu_param.negative_slope (engine is ignored: cuDNN computes
    the same function).  Backward: dy * (1 if x > 0 else negative_slope), so the gradient at exactly 0 is
    negative_slope, as in Caffe.
    """

    def forward(self, x):
        slope = self.param.relu_param.negative_slope
        # torch's relu and leaky_relu both pass dy only where x > 0 and dy * slope elsewhere, x == 0 included:
        # Caffe's backward exactly.
        return torch.relu(x) if slope == 0 else F.leaky_relu(x, slope)


@register("PReLU")
class PReLU(NeuronLayer):
    """y = max(x, 0) + a_c * min(x, 0), with a learned slope a_c per channel c (axis 1).

    bottom: (N, C, ...), at least 2 axes.  top: same shape.  blobs: [0] slope, shape (C,), or a 0-axis scalar
    () shared by all channels when prelu_param.channel_shared.  Honours prelu_param.filler (default: constant
    0.25) and channel_shared.  Backward: dx = dy * (1 if x > 0 else a_c) (a_c at exactly 0, as in Caffe);
    da_c = sum of dy * x over the elements of channel c with x <= 0.
    """

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            self.fail(f"bottom must have at least 2 axes (N, C, ...), got shape {shape_str(shape)}")
        p = self.param.prelu_param
        slope_shape = () if p.channel_shared else (shape[1],)
        if p.HasField("filler"):
            self.add_blob(slope_shape, p.filler)
        else:
            self.add_blob(slope_shape, constant=0.25)

    def forward(self, x):
        if x.dim() < 2:
            self.fail(f"bottom must have at least 2 axes (N, C, ...), got shape {shape_str(x.shape)}")
        slope = self.blobs[0]
        if self.param.prelu_param.channel_shared:
            if slope.numel() != 1:
                self.fail(f"channel_shared needs a single slope, got a blob of shape {shape_str(slope.shape)}")
            slope = slope.reshape(())
        else:
            channels = x.shape[1]
            if slope.numel() != channels:
                self.fail(f"slope blob has {slope.numel()} values, expected one per channel ({channels}) "
                          f"of the bottom of shape {shape_str(x.shape)}")
            slope = slope.reshape((1, channels) + (1,) * (x.dim() - 2))
        # where() gives Caffe's gradient at 0 (the slope) and da = dy * x where x <= 0.
        return torch.where(x > 0, x, x * slope)


@register("ELU")
class ELU(NeuronLayer):
    """y = x if x > 0 else alpha * (exp(x) - 1).

    bottom: any shape.  top: same shape.  Honours elu_param.alpha.  Backward: dy * (1 if x > 0 else alpha + y),
    i.e. alpha at exactly 0, as in Caffe.
    """

    def forward(self, x):
        alpha = self.param.elu_param.alpha
        # exp of min(x, 0) as Caffe writes it: exp of a large positive x in the unused branch would overflow and
        # turn its (zero) gradient into NaN.
        negative = alpha * (torch.exp(x.clamp(max=0)) - 1)
        return torch.where(x > 0, x, negative)


@register("Sigmoid")
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x)), computed as 0.5 * tanh(0.5 * x) + 0.5 like Caffe's CPU code.

    bottom: any shape.  top: same shape.  No parameters (sigmoid_param.engine is ignored).
    Backward: dy * y * (1 - y).
    """

    def forward(self, x):
        return 0.5 * torch.tanh(0.5 * x) + 0.5


@register("TanH")
class TanH(NeuronLayer):
    """y = tanh(x).  bottom: any shape.  top: same shape.  Backward: dy * (1 - y^2)."""

    def forward(self, x):
        return torch.tanh(x)


class _CaffePower(torch.autograd.Function):
    """y = (shift + scale * x)^power with Caffe's backward formulas.

    Caffe does not differentiate the power directly: it computes dy/dx as diff_scale * y / (shift + scale * x)
    (or power * y / x when shift == 0), which gives NaN where the base is 0 instead of the analytic value, and
    its rounding differs slightly.  Spelling the backward out keeps both identical to Caffe.
    """

    @staticmethod
    def forward(ctx, x, power, scale, shift):
        ctx.constants = (power, scale, shift)
        if power * scale == 0:
            # The input is ignored: the output is a constant and the gradient is 0.
            if power == 0:
                return torch.ones_like(x)
            return torch.full_like(x, shift).pow(power)
        base = x
        if scale != 1:
            base = base * scale
        if shift != 0:
            base = base + shift
        y = base.pow(power) if power != 1 else base
        if y is x:
            y = x.clone()
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        power, scale, shift = ctx.constants
        diff_scale = power * scale
        if diff_scale == 0:
            return torch.zeros_like(dy), None, None, None
        if power == 1:
            return dy * diff_scale, None, None, None
        x, y = ctx.saved_tensors
        if power == 2:
            # d/dx (shift + scale x)^2 = diff_scale * scale * x + diff_scale * shift
            local = x * (diff_scale * scale)
            if shift != 0:
                local = local + diff_scale * shift
        elif shift == 0:
            local = y / x * power
        else:
            base = x
            if scale != 1:
                base = base * scale
            base = base + shift
            local = y / base
            if diff_scale != 1:
                local = local * diff_scale
        return dy * local, None, None, None


@register("Power")
class Power(NeuronLayer):
    """y = (shift + scale * x)^power.

    bottom: any shape.  top: same shape.  Honours power_param.power, scale, shift.  When power * scale == 0
    the input is ignored: y is the constant 1 (power == 0) or shift^power, and the gradient is 0.  Backward as
    Caffe computes it: dx = dy * power * scale * y / (shift + scale * x) (dy * power * y / x when shift == 0,
    dy * scale when power == 1), so a zero base gives NaN where Caffe does.
    """

    def forward(self, x):
        p = self.param.power_param
        return _CaffePower.apply(x, p.power, p.scale, p.shift)


@register("Dropout")
class Dropout(NeuronLayer):
    """TRAIN: y = x * m / (1 - r) with m ~ Bernoulli(1 - r) drawn per element; TEST: y = x.

    bottom: any shape.  top: same shape.  Honours dropout_param.dropout_ratio r (0 <= r < 1) and the layer's
    phase.  Backward: dy * m / (1 - r) in TRAIN, dy in TEST.  The mask comes from torch's RNG (seed it with
    torch.manual_seed), so masks cannot match Caffe's draws one for one.  Differs from Caffe: any number of
    axes is accepted (Caffe's mask blob uses the legacy 4-axis shape and rejects more than 4 axes).
    """

    def setup(self, bottom_shapes):
        ratio = self.param.dropout_param.dropout_ratio
        if not 0 <= ratio < 1:
            self.fail(f"dropout_ratio must be in [0, 1), got {ratio}")

    def forward(self, x):
        if self.phase != caffe_pb2.TRAIN or is_meta(x):
            # A distinct tensor (a view), so that the net can tell the top from the bottom.
            return x.view_as(x)
        ratio = self.param.dropout_param.dropout_ratio
        mask = torch.empty_like(x).bernoulli_(1.0 - ratio)
        return x * mask * (1.0 / (1.0 - ratio))
