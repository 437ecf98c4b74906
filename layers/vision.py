"""Vision layers: Convolution, Deconvolution, LRN and Crop, with BVLC Caffe's exact geometry (Pooling is in
pooling.py).

Caffe computes output sizes with its own rules (C++ truncating division for convolution, ceil plus a clip rule
for pooling) that torch's size formulas do not always share.  Each layer here therefore works out Caffe's output
size itself and pads or trims the input so that torch's kernels see windows that fit exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from caffelike.core import layout

from .base import Layer, count, register, shape_str, spatial_values

_LRN = caffe_pb2.LRNParameter


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
        if (lp.norm_region == _LRN.ACROSS_CHANNELS and torch.compiler.is_compiling()
                and not torch.compiler.is_exporting()):
            # torch's LRN computes Caffe's formula (alpha over the window's mean).  Eagerly it is several times
            # slower than the code below, but Inductor lowers its backward best: with the window sums below,
            # it ordered GoogLeNet's LRN backward loops channel-innermost against the neighbours' NCHW
            # buffers, 1.8x (NHWC view) or 1.5x (NCHW) the time of this op's.  Exports keep the window sums:
            # plain Pad, Slice and Add nodes that every ONNX reader runs (torch's is a 3-D AveragePool).
            return F.local_response_norm(x, n, lp.alpha, lp.beta, lp.k)
        # Channels_last: the channel window runs along the contiguous last axis of the NHWC view (the NCHW
        # formula strides across memory there, 1.7x slower).
        nhwc = lp.norm_region == _LRN.ACROSS_CHANNELS and layout.is_channels_last(x)
        if lp.norm_region == _LRN.ACROSS_CHANNELS:
            if nhwc:
                x = x.permute(0, 2, 3, 1)
            window = _channel_window_sum(x * x, 3 if nhwc else 1, n)
        else:
            window = F.avg_pool2d(x * x, n, stride=1, padding=half, count_include_pad=True)
        factor, offset = (lp.alpha / n, lp.k) if lp.norm_region == _LRN.ACROSS_CHANNELS else (lp.alpha, 1.0)
        if torch.is_grad_enabled() and x.requires_grad:
            y = x * (offset + factor * window).pow(-lp.beta)
        else:  # the same operations in place (same bits), sparing three activation-sized allocations
            y = window.mul_(factor).add_(offset).pow_(-lp.beta).mul_(x)
        return y.permute(0, 3, 1, 2) if nhwc else y


def _channel_window_sum(squares: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """sum_{j=0}^{n-1} of the zero-padded `squares` shifted by j - (n-1)/2 along `axis`, as n - 1 additions of
    shifted slices: as fast as unfold(...).sum() eagerly, and exported as plain Pad, Slice and Add nodes
    (unfold's backward, traced, was a scatter)."""
    half, size = (n - 1) // 2, squares.shape[axis]
    spec = [0, 0] * (squares.dim() - 1 - axis) + [half, half]
    padded = F.pad(squares, spec)
    window = padded.narrow(axis, 0, size)
    if n > 1:
        window = window + padded.narrow(axis, 1, size)  # a fresh tensor the other shifts accumulate into
    for j in range(2, n):
        window.add_(padded.narrow(axis, j, size))
    return window


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
