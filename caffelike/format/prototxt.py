"""Reading Caffe's message files: text prototxt or binary protobuf, upgraded like Caffe's ReadNetParams*.

Errors name the file, and for text files the line and column, e.g.
`lenet.prototxt:12:5: Message type "caffe.LayerParameter" has no field named "bottm".`
"""
from __future__ import annotations

import os
import re

from google.protobuf import message, text_format

from caffelike.errors import PrototxtError
from caffelike.proto import caffe_pb2

_LOCATION = re.compile(r"^(\d+):(\d+)\s*:\s*")


def parse_text(text: str, msg: message.Message, source: str = "<string>") -> message.Message:
    """Merge prototxt `text` into `msg`; a syntax error becomes a PrototxtError naming source:line:col."""
    try:
        text_format.Merge(text, msg)
    except text_format.ParseError as e:
        detail = str(e)
        line, col = e.GetLine(), e.GetColumn()
        m = _LOCATION.match(detail)
        if m:
            detail = detail[m.end():]
        where = f"{source}:{line}:{col}" if line else source
        raise PrototxtError(f"{where}: {detail}") from None
    return msg


def _read_bytes(path: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise PrototxtError(f"Could not open {what} file {path!r}: no such file")
    with open(path, "rb") as f:
        return f.read()


def _looks_binary(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\x00" in data


def read_message(path: str, msg: message.Message, what: str = "prototxt") -> message.Message:
    """Read a text or binary message file; binary is detected by content, as files in the wild mix them."""
    data = _read_bytes(path, what)
    if _looks_binary(data):
        try:
            msg.ParseFromString(data)
        except message.DecodeError as e:
            raise PrototxtError(f"{path}: not a valid binary {type(msg).__name__} ({e})") from None
        return msg
    return parse_text(data.decode("utf-8"), msg, path)


def read_net(path: str) -> caffe_pb2.NetParameter:
    """A NetParameter from a prototxt (or binary) file, upgraded from V0/V1 formats as Caffe does."""
    from caffelike.format.upgrade import upgrade_net

    net = read_message(path, caffe_pb2.NetParameter(), "net")
    upgrade_net(net, path)
    return net


def parse_net(text: str, source: str = "<string>") -> caffe_pb2.NetParameter:
    from caffelike.format.upgrade import upgrade_net

    net = parse_text(text, caffe_pb2.NetParameter(), source)
    upgrade_net(net, source)
    return net


def read_solver(path: str) -> caffe_pb2.SolverParameter:
    from caffelike.format.upgrade import upgrade_solver

    solver = read_message(path, caffe_pb2.SolverParameter(), "solver")
    upgrade_solver(solver, path)
    return solver
