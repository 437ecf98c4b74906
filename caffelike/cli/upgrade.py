"""Caffe's upgrade tools: `caffelike upgrade_net_proto_text IN OUT`, `upgrade_net_proto_binary IN OUT` and
`upgrade_solver_proto_text IN OUT` rewrite a V0/V1 net (or an old solver) in the current format, as
tools/upgrade_*.cpp do.  The verb picks the format; the output is written atomically."""
from __future__ import annotations

import logging

from google.protobuf import text_format

from caffelike.format.files import atomic_write
from caffelike.format.prototxt import parse_text, read_message
from caffelike.format.upgrade import net_needs_upgrade, upgrade_net, upgrade_solver
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("input", help="the file to upgrade")
    p.add_argument("output", help="where to write the upgraded file")


def run(args) -> int:
    verb = args.command
    if verb == "upgrade_solver_proto_text":
        with open(args.input) as f:
            solver = parse_text(f.read(), caffe_pb2.SolverParameter(), args.input)
        if not upgrade_solver(solver, args.input):
            log.error("File already in latest proto format: %s", args.input)
        atomic_write(args.output, text_format.MessageToString(solver).encode())
        log.info("Wrote upgraded SolverParameter text proto to %s", args.output)
        return 0
    binary = verb == "upgrade_net_proto_binary"
    net = read_message(args.input, caffe_pb2.NetParameter(), "net")
    if net_needs_upgrade(net):
        upgrade_net(net, args.input)
    else:
        log.error("File already in latest proto format: %s", args.input)
    data = net.SerializeToString() if binary else text_format.MessageToString(net).encode()
    atomic_write(args.output, data)
    log.info("Wrote upgraded NetParameter %s proto to %s", "binary" if binary else "text", args.output)
    return 0
