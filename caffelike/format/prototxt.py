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


def _first_bad_byte(data: bytes) -> int | None:
    """The offset of the first byte a text prototxt cannot hold (a NUL, or one that is not UTF-8), or None."""
    nul = data.find(b"\x00")
    try:
        data.decode("utf-8")
        bad = None
    except UnicodeDecodeError as e:
        bad = e.start
    found = [i for i in (bad, nul if nul >= 0 else None) if i is not None]
    return min(found) if found else None


def _looks_binary(data: bytes) -> bool:
    """Binary protobuf unless the bytes read as text: UTF-8 without NUL, or a text file with a few bad bytes in
    it (its first non-blank character starts a field name or a comment, and at most one byte in a hundred is a
    control character or not UTF-8).  A binary message starts with a field tag and is full of length bytes."""
    if _first_bad_byte(data) is None:
        return False
    text = data.decode("utf-8", errors="replace")
    start = text.lstrip()
    if not start or not (start[0].isascii() and (start[0].isalpha() or start[0] in "#_")):
        return True
    odd = sum(1 for ch in text if ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f\v"))
    return odd > len(data) // 100 + 1


def _bad_text(path: str, data: bytes, what: str) -> PrototxtError:
    at = _first_bad_byte(data)
    line = data.count(b"\n", 0, at) + 1
    col = at - (data.rfind(b"\n", 0, at) + 1) + 1
    kind = "a NUL byte" if data[at] == 0 else f"byte 0x{data[at]:02x}, which is not UTF-8"
    return PrototxtError(f"{path}:{line}:{col}: the text {what} file holds {kind}; a text prototxt must be "
                         "UTF-8 without NUL bytes (the file is corrupt, or was saved in another encoding)")


def read_message(path: str, msg: message.Message, what: str = "prototxt") -> message.Message:
    """Read a text or binary message file; binary is detected by content, as files in the wild mix them."""
    data = _read_bytes(path, what)
    if _looks_binary(data):
        try:
            msg.ParseFromString(data)
        except message.DecodeError as e:
            raise PrototxtError(f"{path}: not a valid binary {type(msg).__name__} ({e})") from None
        return msg
    if _first_bad_byte(data) is not None:
        raise _bad_text(path, data, what)
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
