"""The net: Caffe's NetState rules (`netstate`), Split insertion (`splits`), the torch graph built from a
NetParameter (`graph`, with `backward_plan` deciding which gradients it computes), and pycaffe's `Net` on top of
it (`net`, with `batching` for forward_all).

The names below are the room's public face; other rooms import them from `caffelike.net`, never from the
modules behind it.
"""
from caffelike.net.graph import NetGraph
from caffelike.net.net import Net
from caffelike.net.netstate import filter_net, layer_included, make_state

__all__ = ["Net", "NetGraph", "filter_net", "layer_included", "make_state"]
