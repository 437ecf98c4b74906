"""Which records a data layer keeps when several solvers train together (Caffe's multi-GPU data split).

BVLC Caffe 1.0's DataLayer and HDF5DataLayer count every record they pass (`offset_`, wraps included) and, on
solver rank r of N, keep only those with offset % N == r: each rank reads the whole source in the same order
and skips the records of the others (data_layer.cpp and hdf5_data_layer.cpp, `Skip()`).  TEST-phase layers are
never split: only rank 0 tests.  The running count, not the record's position in the file, decides, so when
the record count is not a multiple of N the ranks' shares rotate from one pass to the next, as in Caffe.

The skipping is lazy, as Caffe's `while (Skip()) Next();` before each record: after reading k records from
`position` the source stands just past the k-th kept one, so skipping k records without reading them moves it
by exactly `records_to_advance(position, k, ...)`.
"""
from __future__ import annotations

from caffelike.proto import caffe_pb2

from caffelike.core import runtime


def shard_of(phase: int) -> tuple[int, int]:
    """(rank, count) of the share a layer of `phase` reads: the solver's own for TRAIN, (0, 1) (everything)
    for TEST."""
    if phase != caffe_pb2.TRAIN:
        return 0, 1
    count, rank = runtime.solver_count(), runtime.solver_rank()
    return (rank % count, count) if count > 1 else (0, 1)


def to_next_kept(position: int, rank: int, count: int) -> int:
    """Records to pass over from running index `position` to the next one this rank keeps."""
    return (rank - position) % count


def records_to_advance(position: int, kept: int, rank: int, count: int) -> int:
    """Records consumed from `position` by reading `kept` records of this rank's share: the skip to the first,
    then `count` per further record, then the one read."""
    if kept <= 0:
        return 0
    return to_next_kept(position, rank, count) + (kept - 1) * count + 1


def describe(where: str, rank: int, count: int) -> str:
    return f"{where}: rank {rank} of {count} reads the records whose running index i has i % {count} == {rank}"


def shared_generator():
    """A numpy Generator seeded alike on every rank (runtime.shard_seed): what a sharded layer shuffles and
    draws its rand_skip with, so that the ranks' shares of one pass stay disjoint."""
    import numpy as np

    return np.random.default_rng(runtime.shard_seed())
