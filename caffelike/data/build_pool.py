"""Batches built in worker processes: decoding without the training process's GIL.

A prefetching data layer builds its batches on worker threads (caffelike.data.prefetch).  Where the build is
Python-heavy (many small PNG or JPEG records: Pillow's chunk parsing, per-record calls), the worker thread
holds the GIL for milliseconds at a time, and the training thread waits for it after every torch op that
released it: on LeNet/MNIST one solver iteration took 1.35x forward+backward alone, though the pipeline was 7x
faster than training needed.  Building in another process removes the contention: the worker thread only
sends the batch's records and waits (the GIL released) for the arrays to come back.

The pool runs one builder, sent once to every worker process at its start (so a mean image is not pickled with
each batch): `builder(job) -> tuple of numpy arrays`.  The plan (which records, which random draws) stays in
the training process, so the batches are exactly those of a synchronous read.  Processes are forked on Linux
(started in milliseconds, nothing re-imported) and spawned elsewhere, where they are used only when asked for.  A worker that dies makes
the next batch raise a CaffeError naming the layer; the pool is shut down when the layer closes, is
collected, or the interpreter exits.

How many processes a layer gets: `PROCESSES` when set (0: build on the threads), else the environment's
CAFFELIKE_DATA_PROCESSES, else `default_processes`.
"""
from __future__ import annotations

import mmap
import multiprocessing
import multiprocessing.util
import os
import queue
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import numpy as np

from caffelike.data.prefetch import default_workers
from caffelike.errors import CaffeError

# Worker processes for every data layer set up from now on (None: the environment, then `default_processes`).
PROCESSES: int | None = None

ENV = "CAFFELIKE_DATA_PROCESSES"

_builder: Callable | None = None  # in a worker process: the builder it runs
_slot_maps: list[mmap.mmap] = []  # in a worker process: the pool's shared slots (see _Slots)

# Offsets of the arrays packed into a slot are multiples of this (aligned loads for numpy and torch).
_ALIGN = 64


