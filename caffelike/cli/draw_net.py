"""`caffelike draw NET_PROTOTXT OUTPUT [--rankdir LR] [--phase TRAIN|TEST|ALL] [--display_lrm]`: draw a net.

Caffe's python/draw_net.py: the format comes from OUTPUT's extension (.png, .svg, .pdf, ... rendered by
Graphviz's `dot`; .dot, .gv or .raw for the DOT text, which needs nothing installed).  See caffelike.draw for what
the picture shows.

Differences from draw_net.py: the prototxt is read with Caffe's upgrade (V0/V1 nets draw with their current layer
type names), --phase is case-insensitive, and errors (no such file, no `dot`) are one line, not a traceback.
"""
from __future__ import annotations

from caffelike.errors import CaffeError
from caffelike.proto import caffe_pb2

_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


def add_arguments(p) -> None:
    p.add_argument("input_net_proto_file", metavar="NET_PROTOTXT", help="the network prototxt to draw")
    p.add_argument("output_image_file", metavar="OUTPUT",
                   help="the picture to write; its extension picks the format (.png, .svg, .pdf, .dot, .raw, ...)")
    p.add_argument("--rankdir", default="LR",
                   help="Graphviz layout direction: LR (left to right, the default), RL, TB (top to bottom) or BT")
    p.add_argument("--phase", default="ALL",
                   help="which phase's layers to draw: TRAIN, TEST, or ALL (every layer, the default)")
    p.add_argument("--display_lrm", "--display-lrm", action="store_true", dest="display_lrm",
                   help="show the learning rate multipliers of Convolution, Deconvolution and InnerProduct layers")


def run(args) -> int:
    from caffelike.draw import draw_net_to_file
    from caffelike.format.prototxt import read_net

    phase_name = args.phase.upper()
    if phase_name not in _PHASES:
        raise CaffeError(f"--phase must be TRAIN, TEST or ALL, got {args.phase!r}")
    net = read_net(args.input_net_proto_file)
    print(f"Drawing net to {args.output_image_file}")
    draw_net_to_file(net, args.output_image_file, args.rankdir, _PHASES[phase_name], args.display_lrm)
    return 0
