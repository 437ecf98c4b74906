"""Loss layers and Accuracy.

Caffe's sources: loss_layer.cpp, softmax_loss_layer.cpp, euclidean_loss_layer.cpp, accuracy_layer.cpp.
A loss layer returns its loss as a 0-axis tensor; the net seeds backward with the loss weight, which is what
Caffe keeps in the top's diff, so no layer here multiplies by it.
"""
from __future__ import annotations

import torch
from caffelike.proto import caffe_pb2

from .base import Layer, count, is_compiling, is_meta, register, shape_str

_NORM = caffe_pb2.LossParameter
# Caffe clamps the probability at FLT_MIN before the log, also when it computes in double.
_FLT_MIN = torch.finfo(torch.float32).tiny


def _check_batch(layer: Layer, x: torch.Tensor, label: torch.Tensor) -> None:
    """LossLayer::Reshape: both bottoms have a first axis, of one size."""
    if x.dim() == 0 or label.dim() == 0 or x.shape[0] != label.shape[0]:
        layer.fail(f"the data and label should have the same first dimension: bottom 0 is {shape_str(x.shape)}, "
                   f"bottom 1 is {shape_str(label.shape)}")


def _split_at_axis(layer: Layer, x: torch.Tensor, label: torch.Tensor, axis: int) -> tuple[int, int, int, int]:
    """(axis, outer, classes, inner) of scores `x` with classes along `axis`; the labels must count outer·inner."""
    axis = layer.canonical_axis(axis, x.dim())
    outer, inner = count(x.shape, 0, axis), count(x.shape, axis + 1)
    if outer * inner != label.numel():
        layer.fail(f"number of labels must match number of predictions: with axis {axis} and scores "
                   f"{shape_str(x.shape)} the label count must be {outer * inner}, got {label.numel()} "
                   f"(label {shape_str(label.shape)}); label values are integers in [0, {x.shape[axis]})")
    return axis, outer, x.shape[axis], inner


