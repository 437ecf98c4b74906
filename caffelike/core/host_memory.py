"""Keep freed host memory for reuse instead of handing it back to the kernel at every free.

torch allocates every CPU tensor with malloc and frees it when the last reference goes, so each forward pass
allocates all its activations anew.  glibc serves blocks above its mmap threshold (at most 32 MiB) with a fresh
mmap and returns them with munmap, and trims the heap top above the trim threshold: the next pass page-faults
(and the kernel zeroes) all that memory again.  GoogLeNet at batch 16 has activations of 38-51 MiB; a (16, 192,
56, 56) multiply took 7x longer into a fresh tensor than into a reused one, and keeping freed memory made the
pycaffe forward of GoogLeNet at batch 16 about 1.2x faster (docs/performance.md).  Caffe never has this cost: its
blobs keep their memory from one pass to the next.

`keep_freed_memory()` tells glibc (mallopt) to serve large blocks from the heap and not to trim it: the
process keeps its high-water mark of heap memory, as Caffe keeps its blobs, and every later pass reuses it.
It acts once per process, on Linux with glibc only; CAFFELIKE_KEEP_HOST_MEMORY=0 turns it off (a process that
wants its memory back after a peak, or that sets its own allocator, e.g. jemalloc through LD_PRELOAD).
"""
from __future__ import annotations

import ctypes
import os
import sys

ENV = "CAFFELIKE_KEEP_HOST_MEMORY"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_state = {"done": False, "applied": False}


def keep_freed_memory() -> bool:
    """Apply the setting once per process (see the module docstring); True when it is in effect."""
    if _state["done"]:
        return _state["applied"]
    _state["done"] = True
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others have no (or another) mallopt
            return False
    except (OSError, AttributeError):
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    # No mmap for large blocks (they come from the heap and stay there once freed), and no trimming of the heap.
    _state["applied"] = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _state["applied"]
