"""How much memory a blob may take.  With overcommit an oversized torch allocation does not fail: filling it
gets the process killed by the kernel, so a size beyond the memory available now is refused before allocating."""
from __future__ import annotations

import math
import os


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (Linux's MemAvailable, else the machine's RAM; None
    where the platform says neither)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def oversized(shape, itemsize: int = 4) -> str | None:
    """Why a float32 tensor of `shape` cannot be allocated (its bytes against the memory available), or None."""
    needed = math.prod(int(d) for d in shape) * itemsize
    if needed < 1 << 28:  # small blobs are never the problem; reading /proc for each would slow building
        return None
    limit = available_memory()
    if limit is not None and needed > 0.8 * limit:  # (the rest of the net and the process need some too)
        return f"needs {needed:,} bytes, more than 80% of the {limit:,} bytes of memory available"
    return None


def allocation_problem(shape, itemsize: int = 4) -> str | None:
    """Why a tensor of `shape` must not be allocated (a negative dimension, or too many bytes), or None."""
    if any(int(d) < 0 for d in shape):
        return "would have a negative dimension"
    problem = oversized(shape, itemsize)
    return f"cannot be allocated: it {problem}" if problem else None
