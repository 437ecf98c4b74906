"""Exceptions caffelike raises for bad input.  Each names the file, line, layer or blob at fault."""


class CaffeError(RuntimeError):
    """Base of caffelike's errors.  A RuntimeError, as pycaffe raises for the same faults."""


class PrototxtError(CaffeError):
    """A prototxt that does not parse, or a net description that breaks Caffe's rules."""


class LayerError(CaffeError):
    """A layer that cannot be built or run with the given parameters or bottoms."""


class WeightsError(CaffeError):
    """A .caffemodel that is missing, truncated, or does not fit the net."""


class OutputError(CaffeError, OSError):
    """A file caffelike was asked to write cannot be written (a missing folder, no permission, a full disk).
    Also an OSError, so code that handles failed writes keeps handling it."""


def shape_str(shape) -> str:
    """A shape the way every caffelike message spells it: `(2, 3, 4, 5)`."""
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"
