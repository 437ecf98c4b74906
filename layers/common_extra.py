"""More common layers: MVN, Reduction, ArgMax, Tile, Embed, Filter, BatchReindex, Parameter, Im2col, SPP.

Caffe's sources: mvn_layer.cpp, reduction_layer.cpp, argmax_layer.cpp, tile_layer.cpp, embed_layer.cpp,
filter_layer.cpp, batch_reindex_layer.cpp, parameter_layer.hpp, im2col_layer.cpp (util/im2col.cpp),
spp_layer.cpp.  Index bottoms (Embed, BatchReindex, Filter's selector) hold integer values stored as floats and
never receive a gradient, as in Caffe, where back-propagating into them is fatal.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from .base import Layer, count, is_compiling, is_meta, register, shape_str
from .pooling import Pooling
from .vision import conv_geometry

_REDUCTION = caffe_pb2.ReductionParameter
_SPP = caffe_pb2.SPPParameter


# --------------------------------------------------------------------------------------------------------- MVN
class _CaffeMVN(torch.autograd.Function):
    """y = (x - mean) / (std + eps) over the last axis of a (num, dim) view, with Caffe's backward
    dx = (dy - mean(dy) - y * mean(y * dy)) / (std + eps).  That treats std + eps as std in the derivative of
    the std (a relative error of eps / std), and stays finite where std == 0, where autograd's sqrt gives NaN."""

    @staticmethod
    def forward(ctx, x, eps):
        centred = x - x.mean(dim=1, keepdim=True)
        denom = centred.pow(2).mean(dim=1, keepdim=True).sqrt() + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, denom = ctx.saved_tensors
        dx = dy - dy.mean(dim=1, keepdim=True) - y * (y * dy).mean(dim=1, keepdim=True)
        return dx / denom, None


@register("MVN")
class MVN(Layer):
    """Mean-variance normalisation: y = x - mean, then y /= (sqrt(E[(x - mean)^2]) + eps) if normalize_variance.

    Statistics per (n, c) over the remaining axes, or per n over all of C, H, W with across_channels; the
    variance is biased and eps is added to the standard deviation, not to the variance.
    bottom: up to 4 axes (Caffe reads it through the legacy num/channels/height/width accessors, which refuse
    more).  top: (num, channels, height, width) of the bottom, missing trailing axes read as 1, so a (2, 3, 4)
    bottom gives a (2, 3, 4, 1) top and (N, C) gives (N, C, 1, 1).  mvn_param honoured: normalize_variance,
    across_channels, eps.  Backward as Caffe computes it (see _CaffeMVN).
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        if len(bottom_shapes[0]) > 4:
            self.fail(f"bottom has {len(bottom_shapes[0])} axes {shape_str(bottom_shapes[0])}; MVN reads it as "
                      "num x channels x height x width, which allows at most 4")

    def forward(self, x):
        p = self.param.mvn_param
        shape = x.shape
        num = shape[0] if p.across_channels or x.dim() < 2 else shape[0] * shape[1]
        flat = x.reshape(num, -1)
        if p.normalize_variance:
            y = _CaffeMVN.apply(flat, float(p.eps))
        else:
            y = flat - flat.mean(dim=1, keepdim=True)
        return y.reshape(tuple(shape) + (1,) * (4 - len(shape)))


# --------------------------------------------------------------------------------------------------- Reduction
@register("Reduction")
class Reduction(Layer):
    """y = coeff * op(x[i, ...]) over all axes from `axis` to the end.

    op: SUM (sum x), ASUM (sum |x|), SUMSQ (sum x^2), MEAN (sum x / count).  bottom: any shape.
    top: bottom.shape[:axis] (axis 0 gives a 0-axis scalar).  reduction_param honoured: operation, axis, coeff.
    Backward: coeff * dy times 1, sign(x) (0 at 0), 2x or 1/count respectively.
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        self.canonical_axis(self.param.reduction_param.axis, len(bottom_shapes[0]))

    def forward(self, x):
        p = self.param.reduction_param
        axis = self.canonical_axis(p.axis, x.dim())
        flat = x.reshape(*x.shape[:axis], -1)
        if p.operation == _REDUCTION.SUM:
            y = flat.sum(-1)
        elif p.operation == _REDUCTION.ASUM:
            y = flat.abs().sum(-1)
        elif p.operation == _REDUCTION.SUMSQ:
            y = flat.pow(2).sum(-1)
        elif p.operation == _REDUCTION.MEAN:
            y = flat.sum(-1) / count(x.shape, axis)
        else:
            self.fail(f"unknown operation {p.operation}")
        return y * p.coeff if p.coeff != 1 else y


