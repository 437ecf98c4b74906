"""The benchmarks' one timer.

`interleaved(fns, repeat, warmup, device)` times several callables that do comparable work: each is warmed up
first, then every round runs each of them once, in alternating order (forward in even rounds, reversed in odd
ones), so that slow drifts of the machine (other processes, thermal or frequency changes) fall on all of them
alike.  On CUDA every run is bracketed by torch.cuda.synchronize.  The result per callable is the median and
the quartiles of its per-run times: on a shared, noisy machine the median is the honest summary, and the
quartiles say how noisy it was.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class Timing:
    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "q1_ms": self.q1_ms, "q3_ms": self.q3_ms, "runs": self.runs}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def summarize(seconds: list[float]) -> Timing:
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) >= 4:
        q1, _, q3 = statistics.quantiles(ms, n=4)
    else:
        q1, q3 = ms[0], ms[-1]
    return Timing(statistics.median(ms), q1, q3, len(ms))


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 2,
                device="cpu") -> dict[str, Timing]:
    """Median time of each callable over `repeat` interleaved rounds, after `warmup` calls of each."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    sync(device)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(repeat, 1)):
        for name in names if r % 2 == 0 else reversed(names):
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: summarize(s) for name, s in seconds.items()}


def timed(fn: Callable[[], object], device="cpu") -> tuple[object, float]:
    """(fn(), seconds it took), synchronized: for one-off costs such as compiling."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start
