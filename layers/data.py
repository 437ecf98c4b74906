"""Layers that bring data into the net.  For now: Input (the later data layers come with training)."""
from __future__ import annotations

from caffelike.layers.base import Layer, register


@register("Input")
class Input(Layer):
    """Net inputs: no bottoms, one top per input blob, whose data the user sets (pycaffe `blob.data[...] = x`
    or `net.forward(name=array)`).  `input_param.shape`: none (shape set later by reshape), one (shared by
    every top) or one per top.  The net never runs this layer; its tops simply hold what was written."""

    exact_bottoms = 0
    min_tops = 1

    def infer_top_shapes(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        n = len(self.param.top)
        if not shapes:
            return [(0,)] * n
        if len(shapes) == 1:
            return shapes * n
        if len(shapes) != n:
            self.fail(f"input_param needs 0, 1 or {n} shapes (one per top), got {len(shapes)}")
        return shapes

    def forward(self):
        raise RuntimeError("Input layers are not run; their tops are set from outside the net")