def _install(builder: Callable, slot_maps: list | None = None) -> None:
    global _builder, _slot_maps
    _builder = builder
    _slot_maps = slot_maps or []
    # A worker must not outlive the training process: killed, the parent can no longer tell it to stop, and
    # the worker would wait for jobs forever.
    threading.Thread(target=_exit_with, args=(os.getppid(),), name="caffelike-parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run(envelope):
    slot, job = envelope
    arrays = _builder(job)
    if slot is None:
        return arrays
    return _pack(_slot_maps[slot], arrays)


class _Packed:
    """What crosses the pipe for a batch written into a slot: each array's dtype, shape and offset."""

    def __init__(self, layout: list[tuple[str, tuple[int, ...], int]]):
        self.layout = layout

    def unpack(self, memory) -> tuple:
        # A copy: the slot is written again by the next batch, and the copy releases the GIL.
        return tuple(np.frombuffer(memory, dtype, int(np.prod(shape)), offset).reshape(shape).copy()
                     for dtype, shape, offset in self.layout)


def _pack(memory, arrays):
    """Write `arrays` (a tuple of numpy arrays) into a slot and return their _Packed layout; arrays that do not
    fit (a batch larger than the first record announced) are returned as they are, to cross the pipe."""
    layout, offset = [], 0
    for a in arrays:
        layout.append((a.dtype.str, a.shape, offset))
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    if offset > len(memory):
        return arrays
    for a, (dtype, shape, start) in zip(arrays, layout):
        np.frombuffer(memory, dtype, a.size, start).reshape(shape)[...] = a
    return _Packed(layout)


class _Slots:
    """Shared memory the workers write finished batches into: anonymous MAP_SHARED mappings made before the
    workers fork, so they inherit them.  A batch then crosses as one copy out of the slot instead of being
    pickled through a pipe (which cost the training process about 0.35 ms of CPU per LeNet batch and 1.3 ms
    per CIFAR-10 one; `bench/data_pipeline.py` measures both ways).  One slot per thread that may wait on the
    pool at a time; `take` blocks when all are in use."""

    def __init__(self, count: int, size: int):
        self.maps = [mmap.mmap(-1, size) for _ in range(count)]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(count):
            self._free.put(i)

    def take(self) -> int:
        return self._free.get()

    def give_back(self, slot: int) -> None:
        self._free.put(slot)


def default_processes(training: bool, depth: int, item_size: int | None, computing_on_cpu: bool = True) -> int:
    """For a training net's layer, as many processes as the prefetcher would have threads (one for small
    items, one per core up to 4 for large ones); none for a test net's, none where processes are not forked
    (see `_context`), and none when the net computes on the CPU with torch threads on every core this process
    may use.  Training reads a batch every iteration, and the GIL contention the processes remove is paid on
    every one; a test net reads in bursts between which the threads cost nothing.  With every core computing,
    a worker process has no core of its own to decode on, and handing each batch back costs the training
    process more than the GIL it spares (LeNet at 2 threads on 2 cores: an iteration 1.22-1.24x
    forward+backward with a process, 1.13x on threads)."""
    if not (training and _can_fork()):
        return 0
    if computing_on_cpu and _torch_threads() >= _usable_cores():
        return 0
    return default_workers(depth, item_size)


def processes_for(training: bool, depth: int, item_size: int | None, computing_on_cpu: bool = True) -> int:
    """How many worker processes a data layer gets (see the module's docstring)."""
    if PROCESSES is not None:
        return max(0, int(PROCESSES))
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            return max(0, int(value))
        except ValueError:
            raise CaffeError(f"{ENV} must be a whole number of worker processes, got {value!r}") from None
    return default_processes(training, depth, item_size, computing_on_cpu)


def _torch_threads() -> int:
    import torch  # the training process has it already; the workers never call this
    return torch.get_num_threads()


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _shut_down(executor: ProcessPoolExecutor) -> None:
    # Batches not started are dropped; one being built is finished (a bounded decode), then the workers exit.
    # (The slots' memory goes with the pool object: closing it here could race a thread still copying out.)
    executor.shutdown(wait=True, cancel_futures=True)


def _can_fork() -> bool:
    # Linux only: macOS has fork, but system libraries there are not safe to use in a forked child.
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _context():
    """Fork where it is safe (Linux), as torch's DataLoader does: a worker starts in milliseconds, and nothing is
    imported again.  The child runs only numpy and Pillow code, never torch's threads or a database handle it
    inherited.  Elsewhere spawn, which runs the main script again in each worker: a script that sets
    CAFFELIKE_DATA_PROCESSES there needs the `if __name__ == "__main__":` guard.  (A fork server would do the
    same, which is why it is not used: a pycaffe script without the guard would train twice.)"""
    return multiprocessing.get_context("fork" if _can_fork() else "spawn")


class BuildPool:
    """`run(job)` returns `builder(job)` (a tuple of numpy arrays) computed in one of `processes` worker
    processes.  `where` names the layer in errors.  With `slot_bytes` (an upper bound on a batch's bytes) and
    forked workers, batches come back through `slots` shared-memory slots (one per thread calling `run` at
    the same time) instead of the pipe."""

    def __init__(self, builder: Callable, processes: int, where: str, slot_bytes: int | None = None,
                 slots: int = 1):
        self.where = where
        self.processes = int(processes)
        context = _context()
        self._slots = None
        if slot_bytes and context.get_start_method() == "fork":
            self._slots = _Slots(max(1, int(slots)), int(slot_bytes) + _ALIGN * 4)
        self._executor = ProcessPoolExecutor(
            max_workers=self.processes, mp_context=context, initializer=_install,
            initargs=(builder, self._slots.maps if self._slots else None))
        # multiprocessing's Finalize, not weakref's: it also runs when the process holding the pool is itself a
        # multiprocessing child (a rank of `caffelike train --workers`), whose exit joins its own children and
        # would wait on these idle workers forever.  Its priority puts it before the pool's own queues are
        # closed, which would keep the workers from being told to stop.
        self._finalizer = multiprocessing.util.Finalize(self, _shut_down, args=(self._executor,), exitpriority=100)

    def run(self, job):
        slot = self._slots.take() if self._slots else None
        try:
            with warnings.catch_warnings():
                # Python 3.12+ warns at every fork of a process with threads; the first submit forks the
                # workers, and `_context` says why their code is safe there.
                warnings.filterwarnings("ignore", r".*multi-threaded, use of fork\(\) may lead to deadlocks",
                                        DeprecationWarning)
                future = self._executor.submit(_run, (slot, job))
            result = future.result()
            return result.unpack(self._slots.maps[slot]) if isinstance(result, _Packed) else result
        except BrokenProcessPool as e:
            raise CaffeError(f"{self.where}: a data worker process died while building a batch ({e}); set "
                             f"{ENV}=0 to build batches on threads in the training process") from None
        finally:
            if slot is not None:
                self._slots.give_back(slot)

    def close(self) -> None:
        self._finalizer()
