"""The other loss layers: SigmoidCrossEntropyLoss, HingeLoss, ContrastiveLoss, InfogainLoss,
MultinomialLogisticLoss.

Caffe's sources: sigmoid_cross_entropy_loss_layer.cpp, hinge_loss_layer.cpp, contrastive_loss_layer.cpp,
infogain_loss_layer.cpp, multinomial_logistic_loss_layer.cpp.  As in loss.py, a layer returns its loss as a
0-axis tensor and the net applies the loss weight.  Each layer has its own autograd.Function because Caffe's
backward is a formula of its own, not the derivative of the forward it computes (clamped logs, the +1e-4 of
ContrastiveLoss, the sign of the hinge at its kink); the docstrings name each difference.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from caffelike.proto import caffe_pb2

from caffelike.format.blobproto import blobproto_to_array

from .base import Layer, count, is_meta, register, shape_str
from .loss import _NORM, _check_batch, _labels, _split_at_axis, refuse_inner_softmax_loss_weights

# Caffe's kLOG_THRESHOLD is a float constant, so a double net clamps at float32(1e-20) too.
_LOG_THRESHOLD = float(np.float32(1e-20))


def _normalizer(mode: int, valid: torch.Tensor, outer: int, inner: int, like: torch.Tensor) -> torch.Tensor:
    """LossLayer's get_normalizer: FULL = outer·inner, VALID = non-ignored positions, BATCH_SIZE = outer,
    NONE = 1; at least 1.  A tensor, so that VALID stays data-independent on meta tensors."""
    if mode == _NORM.VALID:
        n = valid.sum().to(like.dtype)
    else:
        n = torch.tensor(float({_NORM.FULL: outer * inner, _NORM.BATCH_SIZE: outer, _NORM.NONE: 1}[mode]),
                         dtype=like.dtype, device=like.device)
    return n.clamp_min(1.0)


def _legacy_shape(layer: Layer, x: torch.Tensor, what: str) -> tuple[int, int, int, int]:
    """Blob::num/channels/height/width: missing trailing axes count as 1; more than 4 axes is an error."""
    if x.dim() > 4:
        layer.fail(f"{what} {shape_str(x.shape)} has {x.dim()} axes; this layer reads it through Caffe's legacy "
                   f"(num, channels, height, width) accessors, which allow at most 4")
    return tuple(int(d) for d in x.shape) + (1,) * (4 - x.dim())


# ------------------------------------------------------------------------------------------ SigmoidCrossEntropyLoss
class _SigmoidCrossEntropy(torch.autograd.Function):
    """Forward: Caffe's stable sum; backward: (σ(x) - t)·(dL / normalizer), 0 where ignored, with σ computed as
    Caffe's SigmoidLayer does (0.5·tanh(0.5x) + 0.5) rather than as the derivative of the log term."""

    @staticmethod
    def forward(ctx, x, t, valid, normalizer):
        pos = (x >= 0).to(x.dtype)
        terms = x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos))
        loss = -torch.where(valid, terms, torch.zeros_like(terms)).sum() / normalizer
        ctx.save_for_backward(x, t, valid, normalizer)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        x, t, valid, normalizer = ctx.saved_tensors
        grad = (0.5 * torch.tanh(0.5 * x) + 0.5) - t
        grad = torch.where(valid, grad, torch.zeros_like(grad))
        return grad * (dloss / normalizer), None, None, None


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(Layer):
    """Cross-entropy of sigmoid(x) against targets t in [0, 1] (soft targets allowed).

    L = -Σ_{non-ignored} [x·(t - [x≥0]) - log(1 + exp(x - 2x·[x≥0]))] / normalizer.
    dx = (σ(x) - t) / normalizer, 0 at ignored positions.
    bottom 0: scores x, shape (N, ...).  bottom 1: targets, same count as x (no gradient).  top: 0-axis loss.
    loss_param: ignore_label (compared with int(t), truncated toward 0), normalization (outer = N,
    inner = count(1)); when normalization is unset the deprecated normalize decides (true -> VALID,
    false -> BATCH_SIZE) and otherwise the default is BATCH_SIZE, not the proto's VALID, as in Caffe.
    """
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    no_gradient_to = {1: "its target input"}

    def normalization(self) -> int:
        normalization = self.optional("loss_param.normalization")
        if normalization is not None:
            return normalization
        normalize = self.optional("loss_param.normalize")
        if normalize is not None:
            return _NORM.VALID if normalize else _NORM.BATCH_SIZE
        return _NORM.BATCH_SIZE

    def forward(self, x, target):
        lp = self.param.loss_param
        _check_batch(self, x, target)
        if x.numel() != target.numel():
            self.fail(f"inputs must have the same count: bottom 0 {shape_str(x.shape)} has {x.numel()} values, "
                      f"bottom 1 {shape_str(target.shape)} has {target.numel()}")
        t = target.detach().reshape(x.shape).to(x.dtype)
        ignore = self.optional("loss_param.ignore_label")
        if ignore is not None:
            valid = t.long() != ignore    # static_cast<int>: truncation toward 0
        else:
            valid = torch.ones_like(t, dtype=torch.bool)
        normalizer = _normalizer(self.normalization(), valid, x.shape[0], count(x.shape, 1), x)
        return _SigmoidCrossEntropy.apply(x, t, valid, normalizer)


