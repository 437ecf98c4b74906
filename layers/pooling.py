"""Caffe's Pooling layer (MAX, AVE, STOCHASTIC), with its exact output size: ceil rounding plus the rule that
drops a last window starting in the right padding.  torch's own pooling runs wherever it places exactly Caffe's
windows; elsewhere the input is padded explicitly."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from .base import Layer, is_meta, register
from .vision import _need_4d

_POOL = caffe_pb2.PoolingParameter
# Caffe starts every MAX window at -FLT_MAX, for float and double blobs alike.
_FLT_MAX = float(torch.finfo(torch.float32).max)
# Caffe's STOCHASTIC TEST pass starts its running sum at FLT_MIN, so an all-zero window gives 0, not 0 / 0.
_FLT_MIN = float(torch.finfo(torch.float32).tiny)


def pooled_size(size: int, kernel: int, pad: int, stride: int, ceil: bool, clip: bool) -> int:
    """Caffe's pooled extent: ceil (or floor) of (size + 2 pad - kernel) / stride, plus 1; then, when the layer
    has any padding (`clip`), one window fewer if the last would start in the right padding."""
    numerator = size + 2 * pad - kernel
    steps = -((-numerator) // stride) if ceil else numerator // stride
    pooled = steps + 1
    if clip and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _torch_pools_alike(size: int, kernel: int, pad: int, stride: int, ceil: bool, caffe_out: int) -> bool:
    """Whether torch's pooling on this axis gives Caffe's windows: torch accepts the pad (at most half the kernel)
    and its output size, which drops a last window starting at or beyond size + pad even without padding where
    Caffe keeps it, equals Caffe's."""
    if 2 * pad > kernel:
        return False
    out = (size + 2 * pad - kernel + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out == caffe_out


@register("Pooling")
class Pooling(Layer):
    """Max, average or stochastic pooling over kernel_h x kernel_w windows that start every stride pixels at -pad.

    MAX: y = max over the window clipped to the image (padding never wins: every window starts at -FLT_MAX and a
        value must be strictly greater to replace it, so the first maximum in row-major order wins, and a window
        with nothing greater than -FLT_MAX yields -FLT_MAX with mask -1).
    AVE: y = sum over the window clipped to the image / ((hend - hstart) (wend - wstart)) with
        hend = min(hstart + kernel_h, H + pad_h): padding counts in the divisor, the part of a ceil-mode window
        beyond H + pad does not.
    STOCHASTIC (Caffe's GPU kernels; no padding): the window starts at i * stride and is clipped to the image.
        TRAIN: one uniform u in [0, 1) per window; y is the first element, in row-major order, at which the
        running sum of the window reaches u * (window sum), i.e. an element drawn with probability value / sum
        for non-negative inputs; backward routes dy to that element only.  TEST: y = sum(x^2) / (FLT_MIN + sum(x)),
        with its exact gradient.  The draws come from torch's generator on the bottom's device (seed it with
        caffelike.set_random_seed or torch.manual_seed), as Dropout's do, so they cannot match Caffe's cuRAND
        draws one for one.
    Output: pooled = ceil((H + 2 pad - k) / stride) + 1 (floor with round_mode FLOOR), then, only when pad_h or
        pad_w is non-zero, one less on an axis where the last window would start at or beyond H + pad.

    bottom: (N, C, H, W).  top: (N, C, pooled_h, pooled_w); for MAX an optional second top holds the argmax
        as float flat index h * W + w within the channel (it carries no gradient).
    pooling_param honoured: pool (MAX, AVE, STOCHASTIC), kernel_size | kernel_h/kernel_w, pad | pad_h/pad_w
        (MAX and AVE only, as in Caffe), stride | stride_h/stride_w, global_pooling (kernel = (H, W) at every
        forward), round_mode.  engine is accepted and ignored.
    Differences from Caffe: STOCHASTIC runs on CPU too (Caffe's CPU path is NOT_IMPLEMENTED); its TEST backward
        is the true gradient (Caffe's routes by sample indices that its TEST pass never writes); a TRAIN window
        that no element reaches (a negative sum) or that lies wholly beyond the image gives 0 and no gradient
        (Caffe leaves that top unwritten).  Stride 0 and an empty output are rejected; a NaN in a MAX window
        propagates (Caffe's `>` skips it); with one top, a MAX window whose values are all -inf gives -inf where
        Caffe gives -FLT_MAX.
    """

    exact_bottoms = 1
    min_tops = 1
    max_tops = 2

    def check_blob_counts(self, n_bottom, n_top):
        super().check_blob_counts(n_bottom, n_top)
        if n_top == 2 and self.param.pooling_param.pool != _POOL.MAX:
            self.fail(f"only MAX pooling has a second top (the argmax mask), got 2 tops for "
                      f"{_POOL.PoolMethod.Name(self.param.pooling_param.pool)}")

    def _pair(self, pp, scalar: str, prefix: str) -> tuple[int, int]:
        """One of Caffe's two spellings: `scalar` for both axes, or `<prefix>_h` and `<prefix>_w` together."""
        has_h, has_w = pp.HasField(prefix + "_h"), pp.HasField(prefix + "_w")
        if has_h or has_w:
            if pp.HasField(scalar):
                self.fail(f"either {scalar} or {prefix}_h/{prefix}_w should be specified, not both")
            if not (has_h and has_w):
                self.fail(f"{prefix}_h and {prefix}_w must both be given")
            return int(getattr(pp, prefix + "_h")), int(getattr(pp, prefix + "_w"))
        value = int(getattr(pp, scalar))
        return value, value

    def setup(self, bottom_shapes):
        pp = self.param.pooling_param
        _need_4d(self, bottom_shapes[0])
        self.pad = self._pair(pp, "pad", "pad")
        if self.pad != (0, 0) and pp.pool == _POOL.STOCHASTIC:
            self.fail(f"padding is implemented only for MAX and AVE pooling, got pad {list(self.pad)} with "
                      f"pool: STOCHASTIC")
        self.stride = self._pair(pp, "stride", "stride")
        if pp.global_pooling:
            if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
                self.fail("with global_pooling the kernel is the whole bottom; kernel_size, kernel_h and kernel_w "
                          "must not be given")
            if self.pad != (0, 0) or self.stride != (1, 1):
                self.fail(f"with global_pooling only pad 0 and stride 1 are allowed, got pad {list(self.pad)} "
                          f"and stride {list(self.stride)}")
            self.kernel = None
            return
        if not (pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w")):
            self.fail("kernel_size, or both kernel_h and kernel_w, must be given")
        self.kernel = self._pair(pp, "kernel_size", "kernel")
        if min(self.kernel) <= 0:
            self.fail(f"kernel size must be > 0, got {list(self.kernel)}")
        if min(self.stride) <= 0:
            self.fail(f"stride must be > 0, got {list(self.stride)}")
        for axis, p, k in zip("hw", self.pad, self.kernel):
            if p >= k:
                self.fail(f"pad_{axis} {p} must be smaller than kernel_{axis} {k}")

    def windows(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int],
                                                        tuple[int, int]]:
        """(kernel, pad, stride, pooled output size), each (h, w), for a height x width bottom, by Caffe's size
        rule (the export path places the same windows)."""
        kh, kw = (height, width) if self.kernel is None else self.kernel
        (ph, pw), (sh, sw) = self.pad, self.stride
        ceil = self.param.pooling_param.round_mode == _POOL.CEIL
        clip = ph > 0 or pw > 0
        oh = pooled_size(height, kh, ph, sh, ceil, clip)
        ow = pooled_size(width, kw, pw, sw, ceil, clip)
        if oh < 1 or ow < 1:
            self.fail(f"pooled output ({oh}, {ow}) is empty for a {height}x{width} bottom with kernel ({kh}, {kw}), "
                      f"stride ({sh}, {sw}), pad ({ph}, {pw})")
        return (kh, kw), (ph, pw), (sh, sw), (oh, ow)

    def forward(self, x):
        _need_4d(self, x.shape)
        pp = self.param.pooling_param
        height, width = int(x.shape[2]), int(x.shape[3])
        (kh, kw), (ph, pw), (sh, sw), (oh, ow) = self.windows(height, width)
        ceil = pp.round_mode == _POOL.CEIL
        if pp.pool == _POOL.STOCHASTIC:
            return self._stochastic(x, oh, ow, (kh, kw), (sh, sw))
        # Pad so that the windows tile the padded map exactly: -pad before, and after up to the end of the last
        # window (negative: rows no window reaches are trimmed).  torch then needs no padding and no ceil rule of
        # its own, whose limits (pad <= kernel/2) and degenerate cases differ from Caffe's.
        after_h = (oh - 1) * sh + kh - height - ph
        after_w = (ow - 1) * sw + kw - width - pw
        spec = (pw, after_w, ph, after_h)
        if self.num_tops < 2 and _torch_pools_alike(height, kh, ph, sh, ceil, oh) and \
                _torch_pools_alike(width, kw, pw, sw, ceil, ow):
            # torch's own pooling places the same windows (its size rule then agrees with Caffe's), pads MAX
            # with -inf and divides AVE by the window clipped to H + pad as Caffe does: no padded copy, indices
            # or divisor map needed.
            if pp.pool == _POOL.MAX:
                return F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil)
            return F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil, count_include_pad=True)
        if pp.pool == _POOL.MAX:
            return self._max(x, spec, (kh, kw), (sh, sw))
        summed = F.avg_pool2d(F.pad(x, spec), (kh, kw), (sh, sw), divisor_override=1)
        return summed / self._ave_divisor(x, oh, ow, height, width, (kh, kw))

    def _max(self, x, spec, kernel, stride):
        padded = F.pad(x, spec, value=float("-inf"))
        y, index = F.max_pool2d(padded, kernel, stride, return_indices=True)
        # Nothing beats Caffe's -FLT_MAX start in an all-padding window (or one of -inf/-FLT_MAX values).
        empty = y <= -_FLT_MAX
        y = torch.where(empty, torch.full_like(y, -_FLT_MAX), y)
        if self.num_tops < 2:
            return y
        pw, ph, width = spec[0], spec[2], int(x.shape[3])
        padded_width = int(padded.shape[3])
        flat = (index // padded_width - ph) * width + (index % padded_width - pw)
        mask = torch.where(empty, torch.full_like(flat, -1), flat).to(x.dtype)
        return y, mask

    def _stochastic(self, x, oh, ow, kernel, stride):
        (kh, kw), (sh, sw) = kernel, stride
        # Zeros fill the part of a ceil-mode window beyond the image; they add nothing to either sum.
        spec = (0, (ow - 1) * sw + kw - int(x.shape[3]), 0, (oh - 1) * sh + kh - int(x.shape[2]))
        windows = F.pad(x, spec).unfold(2, kh, sh).unfold(3, kw, sw).flatten(4)  # (N, C, oh, ow, kh * kw)
        if self.phase != caffe_pb2.TRAIN:
            return (windows * windows).sum(-1) / (windows.sum(-1) + _FLT_MIN)
        if is_meta(x):
            return windows[..., 0]
        running = windows.detach().cumsum(-1)
        # The threshold scales the running sum's own last value, not a separately reduced sum that may round
        # higher: with non-negative values the walk then always stops inside the window, as Caffe's does.
        threshold = torch.rand(running.shape[:-1] + (1,), dtype=x.dtype, device=x.device) * running[..., -1:]
        # A padding zero leaves the running sum where the element before it had it, so it is never the first to
        # reach the threshold, except in a window wholly beyond the image, which thus yields 0 and no gradient.
        size = kh * kw
        order = torch.arange(size, device=x.device)
        first = torch.where(running >= threshold, order, size).amin(-1, keepdim=True)
        picked = windows.gather(-1, first.clamp(max=size - 1)).squeeze(-1)
        return torch.where(first.squeeze(-1) < size, picked, torch.zeros_like(picked))

    def _ave_divisor(self, x, oh, ow, height, width, kernel) -> torch.Tensor:
        """Caffe's pool_size per window, taken before clipping to the image (so it may count padding)."""
        (kh, kw), (ph, pw), (sh, sw) = kernel, self.pad, self.stride
        rows = [min(i * sh - ph + kh, height + ph) - (i * sh - ph) for i in range(oh)]
        cols = [min(j * sw - pw + kw, width + pw) - (j * sw - pw) for j in range(ow)]
        r = torch.tensor(rows, dtype=x.dtype, device=x.device)
        c = torch.tensor(cols, dtype=x.dtype, device=x.device)
        return r[:, None] * c[None, :]
