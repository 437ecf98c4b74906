"""Common layers: the fully connected layer, softmax, and the blob plumbing (Eltwise, Concat, Slice, Split,
Flatten, Reshape, Silence).

Caffe's sources: inner_product_layer.cpp, softmax_layer.cpp, eltwise_layer.cpp, concat_layer.cpp,
slice_layer.cpp, split_layer.cpp, flatten_layer.cpp, reshape_layer.cpp, silence_layer.cpp.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from caffelike.proto import caffe_pb2

from .base import Layer, count, register, shape_str

_ELTWISE = caffe_pb2.EltwiseParameter


def _n_tops(layer: Layer) -> int:
    # A layer built without explicit tops (a test, an auto top) still produces one.
    return max(1, layer.num_tops)


def _legacy_axis(layer: Layer, msg, new: str, old: str, num_axes: int) -> int:
    """Concat's and Slice's axis: the signed `axis`, or the deprecated unsigned alias `old`, never both.
    The alias takes no negative values, as in Caffe, where a negative axis there is almost surely a mistake.
    Resolved once per number of axes (the net's shape pass does it before any torch.compile trace, which
    cannot call protobuf's HasField)."""
    key = ("axis", num_axes)
    if key not in layer.resolved:
        if msg.HasField(new) and msg.HasField(old):
            layer.fail(f"either {new} or {old} should be specified, not both")
        if msg.HasField(old):
            axis = int(getattr(msg, old))
            if axis >= num_axes:
                layer.fail(f"{old} {axis} is out of range for a bottom with {num_axes} axes")
        else:
            axis = layer.canonical_axis(int(getattr(msg, new)), num_axes)
        layer.resolved[key] = axis
    return layer.resolved[key]


@register("InnerProduct")
class InnerProduct(Layer):
    """Fully connected layer: y = x·Wᵀ + b, with x viewed as a matrix (M, K).

    bottom: 1 blob, any shape; M = count(0, axis), K = count(axis, end).
    top:    1 blob, bottom.shape[:axis] + (num_output,).
    blobs:  W (num_output, K), or (K, num_output) with `transpose` (then y = x·W); b (num_output,) if bias_term.
    inner_product_param: num_output, bias_term, weight_filler, bias_filler, axis, transpose.
    K is fixed when the layer is set up: a later bottom with another K fails, as in Caffe.
    Deliberate difference: num_output 0 is refused (Caffe builds an empty layer).
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.inner_product_param
        if p.num_output <= 0:
            self.fail(f"num_output must be set to a positive value, got {p.num_output}")
        shape = bottom_shapes[0]
        axis = self.canonical_axis(p.axis, len(shape))
        self.K = count(shape, axis)
        n = int(p.num_output)
        self.add_blob((self.K, n) if p.transpose else (n, self.K), p.weight_filler)
        if p.bias_term:
            self.add_blob((n,), p.bias_filler)

    def forward(self, x):
        p = self.param.inner_product_param
        axis = self.canonical_axis(p.axis, x.dim())
        k = count(x.shape, axis)
        if k != self.K:
            self.fail(f"Input size incompatible with inner product parameters: bottom {shape_str(x.shape)} "
                      f"gives K = {k} from axis {axis}, the layer was set up with K = {self.K}")
        x2 = x.reshape(count(x.shape, 0, axis), k)
        weight = self.blobs[0]
        bias = self.blobs[1] if p.bias_term else None
        if p.transpose:
            y = x2 @ weight
            if bias is not None:
                y = y + bias
        else:
            y = F.linear(x2, weight, bias)
        return y.reshape(*x.shape[:axis], y.shape[1])


@register("Softmax")
class Softmax(Layer):
    """y_c = exp(x_c - max x) / Σ_c' exp(x_c' - max x) along `axis`, independently at every other position.

    bottom: 1 blob, any shape.  top: 1 blob, same shape.
    softmax_param: axis (negative counts from the end).  `engine` is accepted and ignored (same math).
    """
    exact_bottoms = exact_tops = 1

    def forward(self, x):
        return torch.softmax(x, self.canonical_axis(self.param.softmax_param.axis, x.dim()))


class _EltwiseProd(torch.autograd.Function):
    """y = x_0·x_1·…·x_n with Caffe's backward, which autograd of a chain of products does not reproduce:
    stable_prod_grad multiplies the other bottoms in bottom order (Caffe's rounding), otherwise each bottom's
    gradient is dy·(y / x_i), which is inf/nan where x_i = 0, exactly as in Caffe."""

    @staticmethod
    def forward(ctx, stable: bool, *xs):
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
        ctx.stable = stable
        ctx.save_for_backward(y, *xs)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, *xs = ctx.saved_tensors
        grads = []
        for i, xi in enumerate(xs):
            if not ctx.needs_input_grad[i + 1]:
                grads.append(None)
            elif ctx.stable:
                others = [x for j, x in enumerate(xs) if j != i]
                prod = others[0]
                for x in others[1:]:
                    prod = prod * x
                grads.append(prod * dy)
            else:
                grads.append((y / xi) * dy)
        return (None, *grads)


@register("Eltwise")
class Eltwise(Layer):
    """Element-wise combination of bottoms of one shape (no broadcasting).

    SUM:  y = Σ_i c_i·x_i (c_i = 1 without coeff), dx_i = c_i·dy.
    PROD: y = Π_i x_i; dx_i = dy·Π_{j≠i} x_j (stable_prod_grad, default) or dy·y/x_i.
    MAX:  y = max_i x_i; dx goes to the winner only.  Tie rule: between bottoms 0 and 1 a tie goes to
          bottom 1; a later bottom takes over only when strictly greater.
    bottom: >= 2 blobs, all of one shape.  top: 1 blob, that shape.
    eltwise_param: operation, coeff (none, or one per bottom; SUM only, ignored by MAX as in Caffe),
    stable_prod_grad.
    """
    min_bottoms = 2
    exact_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.eltwise_param
        if len(p.coeff) not in (0, len(bottom_shapes)):
            self.fail(f"takes one coefficient per bottom blob: {len(bottom_shapes)} bottoms, "
                      f"got {len(p.coeff)} coeff values")
        if p.operation == _ELTWISE.PROD and len(p.coeff):
            self.fail("coeff is only allowed with operation SUM, got operation PROD")
        self.coeff = [float(c) for c in p.coeff]  # plain floats: forward stays traceable by torch.compile

    def forward(self, *xs):
        for i, x in enumerate(xs[1:], start=1):
            if x.shape != xs[0].shape:
                self.fail(f"all bottoms must have the same shape: bottom 0 is {shape_str(xs[0].shape)}, "
                          f"bottom {i} is {shape_str(x.shape)}")
        p = self.param.eltwise_param
        if p.operation == _ELTWISE.SUM:
            coeff = self.coeff or [1.0] * len(xs)
            y = None
            for c, x in zip(coeff, xs):
                term = x if c == 1.0 else c * x
                y = term if y is None else y + term
            return y
        if p.operation == _ELTWISE.PROD:
            return _EltwiseProd.apply(bool(p.stable_prod_grad), *xs)
        if p.operation == _ELTWISE.MAX:
            # Nested torch.where routes the gradient exactly like Caffe's argmax mask: where(c, a, b)
            # sends dy to a where c holds and to b elsewhere, so ties stay with the earlier winner.
            y = torch.where(xs[0] > xs[1], xs[0], xs[1])
            for x in xs[2:]:
                y = torch.where(x > y, x, y)
            return y
        self.fail(f"unknown operation {p.operation}")


@register("Concat")
class Concat(Layer):
    """y = the bottoms joined along `axis`.

    bottom: >= 1 blobs with equal shapes except along the axis.
    top: 1 blob, the axis being the sum of the bottoms' sizes.
    concat_param: axis (negative counts from the end) or the deprecated concat_dim, not both.
    """
    min_bottoms = 1
    exact_tops = 1

    def forward(self, *xs):
        first = xs[0]
        axis = _legacy_axis(self, self.param.concat_param, "axis", "concat_dim", first.dim())
        for i, x in enumerate(xs[1:], start=1):
            if x.dim() != first.dim():
                self.fail(f"all inputs must have the same number of axes: bottom 0 is {shape_str(first.shape)}, "
                          f"bottom {i} is {shape_str(x.shape)}")
            if any(a != b for j, (a, b) in enumerate(zip(first.shape, x.shape)) if j != axis):
                self.fail(f"all inputs must have the same shape except at axis {axis}: bottom 0 is "
                          f"{shape_str(first.shape)}, bottom {i} is {shape_str(x.shape)}")
        return torch.cat(xs, dim=axis)


@register("Slice")
class Slice(Layer):
    """The bottom cut along `axis` into one piece per top: [0, p_0), [p_0, p_1), …, [p_last, dim).

    bottom: 1 blob.  tops: >= 1 blobs.
    slice_param: axis (negative counts from the end) or the deprecated slice_dim, not both; slice_point
    (#tops - 1 strictly increasing positive points), or none for an even split (dim divisible by #tops).
    """
    exact_bottoms = 1
    min_tops = 1

    def forward(self, x):
        p = self.param.slice_param
        axis = _legacy_axis(self, p, "axis", "slice_dim", x.dim())
        dim = x.shape[axis]
        n = _n_tops(self)
        if "points" not in self.resolved:
            self.resolved["points"] = [int(v) for v in p.slice_point]
        points = self.resolved["points"]
        if points:
            if len(points) != n - 1:
                self.fail(f"needs #tops - 1 = {n - 1} slice_point values for {n} tops, got {len(points)}")
            if n > dim:
                self.fail(f"cannot cut axis {axis} of size {dim} into {n} pieces")
            prev = 0
            for pt in points:
                if pt <= prev:
                    self.fail(f"slice_point values must be positive and strictly increasing, got {points}")
                prev = pt
            if prev > dim:
                self.fail(f"slice_point {prev} lies beyond axis {axis} of size {dim}")
            edges = [0, *points, dim]
            sizes = [b - a for a, b in zip(edges, edges[1:])]
        else:
            if dim % n:
                self.fail(f"the number of tops ({n}) must evenly divide axis {axis} of size {dim}")
            sizes = [dim // n] * n
        pieces = torch.split(x, sizes, dim=axis)
        return pieces[0] if n == 1 else tuple(pieces)


@register("Split")
class Split(Layer):
    """Every top is the bottom.  Each top is a view of its own, so autograd sums their gradients (Caffe's
    backward: dx = Σ_t dy_t).

    bottom: 1 blob.  tops: >= 1 blobs, same shape.  No parameters; in-place use is forbidden.
    """
    exact_bottoms = 1
    min_tops = 1
    forbids_in_place = True

    def forward(self, x):
        n = _n_tops(self)
        tops = tuple(x.view_as(x) for _ in range(n))
        return tops[0] if n == 1 else tops


@register("Flatten")
class Flatten(Layer):
    """Merges axes [axis, end_axis] into one: a view of the bottom.

    bottom: 1 blob.  top: bottom.shape[:axis] + (count(axis, end_axis + 1),) + bottom.shape[end_axis + 1:].
    flatten_param: axis, end_axis (negatives count from the end).  end_axis = axis - 1 inserts an axis of
    size 1, as Caffe's count of an empty range is 1.  In-place use is forbidden.
    """
    exact_bottoms = exact_tops = 1
    forbids_in_place = True

    def forward(self, x):
        p = self.param.flatten_param
        start = self.canonical_axis(p.axis, x.dim())
        end = self.canonical_axis(p.end_axis, x.dim(), "end_axis")
        if end + 1 < start:
            self.fail(f"end_axis ({end}) must not lie before axis - 1 ({start - 1}) "
                      f"for a bottom of shape {shape_str(x.shape)}")
        shape = (*x.shape[:start], count(x.shape, start, end + 1), *x.shape[end + 1:])
        return x.reshape(shape)


@register("Reshape")
class Reshape(Layer):
    """A view of the bottom with bottom axes [start, end) replaced by `shape`'s dims.

    bottom: 1 blob.  top: same count.
    reshape_param: shape (dim 0 copies the bottom dim at position start + i, one dim of -1 is inferred
    from the count), axis (start; negative counts from after the last axis, so -1 appends), num_axes
    (how many bottom axes are replaced, -1 for all to the end).  In-place use is forbidden.
    """
    exact_bottoms = exact_tops = 1
    forbids_in_place = True

    def __init__(self, param, phase):
        super().__init__(param, phase)
        dims = [int(d) for d in param.reshape_param.shape.dim]
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            self.fail(f"new shape {shape_str(dims)} contains {len(inferred)} dims of -1; at most one may be given")
        bad = [d for d in dims if d < -1]
        if bad:
            self.fail(f"new shape {shape_str(dims)} has a dim below -1 ({bad[0]})")
        if param.reshape_param.num_axes < -1:
            self.fail(f"num_axes must be >= 0, or -1 for all, got {param.reshape_param.num_axes}")
        self.dims = dims
        self.inferred_axis = inferred[0] if inferred else None

    def forward(self, x):
        p = self.param.reshape_param
        n = x.dim()
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        if not 0 <= start <= n:
            self.fail(f"axis {p.axis} is out of range for a bottom with {n} axes")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            self.fail(f"axis + num_axes = {end} is out of range for a bottom with {n} axes")
        shape = [*x.shape[:start], *self.dims, *x.shape[end:]]
        for i in self.copy_axes:
            if start + i >= n:
                self.fail(f"new shape contains a 0 at position {i}, but the bottom {shape_str(x.shape)} "
                          f"has no axis {start + i} to copy")
            shape[start + i] = x.shape[start + i]
        total = count(x.shape)
        if self.inferred_axis is not None:
            shape[start + self.inferred_axis] = 1
            known = count(shape)
            if known == 0 or total % known:
                self.fail(f"bottom count ({total}) of {shape_str(x.shape)} must be divisible by the product "
                          f"of the specified dimensions ({known})")
            shape[start + self.inferred_axis] = total // known
        if count(shape) != total:
            self.fail(f"output count must match input count: bottom {shape_str(x.shape)} ({total}), "
                      f"top {shape_str(shape)} ({count(shape)})")
        return x.reshape(shape)


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms and produces nothing; they get no gradient from it (Caffe writes zeros).

    bottom: >= 1 blobs, any shapes.  top: none.
    """
    min_bottoms = 1
    exact_tops = 0

    def forward(self, *xs):
        return ()
