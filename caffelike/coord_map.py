"""pycaffe's caffe.coord_map: how coordinates of one NetSpec top relate to those of another, and `crop` to align
them (the Crop layers of FCN's net definitions).

    from caffelike import layers as L, params as P
    from caffelike.coord_map import coord_map_from_to, crop

    n.upscore = L.Deconvolution(n.score_fr, kernel_size=64, stride=32, num_output=21, bias_term=False)
    n.score = crop(n.upscore, n.data)   # in FCN-32s: L.Crop(n.upscore, n.data, crop_param=dict(axis=2, offset=[19]))

A coordinate map is a triple `(axis, a, b)`: along the spatial axes from `axis` on, position `x` of the top maps
to position `a * x + b` of the other top.  `a` and `b` are numpy arrays with one value per spatial axis (one value
when every layer on the way gives one); `axis` is None for a map that works along any axis (pass-through layers).
A layer maps its bottom to its top as follows:
  Convolution, Pooling, Im2col   a = 1 / stride,  b = (pad - (k - 1) / 2) / stride   (k the dilated kernel extent)
  Deconvolution                  a = stride,      b = (k - 1) / 2 - pad
  Crop                           a = 1,           b = -offset, on axis crop_param.axis - 1 (only the first bottom)
  pass-through (PASS_THROUGH_LAYERS: ReLU, BatchNorm, Eltwise, ...): the identity
and any other layer type has no map (UndefinedMapException), which stops the walk there.

The parameters are read from what the `L.<Type>(...)` call set on the layer, wherever the keywords went
(`kernel_size=3` or `convolution_param=dict(kernel_size=3)`, Deconvolution's keywords in convolution_param),
with caffe.proto's defaults (stride 1, pad 0, dilation 1, convolution axis 1, crop axis 2, offset 0).

Errors, as pycaffe raises them: legacy kernel_h/_w, stride_h/_w and pad_h/_w are an AssertionError, tops with no
common spatial ancestor a RuntimeError, and `crop` raises AssertionError when the scales differ, the offset would be
negative (the top is smaller than the reference) or the offset is not a whole number.  These are raised explicitly,
so they hold under `python -O` too.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from caffelike.net_spec import Function, Top
from caffelike.net_spec import layers as L

__all__ = ["PASS_THROUGH_LAYERS", "UndefinedMapException", "AxisMismatchException", "conv_params", "crop_params",
           "coord_map", "compose", "inverse", "coord_map_from_to", "crop"]

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp", "MVN",
                       "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]

_CONV_LIKE = ("Convolution", "Pooling", "Im2col")
_LEGACY_FIELDS = ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w")
_LEGACY_MESSAGE = "cropping does not support legacy _h/_w params"


class UndefinedMapException(Exception):
    """The layer's type has no coordinate map (InnerProduct, Concat, ...)."""


class AxisMismatchException(Exception):
    """Two maps composed along different axes."""


def _values(repeated, default) -> np.ndarray:
    return np.array(list(repeated) if len(repeated) else [default], ndmin=1)


def _layer(fn: Function):
    """The LayerParameter the L.<Type>(...) call filled (keywords applied, name and tops not yet given)."""
    return fn._template


def conv_params(fn: Function) -> tuple:
    """(axis, stride, dilated kernel extent, pad) of a Convolution, Deconvolution, Im2col or Pooling layer; the
    last three are arrays with one value per spatial axis, or one value for all of them."""
    lp = _layer(fn)
    if fn.type_name == "Pooling":
        p = lp.pooling_param
        if any(p.HasField(f) for f in _LEGACY_FIELDS):
            raise AssertionError(_LEGACY_MESSAGE)
        if p.global_pooling:
            raise UndefinedMapException(f"global {fn.type_name} has no coordinate map")
        if not p.HasField("kernel_size"):
            raise ValueError(f"{fn.type_name}: no kernel_size to map coordinates through")
        axis, kernel = 1, np.array([p.kernel_size], ndmin=1)
        stride, pad, dilation = np.array([p.stride], ndmin=1), np.array([p.pad], ndmin=1), np.array([1])
    else:
        p = lp.convolution_param
        if any(p.HasField(f) for f in _LEGACY_FIELDS):
            raise AssertionError(_LEGACY_MESSAGE)
        if not len(p.kernel_size):
            raise ValueError(f"{fn.type_name}: no kernel_size to map coordinates through")
        axis, kernel = p.axis, _values(p.kernel_size, 1)
        stride, pad, dilation = _values(p.stride, 1), _values(p.pad, 0), _values(p.dilation, 1)
    return axis, stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn: Function) -> tuple:
    """(axis, offset) of a Crop layer: crop_param.axis (default 2) and the offsets (default 0) as an array."""
    p = _layer(fn).crop_param
    return p.axis, _values(p.offset, 0)


def coord_map(fn: Function) -> tuple:
    """The map (axis, a, b) from the layer's bottom coordinates to its top's; identity is (None, 1, 0)."""
    if fn.type_name in _CONV_LIKE:
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # the map's axis is the last one left whole, as the conv maps count it
    raise UndefinedMapException(f"{fn.type_name} layers have no coordinate map")


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """`base_map` followed by `next_map`: the scales multiply and next's shift is scaled by base's scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"cannot compose a map along axis {ax1} with one along axis {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map: tuple) -> tuple:
    """The map back: scale 1 / a, shift -b / a."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mappable_bottoms(top: Top) -> tuple:
    """The bottoms a walk goes on through: all of them, except that a Crop's reference (second) bottom only gives
    the size and is not mapped."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _walk(start: Top):
    """Yield (top, map from `top` to `start`) from `start` back through its mappable ancestors."""
    maps = {start: (None, 1, 0)}
    queue = deque([start])
    while queue:
        top = queue.popleft()
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            maps[bottom] = compose(maps[top], step)
            queue.append(bottom)


def _check_top(value, name: str) -> Top:
    if not isinstance(value, Top):
        hint = " (a layer with ntop > 1 returns a tuple: pass one of its tops)" if isinstance(value, tuple) else ""
        raise TypeError(f"coord_map: {name} must be a Top from L.<Type>(...) or a NetSpec, got "
                        f"{type(value).__name__}{hint}")
    return value


def coord_map_from_to(top_from: Top, top_to: Top) -> tuple:
    """The map (axis, a, b) from `top_from`'s coordinates to `top_to`'s, found through their nearest common
    ancestor: coordinate x of top_from is coordinate a * x + b of top_to.  RuntimeError when no spatial path
    connects them."""
    _check_top(top_from, "top_from")
    _check_top(top_to, "top_to")
    from_maps = dict(_walk(top_from))
    for top, to_map in _walk(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from: Top, top_to: Top) -> Top:
    """An L.Crop layer that crops `top_from` to the size and alignment of `top_to`, its axis and offsets computed
    from the coordinate map between them."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    if not np.all(a == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(b <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    offset = [int(v) for v in np.atleast_1d(-np.round(b))]
    param = dict(offset=offset) if ax is None else dict(axis=int(ax) + 1, offset=offset)
    return L.Crop(top_from, top_to, crop_param=param)