# ------------------------------------------------------------------------------------------------------ HingeLoss
class _Hinge(torch.autograd.Function):
    """m = max(0, 1 + s·x) with s = -1 at the label and +1 elsewhere.  L1: Σm/N, dx = sign(s·m)/N;
    L2: Σm²/N, dx = 2·s·m/N.  The sign is Caffe's caffe_cpu_sign, 0 at m = 0: autograd of a clamp would let
    the gradient through at the kink 1 + s·x = 0."""

    @staticmethod
    def forward(ctx, x2, lab, squared):
        s = torch.ones_like(x2).scatter(1, lab.unsqueeze(1), -1.0)
        m = (1 + s * x2).clamp_min(0)
        num = torch.tensor(float(x2.shape[0]), dtype=x2.dtype, device=x2.device)
        loss = ((m * m).sum() if squared else m.sum()) / num
        ctx.squared = squared
        ctx.save_for_backward(s * m, num)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        signed, num = ctx.saved_tensors
        if ctx.squared:
            return signed * (dloss * 2 / num), None, None
        return torch.sign(signed) * (dloss / num), None, None


@register("HingeLoss")
class HingeLoss(Layer):
    """One-versus-all hinge loss for multi-class SVMs.

    With N = shape(0) and D = count(1) scores per sample, s_nk = -1 for k = label_n and +1 otherwise:
    m_nk = max(0, 1 + s_nk·x_nk);  L1: L = Σ m / N;  L2: L = Σ m² / N.
    dx = s·[m > 0] / N (L1) or 2·s·m / N (L2).
    bottom 0: scores (N, ...).  bottom 1: N integer labels in [0, D) (no gradient).  top: 0-axis loss.
    hinge_loss_param: norm (L1 default, L2).
    Difference from Caffe: the label blob must hold exactly N values and each must be in [0, D); Caffe reads
    the first N values and indexes out of range without a check.
    """
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    no_gradient_to = {1: "its label input"}

    def forward(self, x, label):
        _check_batch(self, x, label)
        num, dim = x.shape[0], count(x.shape, 1)
        if label.numel() != num:
            self.fail(f"needs one label per sample: bottom 0 {shape_str(x.shape)} has {num} samples, "
                      f"bottom 1 {shape_str(label.shape)} holds {label.numel()} values")
        lab, _ = _labels(self, label, num, 1, dim, None)
        squared = self.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        return _Hinge.apply(x.reshape(num, dim), lab.reshape(num), squared)


