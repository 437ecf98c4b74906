"""Normalisation and affine layers: BatchNorm (statistics only, no affine term), Scale and Bias."""
from __future__ import annotations

import torch
from caffelike.proto import caffe_pb2

from .base import Layer, count, is_meta, register, shape_str


# ------------------------------------------------------------------------------------------------------- BatchNorm
@register("BatchNorm")
class BatchNorm(Layer):
    """y = (x - mean_c) / sqrt(var_c + eps), per channel c = axis 1; no scale or shift (follow it with Scale).

    bottom: (N, C, ...), at least 2 axes.  top: same shape.
    blobs (all zero-initialised, never learned): [0] running mean accumulator (C,), [1] running variance
    accumulator (C,), [2] scale factor s (1,).
    Honours batch_norm_param.use_global_stats (default: phase == TEST), moving_average_fraction (maf) and eps.

    Global stats: mean = blob0 / s, var = blob1 / s (both 0 when s == 0); backward dx = dy / sqrt(var + eps).
    Batch stats: mean and biased variance over every axis but 1, the standard BN backward, and the forward
    updates the blobs in place as Caffe does: s = maf * s + 1, blob0 = maf * blob0 + mean,
    blob1 = maf * blob1 + m / (m - 1) * var with m = count / C (factor 1 when m <= 1).  Shape inference on
    meta tensors leaves the blobs alone.

    As in Caffe's LayerSetUp, `param { lr_mult: 0 }` is appended to the layer's ParamSpecs for every blob
    without one, and a given ParamSpec with another lr_mult is an error.
    """
    exact_bottoms = exact_tops = 1

    @property
    def use_global_stats(self) -> bool:
        given = self.optional("batch_norm_param.use_global_stats")
        return given if given is not None else self.phase == caffe_pb2.TEST

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2:
            self.fail(f"bottom must have at least 2 axes (N, C, ...), got shape {shape_str(shape)}")
        channels = shape[1]
        if channels < 1:  # Caffe divides by it (count / (num * channels)) and dies of SIGFPE
            self.fail(f"bottom has {channels} channels (axis 1 of shape {shape_str(shape)}); BatchNorm needs at "
                      "least 1")
        for blob_shape in ((channels,), (channels,), (1,)):
            self.add_blob(blob_shape, constant=0.0).requires_grad_(False)
        # Caffe masks the statistics from the solver through their ParamSpecs, which the net reads after setup.
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add().lr_mult = 0.0
            elif self.param.param[i].lr_mult != 0:
                self.fail(f"BatchNorm parameters have no learning rate: param {i} has lr_mult "
                          f"{self.param.param[i].lr_mult:g}, expected 0 (the blobs are running statistics)")

    def forward(self, x):
        if x.dim() < 2:
            self.fail(f"bottom must have at least 2 axes (N, C, ...), got shape {shape_str(x.shape)}")
        channels = x.shape[1]
        if self.blobs[0].numel() != channels or self.blobs[1].numel() != channels:
            self.fail(f"bottom has {channels} channels (shape {shape_str(x.shape)}) but the statistics blobs "
                      f"have shapes {shape_str(self.blobs[0].shape)} and {shape_str(self.blobs[1].shape)}")
        per_channel = (1, channels) + (1,) * (x.dim() - 2)
        if self.use_global_stats:
            # Statistics are constants: Caffe never back-propagates into them.
            factor = self.blobs[2].detach().reshape(-1)[0]
            factor = torch.where(factor == 0, torch.zeros_like(factor), 1 / factor)
            mean = self.blobs[0].detach() * factor
            var = self.blobs[1].detach() * factor
            centered = x - mean.reshape(per_channel)
        else:
            reduce_dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=reduce_dims)
            centered = x - mean.reshape(per_channel)
            var = centered.square().mean(dim=reduce_dims)
            if not is_meta(x):
                self._update_running_stats(mean.detach(), var.detach(), count(x.shape) // max(channels, 1))
        return centered / torch.sqrt(var + self.param.batch_norm_param.eps).reshape(per_channel)

    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        maf = self.param.batch_norm_param.moving_average_fraction
        bias_correction = m / (m - 1) if m > 1 else 1.0
        with torch.no_grad():
            mean_acc, var_acc, scale_factor = self.blobs[0], self.blobs[1], self.blobs[2]
            scale_factor.mul_(maf).add_(1)
            mean_acc.mul_(maf).add_(mean.to(mean_acc).reshape(mean_acc.shape))
            var_acc.mul_(maf).add_(var.to(var_acc).reshape(var_acc.shape), alpha=bias_correction)


# ------------------------------------------------------------------------------------------------ Scale and Bias
def _broadcast(layer: Layer, x: torch.Tensor, operand: torch.Tensor, axis: int, what: str) -> torch.Tensor:
    """`operand` shaped to multiply or add onto `x`, its axes matching x's axes axis .. axis + operand.dim() - 1.

    A 0-axis operand (a scalar) applies everywhere and ignores `axis`, as Caffe does."""
    k = operand.dim()
    start = 0 if k == 0 else layer.canonical_axis(axis, x.dim())
    expected = tuple(x.shape[start:start + k])
    if start + k > x.dim() or tuple(operand.shape) != expected:
        layer.fail(f"{what} of shape {shape_str(operand.shape)} does not fit the bottom of shape "
                   f"{shape_str(x.shape)} from axis {start}: expected shape {shape_str(expected)}"
                   + (" (it extends past the bottom's last axis)" if start + k > x.dim() else ""))
    return operand.reshape((1,) * start + expected + (1,) * (x.dim() - start - k))


def _learned_shape(layer: Layer, shape: tuple[int, ...], axis: int, num_axes: int, what: str) -> tuple[int, ...]:
    """Shape of a learned scale or bias blob: shape[axis : axis + num_axes], num_axes -1 meaning to the end."""
    start = layer.canonical_axis(axis, len(shape))
    if num_axes < -1:
        layer.fail(f"num_axes must be non-negative, or -1 to extend to the end of bottom[0], got {num_axes}")
    if num_axes >= 0 and start + num_axes > len(shape):
        layer.fail(f"{what} blob's shape extends past bottom[0]'s shape {shape_str(shape)} when applied "
                   f"from axis {start} over {num_axes} axes")
    return tuple(shape[start:] if num_axes == -1 else shape[start:start + num_axes])


def _check_second_bottom(layer: Layer, bottom_shapes, axis: int, what: str) -> None:
    """The 2nd bottom must match bottom[0]'s shape over its own number of axes from `axis`."""
    shape, operand = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
    start = 0 if not operand else layer.canonical_axis(axis, len(shape))
    if shape[start:start + len(operand)] != operand:
        layer.fail(f"bottom[1] ({what}) of shape {shape_str(operand)} does not fit bottom[0] of shape "
                   f"{shape_str(shape)} from axis {start}: expected shape "
                   f"{shape_str(shape[start:start + len(operand)])}")


@register("Scale")
class Scale(Layer):
    """y = x * s (+ b), s and b broadcast over the axes of x that follow their own.

    bottom[0]: x, any shape.  bottom[1] (optional): s, shaped like x.shape[axis : axis + s.dim()].
    top: shape of x.  blobs: with 1 bottom [scale, bias], with 2 bottoms [bias]; the bias only if bias_term.
    Honours scale_param.axis (default 1), num_axes (1; -1 = to the last axis; 0 = a scalar, which applies
    everywhere), filler (default constant 1), bias_term and bias_filler (default constant 0).  The learned
    scale has shape x.shape[axis : axis + num_axes]; the bias has the shape of the scale (blob or bottom[1]).
    Backward: dx = dy * s, ds = dy * x summed over the broadcast axes, db = dy summed likewise.
    """
    min_bottoms, max_bottoms, exact_tops = 1, 2, 1

    def setup(self, bottom_shapes):
        p = self.param.scale_param
        if len(bottom_shapes) == 2:
            _check_second_bottom(self, bottom_shapes, p.axis, "scale")
            scale_axes = len(bottom_shapes[1])
        else:
            shape = _learned_shape(self, tuple(bottom_shapes[0]), p.axis, p.num_axes, "scale")
            if p.HasField("filler"):
                self.add_blob(shape, p.filler)
            else:
                self.add_blob(shape, constant=1.0)
            scale_axes = len(shape)
        if p.bias_term:
            # Caffe builds an inner Bias layer over bottom[0] with as many axes as the scale.
            self.add_blob(_learned_shape(self, tuple(bottom_shapes[0]), p.axis, scale_axes, "bias"),
                          p.bias_filler)

    def forward(self, x, *scale_bottom):
        p = self.param.scale_param
        scale = scale_bottom[0] if scale_bottom else self.blobs[0]
        y = x * _broadcast(self, x, scale, p.axis, "scale")
        if p.bias_term:
            # The bias is the last blob: [scale, bias] with 1 bottom, [bias] with 2.
            y = y + _broadcast(self, x, self.blobs[-1], p.axis, "bias")
        return y


@register("Bias")
class Bias(Layer):
    """y = x + b, b broadcast over the axes of x that follow its own.

    bottom[0]: x, any shape.  bottom[1] (optional): b, shaped like x.shape[axis : axis + b.dim()].
    top: shape of x.  blobs: [bias] with 1 bottom, none with 2.
    Honours bias_param.axis (default 1), num_axes (1; -1 = to the last axis; 0 = a scalar) and filler
    (default constant 0).  Backward: dx = dy, db = dy summed over the broadcast axes.
    """
    min_bottoms, max_bottoms, exact_tops = 1, 2, 1

    def setup(self, bottom_shapes):
        p = self.param.bias_param
        if len(bottom_shapes) == 2:
            _check_second_bottom(self, bottom_shapes, p.axis, "bias")
        else:
            self.add_blob(_learned_shape(self, tuple(bottom_shapes[0]), p.axis, p.num_axes, "bias"), p.filler)

    def forward(self, x, *bias_bottom):
        bias = bias_bottom[0] if bias_bottom else self.blobs[0]
        return x + _broadcast(self, x, bias, self.param.bias_param.axis, "bias")
