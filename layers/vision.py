"""Vision layers: Convolution, Deconvolution, Pooling, LRN and Crop, with BVLC Caffe's exact geometry.

Caffe computes output sizes with its own rules (C++ truncating division for convolution, ceil plus a clip rule
for pooling) that torch's size formulas do not always share.  Each layer here therefore works out Caffe's output
size itself and pads or trims the input so that torch's kernels see windows that fit exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from caffelike.core import layout

from .base import Layer, count, is_meta, register, shape_str, spatial_values

_POOL = caffe_pb2.PoolingParameter
_LRN = caffe_pb2.LRNParameter
# Caffe starts every MAX window at -FLT_MAX, for float and double blobs alike.
_FLT_MAX = float(torch.finfo(torch.float32).max)
# Caffe's STOCHASTIC TEST pass starts its running sum at FLT_MIN, so an all-zero window gives 0, not 0 / 0.
_FLT_MIN = float(torch.finfo(torch.float32).tiny)


def _bottom_name(layer: Layer, i: int) -> str:
    return layer.param.bottom[i] if i < len(layer.param.bottom) else f"#{i}"


def _need_4d(layer: Layer, shape, i: int = 0) -> None:
    if len(shape) != 4:
        layer.fail(f'bottom "{_bottom_name(layer, i)}" has {len(shape)} axes, {layer.type} needs 4 (N, C, H, W)')


# ------------------------------------------------------------------------------------------------ (de)convolution

def conv_geometry(layer, cp, ns: int):
    """(kernel, stride, pad, dilation) per spatial axis from a ConvolutionParameter, in either spelling, each
    checked as Caffe checks them (Convolution, Deconvolution and Im2col share this)."""
    kernel = spatial_values(cp, "kernel_size", "kernel", ns, 0, layer)
    stride = spatial_values(cp, "stride", "stride", ns, 1, layer)
    pad = spatial_values(cp, "pad", "pad", ns, 0, layer)
    dilation = spatial_values(cp, "dilation", None, ns, 1, layer)
    for name, values in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if min(values) <= 0:
            layer.fail(f"{name} must be > 0 on every spatial axis, got {values}")
    return kernel, stride, pad, dilation

class _ConvolutionBase(Layer):
    """What Convolution and Deconvolution share: ConvolutionParameter parsing, blob creation and the N-D reshape
    around torch's conv1d/2d/3d."""

    min_bottoms = 1
    min_tops = 1
    equal_bottoms_tops = True
    transposed = False

    def setup(self, bottom_shapes):
        cp = self.param.convolution_param
        shape = tuple(bottom_shapes[0])
        for i, other in enumerate(bottom_shapes[1:], start=1):
            self._check_same_shape(shape, tuple(other), i)
        self.num_axes = len(shape)
        self.axis = self.canonical_axis(cp.axis, self.num_axes)
        ns = self.num_axes - self.axis - 1
        if not 1 <= ns <= 3:
            self.fail(f'bottom "{_bottom_name(self, 0)}" has shape {shape_str(shape)} and channel axis {self.axis}, '
                      f"leaving {ns} spatial axes; 1, 2 or 3 are supported")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, ns)
        self.channels = shape[self.axis]
        num_output, group = cp.num_output, cp.group
        if num_output <= 0:
            self.fail(f"num_output must be > 0, got {num_output}")
        if group <= 0:
            self.fail(f"group must be > 0, got {group}")
        if self.channels % group:
            self.fail(f"the {self.channels} input channels are not a multiple of group {group}")
        if num_output % group:
            self.fail(f"num_output {num_output} is not a multiple of group {group}")
        # Deconvolution reverses the roles of the two channel counts (Caffe's reverse_dimensions), which is
        # also the layout torch's conv_transpose expects.
        out_c, in_c = (self.channels, num_output) if self.transposed else (num_output, self.channels)
        self.add_blob([out_c, in_c // group, *self.kernel], cp.weight_filler)
        if cp.bias_term:
            self.add_blob([num_output], cp.bias_filler)

    def _check_same_shape(self, first, other, i: int) -> None:
        if tuple(first) != tuple(other):
            self.fail(f'all bottoms must have the same shape: bottom "{_bottom_name(self, 0)}" is '
                      f'{shape_str(first)}, bottom "{_bottom_name(self, i)}" is {shape_str(other)}')

    def _output_size(self, size: int, d: int) -> int:
        raise NotImplementedError

    def forward(self, *bottoms):
        for i, x in enumerate(bottoms[1:], start=1):
            self._check_same_shape(bottoms[0].shape, x.shape, i)
        tops = tuple(self._forward_one(x) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.num_axes:
            self.fail(f'bottom "{_bottom_name(self, 0)}" has {x.dim()} axes, but the layer was set up for '
                      f"{self.num_axes} (the number of axes may not change)")
        if x.shape[self.axis] != self.channels:
            self.fail(f"the layer was set up for {self.channels} channels on axis {self.axis}, "
                      f"got a bottom of shape {shape_str(x.shape)}")
        lead = tuple(x.shape[:self.axis])
        spatial = tuple(x.shape[self.axis + 1:])
        out_spatial = [self._output_size(s, d) for d, s in enumerate(spatial)]
        if min(out_spatial) < 1:
            self.fail(f"output spatial size {out_spatial} is empty for input {list(spatial)}, kernel {self.kernel}, "
                      f"stride {self.stride}, pad {self.pad}, dilation {self.dilation}")
        # Axes before the channel axis are all batch axes (Caffe's num_ = count(0, axis)).
        xb = x.reshape(count(lead), self.channels, *spatial)
        weight = self.blobs[0]
        bias = self.blobs[1] if len(self.blobs) > 1 else None
        y = self._run(xb, weight, bias, spatial, out_spatial)
        return y.reshape(*lead, y.shape[1], *out_spatial)


@register("Convolution")
class Convolution(_ConvolutionBase):
    """Cross-correlation with learned filters, one set per group:
    y[n, o, p] = b[o] + sum_{c in group(o), q} W[o, c, q] * x_pad[n, c, p * stride + q * dilation].

    bottom: one or more blobs of the same shape (..., C, S_1, .., S_d), d = 1, 2 or 3 spatial axes after `axis`;
        the axes before `axis` are flattened into the batch.  All bottoms use the same weights.
    top: one per bottom, (..., num_output, O_1, .., O_d) with O = (S + 2 pad - (dilation (k - 1) + 1)) / stride + 1
        in C++ integer division (truncation toward zero).
    blobs: W (num_output, C / group, k_1, .., k_d), then b (num_output) if bias_term.
    convolution_param honoured: num_output, bias_term, kernel_size | kernel_h/kernel_w, stride | stride_h/stride_w,
        pad | pad_h/pad_w, dilation, group, weight_filler, bias_filler, axis.  engine and force_nd_im2col are
        accepted and ignored (every engine computes the same numbers).
    Differences from Caffe: dilation 0 is rejected (Caffe would silently stack all kernel taps on one pixel), and
        an empty output (size < 1) raises instead of producing an empty blob.
    """

    def setup(self, bottom_shapes):
        super().setup(bottom_shapes)
        # For forward's fast path: the smallest input size the kernel fits (padded), per axis, of a 2-D bottom.
        self._fits = [self.dilation[d] * (self.kernel[d] - 1) + 1 - 2 * self.pad[d] for d in range(2)] \
            if self.num_axes == 4 and self.axis == 1 else None
        self.group = self.param.convolution_param.group
        self.bias_term = len(self.blobs) > 1

    def forward(self, *bottoms):
        # The common case in a few steps: one (N, C, H, W) bottom whose padded size the kernel fits, so torch's
        # output size is Caffe's.  (A torch.compile trace of GoogLeNet spent half its time in the general path.)
        x, fits = bottoms[0], self._fits
        if fits is not None and len(bottoms) == 1 and x.dim() == 4 and x.shape[1] == self.channels \
                and x.shape[2] >= fits[0] and x.shape[3] >= fits[1]:
            # (getattr: what ParameterList's [i] ends in, without its index arithmetic to trace)
            bias = getattr(self.blobs, "1") if self.bias_term else None
            return F.conv2d(x, layout.conv_weight(x, getattr(self.blobs, "0")), bias, self.stride, self.pad,
                            self.dilation, self.group)
        return super().forward(*bottoms)

    def _output_size(self, size, d):
        extent = self.dilation[d] * (self.kernel[d] - 1) + 1
        numerator = size + 2 * self.pad[d] - extent
        # C++ `/` truncates toward zero: a kernel up to stride - 1 pixels wider than the padded input still
        # gives one output, whose missing pixels im2col reads as zeros.
        steps = numerator // self.stride[d] if numerator >= 0 else -((-numerator) // self.stride[d])
        return steps + 1

    def _run(self, x, weight, bias, spatial, out_spatial):
        fn = (F.conv1d, F.conv2d, F.conv3d)[len(spatial) - 1]
        extra = [(o - 1) * s + self.dilation[d] * (k - 1) + 1 - (n + 2 * p)
                 for d, (o, s, k, n, p) in enumerate(zip(out_spatial, self.stride, self.kernel, spatial, self.pad))]
        padding = list(self.pad)
        if max(extra) > 0:
            # torch refuses a kernel larger than the padded input; Caffe's truncated size needs it, so the zeros
            # im2col would read are appended explicitly.
            spec = []
            for d in reversed(range(len(spatial))):
                spec += [self.pad[d], self.pad[d] + max(extra[d], 0)]
            x = F.pad(x, spec)
            padding = [0] * len(spatial)
        # The memory-format policy (core/layout.py): a channels_last weight makes the output channels_last.
        weight = layout.conv_weight(x, weight)
        return fn(x, weight, bias, stride=self.stride, padding=padding, dilation=self.dilation,
                  groups=self.param.convolution_param.group)


@register("Deconvolution")
class Deconvolution(_ConvolutionBase):
    """Transposed convolution (Caffe runs convolution's backward-data pass forward, then adds the bias):
    y[n, o, p * stride + q * dilation - pad] += W[c, o, q] * x[n, c, p] within each group, plus b[o].

    bottom: one or more blobs of the same shape (..., C, S_1, .., S_d), d = 1, 2 or 3 spatial axes after `axis`.
    top: one per bottom, (..., num_output, O_1, .., O_d) with O = stride (S - 1) + dilation (k - 1) + 1 - 2 pad;
        there is no output_padding in Caffe.
    blobs: W (C, num_output / group, k_1, .., k_d) (the axes swapped relative to Convolution), then
        b (num_output) if bias_term.
    convolution_param honoured: as Convolution.
    Differences from Caffe: dilation 0 and an empty output (size < 1) are rejected.
    """

    transposed = True

    def _output_size(self, size, d):
        return self.stride[d] * (size - 1) + self.dilation[d] * (self.kernel[d] - 1) + 1 - 2 * self.pad[d]

    def _run(self, x, weight, bias, spatial, out_spatial):
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[len(spatial) - 1]
        return fn(x, weight, bias, stride=self.stride, padding=self.pad, dilation=self.dilation,
                  groups=self.param.convolution_param.group)


# ------------------------------------------------------------------------------------------------------- pooling
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

    def forward(self, x):
        _need_4d(self, x.shape)
        pp = self.param.pooling_param
        height, width = int(x.shape[2]), int(x.shape[3])
        kh, kw = (height, width) if self.kernel is None else self.kernel
        (ph, pw), (sh, sw) = self.pad, self.stride
        ceil = pp.round_mode == _POOL.CEIL
        clip = ph > 0 or pw > 0
        oh = pooled_size(height, kh, ph, sh, ceil, clip)
        ow = pooled_size(width, kw, pw, sw, ceil, clip)
        if oh < 1 or ow < 1:
            self.fail(f"pooled output ({oh}, {ow}) is empty for a {height}x{width} bottom with kernel ({kh}, {kw}), "
                      f"stride ({sh}, {sw}), pad ({ph}, {pw})")
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


# ----------------------------------------------------------------------------------------------------------- LRN
@register("LRN")
class LRN(Layer):
    """Local response normalisation, y = x * scale^(-beta).

    ACROSS_CHANNELS: scale[c] = k + alpha / local_size * sum_{c' = c - (n-1)/2}^{c + (n-1)/2} x[c']^2, channels
        outside [0, C) counting as zeros (alpha is divided by local_size).
    WITHIN_CHANNEL: Caffe composes it from Power, AVE Pooling (n x n, pad (n-1)/2, stride 1) and Eltwise, giving
        scale = 1 + alpha / n^2 * sum_{n x n window, zero padded} x^2; `k` is ignored.

    bottom: (N, C, H, W).  top: same shape.
    lrn_param honoured: local_size (odd), alpha, beta, k (ACROSS_CHANNELS only), norm_region.  engine is accepted
        and ignored.
    """

    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        _need_4d(self, bottom_shapes[0])
        size = self.param.lrn_param.local_size
        if size % 2 == 0:
            self.fail(f"local_size must be odd, got {size}")

    def forward(self, x):
        _need_4d(self, x.shape)
        lp = self.param.lrn_param
        n = lp.local_size
        half = (n - 1) // 2
        nhwc = lp.norm_region == _LRN.ACROSS_CHANNELS and layout.is_channels_last(x)
        if nhwc:
            # Channels_last: the channel window is the contiguous last axis of the NHWC view (the NCHW formula
            # strides across memory there, 1.7x slower).  The same arithmetic; the window sums may round apart.
            x = x.permute(0, 2, 3, 1)
            window = F.pad(x * x, (half, half)).unfold(3, n, 1).sum(-1)
        elif lp.norm_region == _LRN.ACROSS_CHANNELS:
            window = F.pad(x * x, (0, 0, 0, 0, half, half)).unfold(1, n, 1).sum(-1)
        else:
            window = F.avg_pool2d(x * x, n, stride=1, padding=half, count_include_pad=True)
        factor, offset = (lp.alpha / n, lp.k) if lp.norm_region == _LRN.ACROSS_CHANNELS else (lp.alpha, 1.0)
        if torch.is_grad_enabled() and x.requires_grad:
            y = x * (offset + factor * window).pow(-lp.beta)
        else:  # the same operations in place (same bits), sparing three activation-sized allocations
            y = window.mul_(factor).add_(offset).pow_(-lp.beta).mul_(x)
        return y.permute(0, 3, 1, 2) if nhwc else y


# ---------------------------------------------------------------------------------------------------------- Crop
@register("Crop")
class Crop(Layer):
    """y = x[..., o_a : o_a + R_a, ..., o_last : o_last + R_last] for every axis from `axis` on, where R is the
    shape of the reference bottom; axes before `axis` are kept whole.

    bottom: x (the data), then ref (only its shape is read; it needs at least as many axes as x).
    top: x's shape up to `axis`, ref's shape after.
    crop_param honoured: axis (default 2, negative counts from the end), offset (none: 0; one: the same offset for
        every cropped axis; else one per cropped axis).
    Backward: the top's gradient lands in the cropped window of x; ref gets no gradient (not even with
        force_backward).
    """

    exact_bottoms = 2
    exact_tops = 1

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def setup(self, bottom_shapes):
        self._window(tuple(bottom_shapes[0]), tuple(bottom_shapes[1]))

    def _window(self, shape, ref_shape) -> tuple[slice, ...]:
        cp = self.param.crop_param
        axis = self.canonical_axis(cp.axis, len(shape))
        cropped = len(shape) - axis
        offsets = list(cp.offset)
        if len(offsets) > 1 and len(offsets) != cropped:
            self.fail(f"offset must be given once or once per cropped axis ({cropped} from axis {axis}), "
                      f"got {len(offsets)} values")
        if len(ref_shape) < len(shape):
            self.fail(f'bottom "{_bottom_name(self, 1)}" has {len(ref_shape)} axes, Crop needs at least '
                      f'{len(shape)} (as many as bottom "{_bottom_name(self, 0)}")')
        window = [slice(None)] * axis
        for i in range(axis, len(shape)):
            offset = offsets[0] if len(offsets) == 1 else offsets[i - axis] if offsets else 0
            size = ref_shape[i]
            if shape[i] - offset < size:
                self.fail(f"the crop of axis {i} is out of bounds: size {size} at offset {offset} does not fit in "
                          f"{shape[i]}")
            window.append(slice(offset, offset + size))
        return tuple(window)

    def forward(self, x, ref):
        # Only ref's shape is read, so autograd never reaches it: Caffe's Crop has no gradient for bottom 1.
        return x[self._window(tuple(x.shape), tuple(ref.shape))]
