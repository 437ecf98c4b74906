"""Batches prepared ahead of use, in a fixed order (Caffe's BasePrefetchingDataLayer, with several workers).

A data layer splits the making of a batch in two:
  * `plan()`     — sequential: which records come next, the random draws for them, a shuffle at a wrap-around.
                   Everything that decides *what* a batch holds is here, and plans run strictly one after the
                   other in ticket order, so the batches are exactly those of a synchronous read.
  * `build(job)` — the expensive part, run in parallel: read files, decode images (Pillow and numpy release
                   the GIL for much of it), transform, fill the batch arrays.
Both run on daemon worker threads.  `Prefetcher.next()` keeps `depth` tickets in flight and returns the
batches in ticket order; the consumer's thread only waits for results (it never competes for the GIL with
per-record work, which would stall the pipeline).  An exception raised while planning or building a batch is
re-raised, unchanged, by the `next()` that would have returned it.

`close()` (also run when the Prefetcher is garbage-collected or the interpreter exits) stops the workers, so
nothing hangs at exit.  `depth=0` plans and builds every batch synchronously inside `next()`.
"""
from __future__ import annotations

import inspect
import os
import queue
import threading
import weakref
from collections import deque
from concurrent.futures import Future
from typing import Callable, Generic, TypeVar

from caffelike.errors import CaffeError

Job = TypeVar("Job")
Batch = TypeVar("Batch")

_JOIN_TIMEOUT_S = 5.0

# Worker threads for every Prefetcher made from now on (None: decided by `default_workers`).
WORKERS: int | None = None

# Below this many values per item, a batch's cost is mostly Python overhead that holds the GIL (per-record
# calls, Pillow's chunk parsing of small PNGs): extra threads only contend for the GIL and slow the pipeline.
# Above it, decoding and transforming run in C with the GIL released, and threads add up (measured on
# 28x28 PNGs: 2 workers 0.5x of 1; on 256x256 JPEGs: 2 workers 1.5x of 1, 4 workers 1.6x, on 2 cores).
SMALL_ITEM = 16384


def default_workers(depth: int, item_size: int | None = None) -> int:
    """Worker threads for `depth` batches in flight of items of `item_size` values: `WORKERS` when set; else
    one for small items (or unknown size), otherwise one per core, at most `depth` and at most 4."""
    if WORKERS is not None:
        return max(1, int(WORKERS))
    if item_size is None or item_size < SMALL_ITEM:
        return 1
    return max(1, min(depth, os.cpu_count() or 1, 4))


class _Shared:
    """What the workers and the finalizer share (never the Prefetcher itself, so it can be collected)."""

    def __init__(self):
        self.tickets: queue.SimpleQueue = queue.SimpleQueue()
        self.turn = threading.Condition()
        self.next_plan = 0  # the ticket whose plan runs next
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.pending: deque[Future] = deque()


def _weak(fn: Callable) -> Callable[[], Callable | None]:
    """A reference to `fn` that does not keep a bound method's object (the data layer) alive, so dropping the
    layer drops its Prefetcher at once and the finalizer stops the workers."""
    if inspect.ismethod(fn):
        return weakref.WeakMethod(fn)
    return lambda: fn


def _work(shared: _Shared) -> None:
    while True:
        item = shared.tickets.get()
        if item is None:
            return
        future, seq, plan_ref, build_ref = item
        item = None
        wanted = future.set_running_or_notify_cancel()  # a cancelled ticket is planned (skipped), not built
        job = error = None
        with shared.turn:
            while shared.next_plan != seq and not shared.stopping:
                shared.turn.wait()
            plan = plan_ref()
            if shared.stopping or plan is None:
                return
            try:
                job = plan()
            except BaseException as e:  # handed to the consumer, which re-raises it
                error = e
            finally:
                plan = None
                shared.next_plan += 1
                shared.turn.notify_all()
        build = build_ref() if wanted else None
        if build is not None:
            if error is None:
                try:
                    future.set_result(build(job))
                except BaseException as e:
                    future.set_exception(e)
            else:
                future.set_exception(error)
        future = build = job = error = None


def _stop(shared: _Shared) -> None:
    with shared.turn:
        shared.stopping = True
        shared.turn.notify_all()
    for future in shared.pending:
        future.cancel()
    shared.pending.clear()
    for _ in shared.threads:
        shared.tickets.put(None)
    me = threading.current_thread()
    for t in shared.threads:
        if t is not me:
            t.join(_JOIN_TIMEOUT_S)
    shared.threads.clear()


class Prefetcher(Generic[Job, Batch]):
    """`next()` returns build(plan()), build(plan()), ... in order, with `depth` batches in flight on `workers`
    daemon threads (default `default_workers(depth, item_size)`).  `name` names the threads."""

    def __init__(self, plan: Callable[[], Job], build: Callable[[Job], Batch], depth: int = 4,
                 workers: int | None = None, name: str = "data", item_size: int | None = None):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._plan = _weak(plan)
        self._build = _weak(build)
        self.depth = int(depth)
        self.workers = default_workers(self.depth, item_size) if workers is None else max(1, int(workers))
        self.name = name
        self._shared = _Shared()
        self._issued = 0  # tickets handed out so far
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop, self._shared)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def issued(self) -> int:
        """Batches planned or handed to the workers so far."""
        return self._issued

    @property
    def in_flight(self) -> int:
        """Batches asked for and not yet returned."""
        return len(self._shared.pending)

    def _check_open(self) -> None:
        if self._closed:
            raise CaffeError(f"prefetcher {self.name!r} is closed")

    def _ticket(self, wanted: bool = True) -> None:
        shared = self._shared
        if not shared.threads:
            for i in range(self.workers):
                t = threading.Thread(target=_work, args=(shared,), name=f"caffelike-{self.name}-{i}", daemon=True)
                t.start()
                shared.threads.append(t)
        future: Future = Future()
        if wanted:
            shared.pending.append(future)
        else:
            future.cancel()
        shared.tickets.put((future, self._issued, self._plan, self._build))
        self._issued += 1

    def next(self) -> Batch:
        """The next batch in plan order (waits for it if it is still being built)."""
        self._check_open()
        if self.depth == 0:
            self._issued += 1
            return self._build()(self._plan()())
        pending = self._shared.pending
        while len(pending) < self.depth:
            self._ticket()
        future = pending.popleft()
        self._ticket()  # keep `depth` batches in flight while the consumer works on this one
        return future.result()

    def skip(self, n: int) -> None:
        """Drop the next n batches: those in flight are discarded, the others are planned (their records and
        random draws consumed, in order) but never built."""
        self._check_open()
        if self.depth == 0:
            for _ in range(n):
                self._plan()()
            self._issued += n
            return
        pending = self._shared.pending
        while n > 0 and pending:
            pending.popleft().cancel()
            n -= 1
        for _ in range(n):
            self._ticket(wanted=False)

    def close(self) -> None:
        """Stop the workers; batches in flight are dropped.  Safe to call more than once."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while True:
            yield self.next()