# ------------------------------------------------------------------------------------------------------ ArgMax
@register("ArgMax")
class ArgMax(Layer):
    """Indices (and optionally values) of the top_k largest values.

    Without axis: per item n over its flattened count(1) values; top (N, 1, top_k, 1, ...) with
    max(3, bottom axes) axes, or (N, 2, top_k, ...) with out_max_val (channel 0 indices, channel 1 values).
    With axis: top = bottom shape with shape[axis] = top_k, holding the values if out_max_val, else the indices.
    Indices are floats in the bottom's dtype.  Ties go to the larger index (Caffe sorts (value, index) pairs with
    std::greater).  argmax_param honoured: out_max_val, top_k, axis.  No backward in Caffe (NOT_IMPLEMENTED): a
    net that asks for the bottom's gradient is refused at build time.
    Difference from Caffe: NaN inputs order as torch's sort puts them (Caffe's comparison leaves that undefined).
    """
    exact_bottoms = exact_tops = 1
    backward_free = True
    backward_not_implemented = True

    def _axis_and_dim(self, shape):
        p = self.param.argmax_param
        if p.top_k < 1:
            self.fail(f"top_k must be >= 1, got {p.top_k}")
        if p.HasField("axis"):
            axis = self.canonical_axis(p.axis, len(shape))
            dim = int(shape[axis])
        else:
            axis, dim = None, count(shape, 1)
        if p.top_k > dim:
            where = f"axis {axis}" if axis is not None else "each item (count from axis 1)"
            self.fail(f"top_k {p.top_k} is larger than the {dim} values of {where} of a bottom of shape "
                      f"{shape_str(shape)}")
        return axis, dim

    def setup(self, bottom_shapes):
        self._axis_and_dim(bottom_shapes[0])

    def forward(self, x):
        p = self.param.argmax_param
        k = int(p.top_k)
        axis, dim = self._axis_and_dim(x.shape)
        values = x.movedim(axis, -1) if axis is not None else x.reshape(x.shape[0], dim)
        # Reversed, a stable descending sort puts the larger original index first among equal values.
        top_values, rev = torch.sort(values.flip(-1), dim=-1, descending=True, stable=True)
        top_values = top_values[..., :k]
        index = (dim - 1 - rev[..., :k]).to(x.dtype)
        if axis is not None:
            return (top_values if p.out_max_val else index).movedim(-1, axis)
        rest = (1,) * (max(3, x.dim()) - 3)
        out = torch.stack((index, top_values), dim=1) if p.out_max_val else index.unsqueeze(1)
        return out.reshape(x.shape[0], out.shape[1], k, *rest)


