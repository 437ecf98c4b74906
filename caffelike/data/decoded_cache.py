"""Decoded images kept for the next epoch.

A Data layer over encoded Datums (PNG or JPEG bytes, what DIGITS and `convert_imageset --encoded` write) decodes
every record again at every epoch, as Caffe does.  Decoding is deterministic, so the pixels of a record seen
before can be served from memory: the batches stay bit-identical, only the decoding time goes (Pillow spends
about 25 us on a 28x28 PNG, most of an MNIST record's cost).

The cache is keyed by the serialized record itself, not by its database key, so a record rewritten in place can
never be served stale.  Each reader fills its own cache up to a byte budget and then stops adding (no
eviction: a data set larger than the budget is read in the same order every epoch, where an LRU would only
churn).  CAFFELIKE_DATA_CACHE_MB sets the budget per data layer (and per worker process); 0 turns caching off.
"""
from __future__ import annotations

import math
import os

from caffelike.errors import CaffeError

ENV = "CAFFELIKE_DATA_CACHE_MB"
DEFAULT_MB = 512

# What one entry costs beyond its bytes and pixels (dict slot, tuple, array header), roughly.
_ENTRY_OVERHEAD = 200


def budget_bytes() -> int:
    """The per-layer budget from the environment (DEFAULT_MB when unset)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return DEFAULT_MB << 20
    try:
        mb = float(value)
    except ValueError:
        mb = math.nan
    if not math.isfinite(mb):
        raise CaffeError(f"{ENV} must be a number of megabytes (0 turns the decoded-image cache off), "
                         f"got {value!r}")
    return max(0, int(mb * (1 << 20)))


class DecodedCache:
    """record bytes -> (read-only pixels, label), up to `budget` bytes.  Created empty wherever it is
    unpickled, so a worker process starts its own instead of receiving the parent's."""

    def __init__(self, budget: int):
        self.budget = budget
        self._entries: dict[bytes, tuple] = {}
        self._used = 0

    def __getstate__(self):
        return {"budget": self.budget}

    def __setstate__(self, state):
        self.__init__(state["budget"])

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._used

    def get(self, record: bytes):
        return self._entries.get(record)

    def put(self, record: bytes, pixels, label) -> None:
        size = len(record) + pixels.nbytes + _ENTRY_OVERHEAD
        if self._used + size > self.budget:
            return
        pixels.setflags(write=False)  # shared by every later batch: nobody may write into it
        self._entries[record] = (pixels, label)
        self._used += size
