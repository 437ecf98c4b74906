"""pycaffe's batch helpers for Net: `forward_all`, `forward_backward_all` and the `_batch` generator.

They are plain functions whose first parameter is the net, so that net.py can attach them as methods
(`Net.forward_all = batching.forward_all`) and they can also be called as `forward_all(net, data=...)`.

The net's batch size is the first axis of its first input blob (of its first blob when it has no inputs).  The
arrays are cut into batches of that size, the last one zero-padded; each batch goes through `net.forward` (and
`net.backward`), the results are copied (forward returns views of the blobs) and concatenated, and the padding
is cut off again.

Deliberate differences from pycaffe: a call without input arrays, arrays of different lengths, an unknown
keyword or blob name raise a CaffeError naming them (pycaffe fails with StopIteration or KeyError, or ignores
them); blobs whose first axis is not the batch (e.g. a loss) come back as one entry per batch, stacked;
forward_backward_all un-pads every output and diff (pycaffe's `zip` skips some when there are more outputs than
diffs, or the reverse); the padding keeps the arrays' dtype (pycaffe pads with float64 zeros; the blobs are
float32 either way).
"""
from __future__ import annotations

from itertools import zip_longest
from typing import Iterator

import numpy as np

from caffelike.errors import CaffeError


def batch_size(self) -> int:
    """The first axis of the net's first input blob (or of its first blob), as pycaffe's _batch reads it."""
    if self.inputs:
        shape = self.blobs[self.inputs[0]].shape
    elif self.blobs:
        shape = next(iter(self.blobs.values())).shape
    else:
        raise CaffeError("the net has no blobs, so it has no batch size")
    if not shape or shape[0] <= 0:
        raise CaffeError(f"the net's first blob has shape {tuple(shape)}; batching needs a batch axis of size >= 1")
    return int(shape[0])


def _length(arrays: dict) -> int:
    """The common first-axis length of the arrays, with an error naming them when they disagree."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise CaffeError(f"the arrays to batch have different lengths: {lengths}")
    return next(iter(lengths.values()))


def _batch(self, blobs: dict) -> Iterator[dict]:
    """Yield {name: array slice} batches of the net's batch size; the last batch is padded with zeros."""
    if not blobs:
        return
    arrays = {name: np.asarray(a) for name, a in blobs.items()}
    for name, a in arrays.items():
        if a.ndim == 0:
            raise CaffeError(f"'{name}' is a scalar; batching needs an array with a batch axis")
    num = _length(arrays)
    size = batch_size(self)
    for start in range(0, num - num % size, size):
        yield {name: a[start:start + size] for name, a in arrays.items()}
    remainder = num % size
    if remainder:
        padded = {}
        for name, a in arrays.items():
            padding = np.zeros((size - remainder,) + a.shape[1:], dtype=a.dtype)
            padded[name] = np.concatenate([a[num - remainder:], padding])
        yield padded


def _check_blob_names(self, names, what: str) -> list[str]:
    names = list(names or [])
    unknown = [n for n in names if n not in self.blobs]
    if unknown:
        raise CaffeError(f"{what}: the net has no blob(s) {unknown}; its blobs are {list(self.blobs)}")
    return names


def _gather(self, parts: dict, num: int, size: int, diff: bool) -> dict:
    """Concatenate each blob's per-batch copies and drop the padding rows."""
    out = {}
    for name, chunks in parts.items():
        if not chunks:
            blob = self.blobs[name]
            tail = tuple(blob.shape[1:])
            dtype = (blob.diff if diff else blob.data).dtype
            out[name] = np.zeros((0,) + tail, dtype=dtype)
        elif chunks[0].ndim > 0 and chunks[0].shape[0] == size:
            out[name] = np.concatenate(chunks)[:num]
        else:
            out[name] = np.stack(chunks)
    return out


def forward_all(self, blobs=None, **kwargs) -> dict:
    """Run the net over input arrays of any length, in batches: {output (and each of `blobs`): array}, with one
    row per input row.  The keyword arguments are the net's inputs."""
    if not kwargs:
        raise CaffeError("forward_all needs the input arrays as keyword arguments, e.g. "
                         f"net.forward_all({(self.inputs or ['data'])[0]}=images)")
    names = list(dict.fromkeys(list(self.outputs) + _check_blob_names(self, blobs, "forward_all")))
    num, size = _length(kwargs), batch_size(self)
    parts: dict = {name: [] for name in names}
    for batch in _batch(self, kwargs):
        outs = self.forward(blobs=blobs, **batch)
        for name in names:
            parts[name].append(np.array(outs[name], copy=True))
    return _gather(self, parts, num, size, diff=False)


def forward_backward_all(self, blobs=None, diffs=None, **kwargs) -> tuple[dict, dict]:
    """Forward and backward over arrays of any length, in batches: returns (outputs, diffs).  Keyword
    arguments name the net's inputs (forward data) and/or its outputs (the top diffs for backward); the diffs
    returned are those of the inputs and of `diffs`."""
    if not kwargs:
        raise CaffeError("forward_backward_all needs input arrays and/or output diffs as keyword arguments")
    unknown = sorted(set(kwargs) - set(self.inputs) - set(self.outputs))
    if unknown:
        raise CaffeError(f"forward_backward_all: {unknown} are neither inputs {list(self.inputs)} nor outputs "
                         f"{list(self.outputs)} of the net")
    out_names = list(dict.fromkeys(list(self.outputs) + _check_blob_names(self, blobs, "forward_backward_all")))
    diff_names = list(dict.fromkeys(list(self.inputs) + _check_blob_names(self, diffs, "forward_backward_all")))
    num, size = _length(kwargs), batch_size(self)
    forward_batches = _batch(self, {k: kwargs[k] for k in self.inputs if k in kwargs})
    backward_batches = _batch(self, {k: kwargs[k] for k in self.outputs if k in kwargs})
    all_outs: dict = {name: [] for name in out_names}
    all_diffs: dict = {name: [] for name in diff_names}
    for fb, bb in zip_longest(forward_batches, backward_batches, fillvalue={}):
        outs = self.forward(blobs=blobs, **fb)
        for name in out_names:
            all_outs[name].append(np.array(outs[name], copy=True))
        grads = self.backward(diffs=diffs, **bb)
        for name in diff_names:
            all_diffs[name].append(np.array(grads[name], copy=True))
    return (_gather(self, all_outs, num, size, diff=False), _gather(self, all_diffs, num, size, diff=True))