def _labels(layer: Layer, label: torch.Tensor, outer: int, inner: int, classes: int,
            ignore: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels as integers (outer, inner), with ignored positions replaced by 0 so that they can index,
    and the mask of positions that count.  Out-of-range labels fail here; Caffe only checks them in debug
    builds, and reads out of bounds otherwise."""
    lab = label.detach().reshape(outer, inner).long()   # float -> int truncates toward 0, like static_cast<int>
    valid = lab != ignore if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
    # Under torch.compile the check would split the graph at a host sync every iteration; there the compiled
    # gather's own bounds assertion stops an out-of-range label instead (without the layer's name).
    if not is_meta(lab) and not is_compiling():
        bad = valid & ((lab < 0) | (lab >= classes))
        if bool(bad.any()):
            value = int(lab[bad][0])
            layer.fail(f"label value {value} is outside [0, {classes})"
                       + (f" and is not the ignore_label {ignore}" if ignore is not None else ""))
    return torch.where(valid, lab, torch.zeros_like(lab)), valid


@register("Accuracy")
class Accuracy(Layer):
    """Fraction of positions whose true class is among the top_k scores.

    A position is correct when fewer than top_k other classes score >= the true class (ties count against).
    bottom 0: scores, classes along `axis`, outer = count(0, axis), inner = count(axis + 1).
    bottom 1: labels, outer·inner integer values (any shape).
    top 0: 0-axis scalar = correct / counted (0 when nothing is counted).
    top 1 (optional): (C,) per-class accuracy, 0 for a class that never occurs.
    accuracy_param: top_k, axis, ignore_label (positions with that label are not counted).
    No gradient to either bottom (Caffe has no backward).
    """
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    backward_free = True
    backward_not_implemented = True  # asked only through propagate_down: force_backward skips it (below)

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def forward(self, x, label):
        p = self.param.accuracy_param
        x, label = x.detach(), label.detach()
        axis, outer, classes, inner = _split_at_axis(self, x, label, p.axis)
        if p.top_k > classes:
            self.fail(f"top_k must be less than or equal to the number of classes: top_k {p.top_k}, "
                      f"{classes} classes")
        per_class = self.num_tops > 1
        ignore = self.optional("accuracy_param.ignore_label")
        if is_meta(x):
            acc = x.new_empty(())
            return (acc, x.new_empty((classes,))) if per_class else acc
        lab, valid = _labels(self, label, outer, inner, classes, ignore)
        scores = x.reshape(outer, classes, inner)
        true_score = scores.gather(1, lab.unsqueeze(1))
        # The true class is among the scores >= itself, so "fewer than top_k others" is "at most top_k".
        # (A NaN true score compares false everywhere and counts as correct, as in Caffe's loop.)
        at_least = (scores >= true_score).sum(1)
        correct = valid & (at_least <= p.top_k)
        n_valid = valid.sum()
        acc = torch.where(n_valid > 0, correct.sum().to(x.dtype) / n_valid.clamp_min(1).to(x.dtype),
                          x.new_zeros(()))
        if not per_class:
            return acc
        # Ignored positions hold label 0 in `lab` and add 0 there.
        seen = x.new_zeros(classes).index_add_(0, lab.reshape(-1), valid.reshape(-1).to(x.dtype))
        hits = x.new_zeros(classes).index_add_(0, lab.reshape(-1), correct.reshape(-1).to(x.dtype))
        return acc, torch.where(seen > 0, hits / seen.clamp_min(1), x.new_zeros(()))


class _SoftmaxLoss(torch.autograd.Function):
    """L = -Σ_valid log(max(p[label], FLT_MIN)) / normalizer with Caffe's backward, which autograd of the
    clamped log does not give: dx = (p - onehot(label))·(dL / normalizer) everywhere, the clamp included,
    and 0 at ignored positions.  Returns (loss, p); p carries no gradient, as Caffe's backward never reads
    the diff of the probability top."""

    @staticmethod
    def forward(ctx, x3, lab, valid, normalizer):
        prob = torch.softmax(x3, 1)
        p_true = prob.gather(1, lab.unsqueeze(1)).squeeze(1)
        logp = torch.log(p_true.clamp_min(_FLT_MIN))
        loss = -torch.where(valid, logp, torch.zeros_like(logp)).sum() / normalizer
        ctx.save_for_backward(prob, lab, valid, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, dloss, dprob):
        prob, lab, valid, normalizer = ctx.saved_tensors
        grad = prob.scatter_add(1, lab.unsqueeze(1), -valid.to(prob.dtype).unsqueeze(1))
        grad = torch.where(valid.unsqueeze(1), grad, torch.zeros_like(grad))
        # Caffe scales by one scalar, loss_weight / normalizer, computed first.
        return grad * (dloss / normalizer), None, None, None


def refuse_inner_softmax_loss_weights(layer: Layer) -> None:
    """SoftmaxWithLoss and InfogainLoss build their inner Softmax from a copy of their own LayerParameter, and that
    Softmax, with its one top, then checks the copied loss_weight values: more than one aborts Caffe.  With a
    second (probability) top, one value fails the outer layer's check instead, so Caffe can build neither."""
    n = len(layer.param.loss_weight)
    if n > 1:
        layer.fail(f"loss_weight is given {n} times, but Caffe builds this layer's inner Softmax (one top) from the "
                   "same parameters and refuses more than one loss_weight there; Caffe cannot build this layer "
                   "with a probability top at all: add a separate Softmax layer for the probabilities")


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """Multinomial logistic loss of the softmax of the scores.

    p = softmax(x, axis);  L = -Σ_{non-ignored} log(max(p[label], FLT_MIN)) / normalizer.
    dx = (p - onehot(label)) / normalizer, also where the clamp is active; 0 at ignored positions.
    bottom 0: scores, classes along softmax_param.axis.  bottom 1: outer·inner integer labels (no gradient).
    top 0: 0-axis loss.  top 1 (optional): p, shaped like bottom 0, without gradient (Caffe ignores its diff).
    softmax_param: axis.  loss_param: ignore_label, normalization (FULL = outer·inner, VALID = non-ignored
    positions, BATCH_SIZE = outer, NONE = 1; clamped to >= 1), and the deprecated normalize (used only when
    normalization is unset: true -> VALID, false -> BATCH_SIZE).
    """
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    is_loss = True
    no_gradient_to = {1: "its label input"}

    def setup(self, bottom_shapes):
        refuse_inner_softmax_loss_weights(self)

    def normalization(self) -> int:
        normalize = self.optional("loss_param.normalize")
        if self.optional("loss_param.normalization") is None and normalize is not None:
            return _NORM.VALID if normalize else _NORM.BATCH_SIZE
        return self.param.loss_param.normalization

    def forward(self, x, label):
        lp = self.param.loss_param
        _check_batch(self, x, label)
        axis, outer, classes, inner = _split_at_axis(self, x, label, self.param.softmax_param.axis)
        lab, valid = _labels(self, label, outer, inner, classes, self.optional("loss_param.ignore_label"))
        mode = self.normalization()
        if mode == _NORM.VALID:
            normalizer = valid.sum().to(x.dtype)
        else:
            n = {_NORM.FULL: outer * inner, _NORM.BATCH_SIZE: outer, _NORM.NONE: 1}[mode]
            normalizer = torch.tensor(float(n), dtype=x.dtype, device=x.device)
        normalizer = normalizer.clamp_min(1.0)
        loss, prob = _SoftmaxLoss.apply(x.reshape(outer, classes, inner), lab, valid, normalizer)
        if self.num_tops > 1:
            return loss, prob.reshape(x.shape)
        return loss


@register("EuclideanLoss")
class EuclideanLoss(Layer):
    """L = Σ (a - b)² / N / 2, N = a.shape[0].  da = (a - b)/N, db = -(a - b)/N (times the loss weight).

    bottom 0, 1: a and b, same first axis and same count(1).  top: 0-axis loss.
    Both bottoms get a gradient, also under force_backward (Caffe's AllowForceBackward is true for both).
    """
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return True

    def forward(self, a, b):
        _check_batch(self, a, b)
        if count(a.shape, 1) != count(b.shape, 1):
            self.fail(f"inputs must have the same dimension: count(1) of bottom 0 {shape_str(a.shape)} is "
                      f"{count(a.shape, 1)}, of bottom 1 {shape_str(b.shape)} is {count(b.shape, 1)}")
        d = a - b.reshape(a.shape)
        # Caffe divides by N, then by 2: keep its order for its rounding.  A tensor divisor, as a Python
        # number may be turned into a multiplication by its reciprocal on some devices.
        n = torch.tensor(float(a.shape[0]), dtype=a.dtype, device=a.device)
        return (d * d).sum() / n / 2