# ------------------------------------------------------------------------------------------------ ContrastiveLoss
class _Contrastive(torch.autograd.Function):
    """Caffe's forward and backward of the contrastive loss.  For a dissimilar pair inside the margin the
    gradient is -(margin - d)/(d + 1e-4)·(a - b)/N: the 1e-4 (which keeps d = 0 finite) makes it differ from
    the true derivative, so autograd cannot give it.  Legacy: -(a - b)/N while margin - d² > 0."""

    @staticmethod
    def forward(ctx, a2, b2, similar, margin, legacy):
        diff = a2 - b2
        dist_sq = (diff * diff).sum(1)
        if legacy:
            apart = (margin - dist_sq).clamp_min(0)
        else:
            gap = (margin - torch.sqrt(dist_sq)).clamp_min(0)
            apart = gap * gap
        num = torch.tensor(float(a2.shape[0]), dtype=a2.dtype, device=a2.device)
        loss = torch.where(similar, dist_sq, apart).sum() / num / 2
        ctx.margin, ctx.legacy = margin, legacy
        ctx.save_for_backward(diff, dist_sq, similar, num)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        diff, dist_sq, similar, num = ctx.saved_tensors
        alpha = dloss / num
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha.expand_as(mdist)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = torch.where(similar, alpha.expand_as(mdist), torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        grad = coef.unsqueeze(1) * diff
        return grad, -grad, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(Layer):
    """Contrastive loss of pairs (a_n, b_n) with similarity y_n (Hadsell, Chopra & LeCun 2006).

    d² = ‖a_n - b_n‖²;  L = 1/(2N) Σ_n [similar: d²;  dissimilar: max(margin - d, 0)²]
    (legacy_version: max(margin - d², 0) for dissimilar pairs).  A pair is similar when int(y_n) != 0.
    da = -db = (a - b)/N for similar pairs; -(margin - d)/(d + 1e-4)·(a - b)/N for dissimilar pairs with
    margin - d > 0 (legacy: -(a - b)/N with margin - d² > 0), 0 otherwise.
    bottom 0, 1: a and b, (N, C) or (N, C, 1, 1).  bottom 2: y, N values, shape (N,) or (N, 1, 1, 1)
    (no gradient, also under force_backward).  top: 0-axis loss.
    contrastive_loss_param: margin, legacy_version.
    Difference from Caffe: y must hold exactly N values (Caffe reads past a shorter blob).
    """
    exact_bottoms = 3
    exact_tops = 1
    is_loss = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def forward(self, a, b, y):
        _check_batch(self, a, b)
        sa, sb, sy = (_legacy_shape(self, t, f"bottom {i}") for i, t in enumerate((a, b, y)))
        if sa[1] != sb[1]:
            self.fail(f"a and b must have the same channels: bottom 0 is {shape_str(a.shape)}, "
                      f"bottom 1 is {shape_str(b.shape)}")
        for i, s in ((0, sa), (1, sb)):
            if s[2] != 1 or s[3] != 1:
                self.fail(f"bottom {i} must be (N, C) or (N, C, 1, 1), got {shape_str(s)}")
        if sy[1:] != (1, 1, 1) or sy[0] != sa[0]:
            self.fail(f"the similarity bottom 2 must hold one value per pair, shape ({sa[0]},) or "
                      f"({sa[0]}, 1, 1, 1), got {shape_str(y.shape)}")
        p = self.param.contrastive_loss_param
        similar = y.detach().reshape(-1).long() != 0      # static_cast<int>(y)
        return _Contrastive.apply(a.reshape(sa[0], sa[1]), b.reshape(sb[0], sb[1]), similar, float(p.margin),
                                  bool(p.legacy_version))


# --------------------------------------------------------------------------------------------------- InfogainLoss
class _Infogain(torch.autograd.Function):
    """L = -Σ_valid Σ_l H[label, l]·log(max(p_l, 1e-20)) / normalizer, p = softmax(x);
    dx_l = (p_l·Σ_k H[label, k] - H[label, l])·(dL / normalizer), 0 at ignored positions: Caffe's formula,
    which ignores the clamp (autograd of the clamped log would be 0 below 1e-20).  Returns (loss, p); p
    carries no gradient, as Caffe's backward never reads the probability top's diff."""

    @staticmethod
    def forward(ctx, x3, lab, valid, h, normalizer):
        prob = torch.softmax(x3, 1)
        rows = h[lab].permute(0, 2, 1)                   # (outer, C, inner): H[label] at each position
        per_position = (rows * torch.log(prob.clamp_min(_LOG_THRESHOLD))).sum(1)
        loss = -torch.where(valid, per_position, torch.zeros_like(per_position)).sum() / normalizer
        ctx.save_for_backward(prob, lab, valid, h, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(ctx, dloss, dprob):
        prob, lab, valid, h, normalizer = ctx.saved_tensors
        grad = prob * h.sum(1)[lab].unsqueeze(1) - h[lab].permute(0, 2, 1)
        grad = torch.where(valid.unsqueeze(1), grad, torch.zeros_like(grad))
        return grad * (dloss / normalizer), None, None, None, None


@register("InfogainLoss")
class InfogainLoss(Layer):
    """Infogain loss: the multinomial logistic loss of softmax(x) weighted by an information-gain matrix H.

    p = softmax(x, axis);  L = -Σ_{non-ignored} Σ_l H[label, l]·log(max(p_l, 1e-20)) / normalizer.
    dx_l = (p_l·Σ_k H[label, k] - H[label, l]) / normalizer (the clamp is not differentiated, as in Caffe).
    bottom 0: scores, C classes along infogain_loss_param.axis.  bottom 1: outer·inner integer labels.
    bottom 2 (optional): H, any shape with C² values (row = true label); otherwise H is read at setup from the
    BlobProto file infogain_loss_param.source (relative to the working directory).  Neither labels nor H get
    a gradient: asking for one (propagate_down, or force_backward reaching H) is refused as Caffe's Backward
    aborts.
    top 0: 0-axis loss.  top 1 (optional): p, shaped like bottom 0, without gradient.
    loss_param: ignore_label, normalization (default VALID).  Setting the deprecated normalize is an error,
    as in Caffe.
    """
    min_bottoms = 2
    max_bottoms = 3
    min_tops = 1
    max_tops = 2
    is_loss = True

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.register_buffer("infogain", None, persistent=False)

    no_gradient_to = {1: "its label input", 2: "its infogain matrix H"}

    def setup(self, bottom_shapes):
        refuse_inner_softmax_loss_weights(self)
        if self.param.loss_param.HasField("normalize"):
            self.fail('loss_param.normalize is deprecated and not accepted by InfogainLoss; use "normalization"')
        if len(bottom_shapes) >= 3:
            return
        source = self.param.infogain_loss_param.source
        if not self.param.infogain_loss_param.HasField("source"):
            self.fail("Infogain matrix source must be specified (infogain_loss_param.source), or given as "
                      "bottom 2")
        try:
            with open(source, "rb") as f:
                blob = caffe_pb2.BlobProto.FromString(f.read())
        except OSError as e:
            self.fail(f"cannot read the infogain matrix {source!r} ({e.strerror or e}; relative paths are "
                      f"resolved against the working directory: {os.path.abspath(source)})")
        except Exception as e:  # a file that is not a BlobProto
            self.fail(f"the infogain matrix {source!r} is not a binary BlobProto: {e}")
        try:
            values = blobproto_to_array(blob)
        except Exception as e:
            self.fail(f"the infogain matrix {source!r}: {e}")
        self.infogain = torch.from_numpy(values.reshape(-1).astype(np.float32))

    def forward(self, x, label, h=None):
        lp = self.param.loss_param
        _check_batch(self, x, label)
        axis, outer, classes, inner = _split_at_axis(self, x, label, self.param.infogain_loss_param.axis)
        where = "bottom 2" if h is not None else repr(self.param.infogain_loss_param.source)
        h = h.detach() if h is not None else self.infogain
        if h is None:
            self.fail("has no infogain matrix: give bottom 2 or infogain_loss_param.source (read at setup)")
        if h.numel() != classes * classes:
            self.fail(f"the infogain matrix H ({where}) has {h.numel()} values; {classes} classes along axis "
                      f"{axis} need {classes}x{classes} = {classes * classes}")
        top_prob = self.num_tops > 1
        ignore = self.optional("loss_param.ignore_label")
        if is_meta(x):
            loss = x.new_empty(())
            return (loss, x.new_empty(x.shape)) if top_prob else loss
        lab, valid = _labels(self, label, outer, inner, classes, ignore)
        normalizer = _normalizer(lp.normalization, valid, outer, inner, x)
        h = h.to(device=x.device, dtype=x.dtype).reshape(classes, classes)
        loss, prob = _Infogain.apply(x.reshape(outer, classes, inner), lab, valid, h, normalizer)
        return (loss, prob.reshape(x.shape)) if top_prob else loss


# ---------------------------------------------------------------------------------------- MultinomialLogisticLoss
class _MultinomialLogistic(torch.autograd.Function):
    """L = -Σ_n log(max(p[n, label_n], 1e-20)) / N; dp = -1/(N·max(p, 1e-20)) at the label entries: Caffe
    divides by the clamped probability also below the clamp, where autograd of the clamp would give 0."""

    @staticmethod
    def forward(ctx, p2, lab):
        p_true = p2.gather(1, lab.unsqueeze(1)).squeeze(1).clamp_min(_LOG_THRESHOLD)
        num = torch.tensor(float(p2.shape[0]), dtype=p2.dtype, device=p2.device)
        loss = -torch.log(p_true).sum() / num
        ctx.save_for_backward(p2, lab, p_true, num)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        p2, lab, p_true, num = ctx.saved_tensors
        scale = -dloss / num
        grad = torch.zeros_like(p2).scatter(1, lab.unsqueeze(1), (scale / p_true).unsqueeze(1))
        return grad, None


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(Layer):
    """Multinomial logistic loss of probabilities (e.g. a Softmax top).

    L = -Σ_n log(max(p[n, label_n], 1e-20)) / N, N = shape(0), the D = count(1) values of sample n are its
    class probabilities.  dp = -1/(N·max(p, 1e-20)) at the label entries, 0 elsewhere.
    bottom 0: probabilities (N, ...).  bottom 1: N integer labels in [0, D), shape (N,) or (N, 1, 1, 1)
    (no gradient).  top: 0-axis loss.  No parameters.
    """
    exact_bottoms = 2
    exact_tops = 1
    is_loss = True
    no_gradient_to = {1: "its label input"}

    def forward(self, p, label):
        _check_batch(self, p, label)
        if _legacy_shape(self, label, "the label bottom 1")[1:] != (1, 1, 1):
            self.fail(f"the label bottom 1 must be (N,) or (N, 1, 1, 1), got {shape_str(label.shape)}")
        num, dim = p.shape[0], count(p.shape, 1)
        lab, _ = _labels(self, label, num, 1, dim, None)
        return _MultinomialLogistic.apply(p.reshape(num, dim), lab.reshape(num))