# -------------------------------------------------------------------------------------------------------- Tile
@register("Tile")
class Tile(Layer):
    """Repeat the bottom `tiles` times along `axis`: for each outer index the whole block from axis to the end is
    repeated (torch.cat([x] * tiles, axis), not repeat_interleave).

    bottom: any shape.  top: shape[axis] *= tiles.  tile_param honoured: axis, tiles (required, > 0).
    Backward: the sum of the tiles' gradients.
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.tile_param
        if not p.HasField("tiles"):
            self.fail("tile_param.tiles must be given")
        if p.tiles <= 0:
            self.fail(f"tiles must be > 0, got {p.tiles}")
        self.canonical_axis(p.axis, len(bottom_shapes[0]))

    def forward(self, x):
        p = self.param.tile_param
        axis = self.canonical_axis(p.axis, x.dim())
        reps = [1] * x.dim()
        reps[axis] = int(p.tiles)
        return x.repeat(*reps)


# ------------------------------------------------------------------------------------------------------- Embed
def _indices(layer: Layer, idx: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """Float indices to int64 (truncating, like Caffe's static_cast<int>), checked against [0, size) where the
    values are known (not on meta tensors, nor under torch.compile, where the compiled indexing asserts its
    own bounds rather than split the graph at a host sync)."""
    index = idx.detach().long()
    if not is_meta(idx) and index.numel() and not is_compiling():
        bad = (index < 0) | (index >= size)
        if bool(bad.any()):
            first = idx.detach().reshape(-1)[bad.reshape(-1).nonzero()[0, 0]].item()
            layer.fail(f"{what} index {first:g} is out of range [0, {size})")
    return index


@register("Embed")
class Embed(Layer):
    """y[..., :] = W[int(x[...]), :] + b: a table look-up of integer-valued float indices.

    bottom: indices, any shape.  top: bottom.shape + (num_output,).
    blobs: W (input_dim, num_output) (torch.nn.Embedding's layout), b (num_output,) if bias_term.
    embed_param honoured: num_output, input_dim, bias_term, weight_filler, bias_filler.
    Backward: W's gradient accumulates (scatter-add) over repeated indices; a net that asks for the indices'
    gradient (propagate_down, force_backward) is refused, as Caffe's Backward aborts.
    An index outside [0, input_dim) is an error (Caffe only checks it in debug builds).
    """
    exact_bottoms = exact_tops = 1
    no_gradient_to = {0: "its integer indices"}

    def setup(self, bottom_shapes):
        p = self.param.embed_param
        if p.num_output <= 0:
            self.fail(f"num_output must be set to a positive value, got {p.num_output}")
        if p.input_dim <= 0:
            self.fail(f"input_dim must be set to a positive value, got {p.input_dim}")
        self.add_blob((p.input_dim, p.num_output), p.weight_filler)
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)

    def forward(self, idx):
        p = self.param.embed_param
        y = F.embedding(_indices(self, idx, int(p.input_dim), "embedding"), self.blobs[0])
        return y + self.blobs[1] if p.bias_term else y


# ------------------------------------------------------------------------------------------------------ Filter
@register("Filter")
class Filter(Layer):
    """Keep the items n (axis 0) whose selector value is non-zero, for every bottom but the last.

    bottoms: K blobs to filter (any shapes, same N) and the selector (N, 1, 1, ...).  tops: K blobs,
    (number selected,) + bottom.shape[1:].  At net setup the top shapes use the full N, as Caffe's first
    Reshape does; forward returns the selected items only.  No parameters.
    Backward: the selected items' gradients, 0 for the others; asking for the selector's gradient is refused.
    """
    min_bottoms = 2
    min_tops = 1

    def check_blob_counts(self, n_bottom, n_top):
        super().check_blob_counts(n_bottom, n_top)
        if n_top != n_bottom - 1:
            self.fail(f"needs one top per filtered bottom (bottoms - 1 = {n_bottom - 1}), got {n_top} tops")

    no_gradient_to = {-1: "its selector (last) input"}

    def _check(self, shapes):
        selector = shapes[-1]
        if len(selector) == 0 or any(d != 1 for d in selector[1:]):
            self.fail(f"the selector (last bottom) must have shape (N, 1, ...), got {shape_str(selector)}")
        for i, s in enumerate(shapes[:-1]):
            if len(s) == 0 or s[0] != selector[0]:
                self.fail(f"bottom {i} of shape {shape_str(s)} must have the selector's first dimension "
                          f"{selector[0]}")

    def setup(self, bottom_shapes):
        self.n_bottoms = len(bottom_shapes)
        self._check([tuple(s) for s in bottom_shapes])

    def infer_top_shapes(self, bottom_shapes):
        self._check([tuple(s) for s in bottom_shapes])
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        self._check([tuple(b.shape) for b in bottoms])
        keep = (bottoms[-1].detach().reshape(-1) != 0).nonzero().reshape(-1)
        tops = tuple(x.index_select(0, keep) for x in bottoms[:-1])
        return tops[0] if len(tops) == 1 else tops


# ------------------------------------------------------------------------------------------------ BatchReindex
@register("BatchReindex")
class BatchReindex(Layer):
    """y[i] = x[int(idx[i])]: gather along axis 0.

    bottoms: x (N, ...), idx (M,) integer-valued floats in [0, N).  top: (M,) + x.shape[1:].  No parameters.
    Backward: scatter-add into x (an item picked twice gets both gradients); asking for idx's gradient is refused.
    """
    exact_bottoms = 2
    exact_tops = 1

    no_gradient_to = {1: "its index input"}

    def setup(self, bottom_shapes):
        if len(bottom_shapes[1]) != 1:
            self.fail(f"the index bottom must have 1 axis, got shape {shape_str(bottom_shapes[1])}")

    def forward(self, x, idx):
        if idx.dim() != 1:
            self.fail(f"the index bottom must have 1 axis, got shape {shape_str(idx.shape)}")
        if x.dim() == 0:
            self.fail("the data bottom must have at least 1 axis")
        return x.index_select(0, _indices(self, idx, int(x.shape[0]), "batch"))


# --------------------------------------------------------------------------------------------------- Parameter
@register("Parameter")
class Parameter(Layer):
    """A learnable blob exposed as a top: y = blob.

    bottoms: none.  top: the blob, shape parameter_param.shape, zero-initialised (Caffe takes no filler).
    The top shares data and gradient with the blob.
    """
    exact_bottoms = 0
    exact_tops = 1

    def setup(self, bottom_shapes):
        self.add_blob([int(d) for d in self.param.parameter_param.shape.dim], constant=0.0)

    def forward(self):
        # A view, not the Parameter itself: the net tells tops apart from leaves, and the view's gradient is the
        # blob's.
        return self.blobs[0].view_as(self.blobs[0])


# ------------------------------------------------------------------------------------------------------ Im2col
@register("Im2col")
class Im2col(Layer):
    """Unroll every kernel window into a column: the layout convolution multiplies with its weights.

    bottom: (batch axes..., C, spatial...) with the channel axis at convolution_param.axis.
    top: (batch axes..., C * prod(kernel), out...), out = (in + 2 pad - (dilation (k - 1) + 1)) / stride + 1
    (C++ truncating division); channel index (c * kh + i) * kw + j, i.e. channel slowest, then each kernel axis.
    Windows are zero-padded.  convolution_param honoured: kernel_size | kernel_h/kernel_w, pad | pad_h/pad_w,
    stride | stride_h/stride_w, dilation, axis; num_output and the rest are ignored, as in Caffe.
    Backward: col2im (the overlapping windows' gradients summed), which autograd gives.
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        cp = self.param.convolution_param
        shape = tuple(bottom_shapes[0])
        self.num_axes = len(shape)
        self.axis = self.canonical_axis(cp.axis, len(shape))
        ns = len(shape) - self.axis - 1
        if ns < 1:
            self.fail(f"bottom of shape {shape_str(shape)} has no spatial axis after channel axis {self.axis}")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, ns)

    def forward(self, x):
        if x.dim() != self.num_axes:
            self.fail(f"bottom has {x.dim()} axes, the layer was set up for {self.num_axes}")
        a = self.axis
        lead, channels, spatial = tuple(x.shape[:a]), int(x.shape[a]), tuple(int(s) for s in x.shape[a + 1:])
        y = x.reshape(count(lead), channels, *spatial)
        outs, spec = [], []
        for size, k, p, s, d in zip(spatial, self.kernel, self.pad, self.stride, self.dilation):
            extent = d * (k - 1) + 1
            out = int((size + 2 * p - extent) / s) + 1  # C++ division truncates toward zero
            if out < 1:
                self.fail(f"output spatial size is empty for input {list(spatial)}, kernel {self.kernel}, "
                          f"stride {self.stride}, pad {self.pad}, dilation {self.dilation}")
            outs.append(out)
            # Before: pad; after: up to the end of the last window (negative trims what no window reaches).
            spec[:0] = [p, (out - 1) * s + extent - size - p]
        y = F.pad(y, spec)
        ns = len(spatial)
        for i, (k, s, d) in enumerate(zip(self.kernel, self.stride, self.dilation)):
            y = y.unfold(2 + i, d * (k - 1) + 1, s)[..., ::d]  # appends this axis's kernel offsets as a last axis
        # (B, C, out..., k...) -> (B, C, k..., out...) -> (B, C * prod(k), out...)
        order = [0, 1] + list(range(2 + ns, 2 + 2 * ns)) + list(range(2, 2 + ns))
        y = y.permute(order).reshape(count(lead), channels * count(self.kernel), *outs)
        return y.reshape(*lead, channels * count(self.kernel), *outs)


# --------------------------------------------------------------------------------------------------------- SPP
@register("SPP")
class SPP(Layer):
    """Spatial pyramid pooling: level l pools the map into about 2^l x 2^l bins with Caffe's geometry
    kernel = ceil(H / 2^l), pad = (kernel * 2^l - H + 1) / 2 (integer division), stride = kernel (same for W),
    using the Pooling layer itself; each level is flattened to (N, C * bins) and the levels are concatenated
    along axis 1, level 0 first.  With pyramid_height 1 the top is the 4-D pooling output (N, C, 1, 1).

    bottom: (N, C, H, W).  spp_param honoured: pyramid_height, pool (MAX, AVE, STOCHASTIC; a STOCHASTIC level
    that needs padding is refused as by Pooling); engine is ignored.  Backward: that of the pooling levels.  A level whose pad would reach its kernel
    (tiny maps) fails as Pooling's setup check does in Caffe.
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            self.fail(f"bottom must have 4 axes (N, C, H, W), got shape {shape_str(shape)}")
        if self.param.spp_param.pyramid_height < 1:
            self.fail(f"pyramid_height must be >= 1, got {self.param.spp_param.pyramid_height}")
        self._levels: dict[tuple[int, int, int], Pooling] = {}
        for level in range(self.param.spp_param.pyramid_height):
            self._pooling(level, shape)

    def _pooling(self, level: int, shape) -> Pooling:
        height, width = int(shape[2]), int(shape[3])
        key = (level, height, width)
        if key not in self._levels:
            bins = 2 ** level
            lp = caffe_pb2.LayerParameter(name=f"{self.layer_name} level {level}", type="Pooling")
            pp = lp.pooling_param
            pp.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(_SPP.PoolMethod.Name(self.param.spp_param.pool))
            kh, kw = -(-height // bins), -(-width // bins)
            pp.kernel_h, pp.kernel_w, pp.stride_h, pp.stride_w = kh, kw, kh, kw
            pp.pad_h, pp.pad_w = (kh * bins - height + 1) // 2, (kw * bins - width + 1) // 2
            pooling = Pooling(lp, self.phase)
            pooling.setup([tuple(shape)])
            self._levels[key] = pooling
        return self._levels[key]

    def forward(self, x):
        if x.dim() != 4:
            self.fail(f"bottom must have 4 axes (N, C, H, W), got shape {shape_str(x.shape)}")
        height = self.param.spp_param.pyramid_height
        if height == 1:
            return self._pooling(0, x.shape)(x)
        levels = [self._pooling(level, x.shape)(x).flatten(1) for level in range(height)]
        return torch.cat(levels, dim=1)
