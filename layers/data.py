"""Layers that bring data into the net (no bottoms): Input, Data and ImageData (HDF5Data, MemoryData and DummyData are in data_sources.py).

Each returns float32 tops on the layer's device (a non-persistent `_device_anchor` buffer follows `net.to()`).
Data and ImageData prepare their batches ahead of use on worker threads (caffelike.data.prefetch) in exactly the
order a synchronous read would give; `data_param.prefetch` sets how many batches are in flight (Caffe's
default 4; 0 reads synchronously inside forward, a caffelike extension).  In a training net those threads
hand the decoding to worker processes (caffelike.data.build_pool; CAFFELIKE_DATA_PROCESSES sets how many).
None of these layers has a backward.  Top shapes come from setup (the first record), never from consuming data.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
from caffelike.layers import data_shard
from caffelike.layers.base import Layer, register
from caffelike.proto import caffe_pb2

from caffelike.data import build_pool, decoded_cache
from caffelike.data.build_pool import BuildPool
from caffelike.data.decoded_cache import DecodedCache
from caffelike.data.datum import DatumDB, datum_pixels, parse_datum, read_image
from caffelike.data.prefetch import Prefetcher, default_workers
from caffelike.data.transformer import DataTransformer, caffe_rng_rand, new_generator

log = logging.getLogger("caffelike")


@register("Input")
class Input(Layer):
    """Net inputs: no bottoms, one top per input blob, whose data the user sets (pycaffe `blob.data[...] = x`
    or `net.forward(name=array)`).  `input_param.shape`: none (shape set later by reshape), one (shared by
    every top) or one per top.  The net never runs this layer; its tops simply hold what was written."""

    exact_bottoms = 0
    min_tops = 1

    def infer_top_shapes(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        n = self.num_tops
        if not shapes:
            return [(0,)] * n
        if len(shapes) == 1:
            return shapes * n
        if len(shapes) != n:
            self.fail(f"input_param needs 0, 1 or {n} shapes (one per top), got {len(shapes)}")
        return shapes

    def forward(self):
        raise RuntimeError("Input layers are not run; their tops are set from outside the net")


# ----------------------------------------------------------------------------------------------- shared plumbing
class _Source(Layer):
    """A layer that produces its tops from outside the net: no bottoms, no backward, shapes known at setup."""

    exact_bottoms = 0
    backward_free = True
    runs_eagerly = True

    # Records in one pass over the source (None where unknown): what the Solver's epochs count.
    epoch_records: int | None = None

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self._shapes: list[tuple[int, ...]] = []

    @property
    def where(self) -> str:
        return f'{self.type} layer "{self.layer_name}"'

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def infer_top_shapes(self, bottom_shapes):
        return list(self._shapes)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        device = self._device_anchor.device
        if t.device == device:
            return t
        if device.type == "cuda" and t.device.type == "cpu":
            if not t.is_pinned():
                t = t.pin_memory()
            return t.to(device, non_blocking=True)
        return t.to(device)

    def _tops(self, tensors: list[torch.Tensor]):
        self._shapes = [tuple(t.shape) for t in tensors]
        tensors = [self._to_device(t) for t in tensors]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)


class _BatchBuilder:
    """Fills a batch from job = (items, draws): `read(item) -> (pixels CHW, label, where)`, then the
    transformer.  Picklable, so that worker processes can run it (caffelike.data.build_pool).  The batch
    shape is the first item's, as Caffe reshapes each batch from its first record."""

    def __init__(self, transformer: DataTransformer, read):
        self.transformer = transformer
        self.read = read

    def __call__(self, job) -> tuple[np.ndarray, np.ndarray]:
        items, draws = job
        samples = [self.read(item) for item in items]  # (pixels, label, where)
        first, _, where = samples[0]
        self.transformer.check(first.shape, where)
        data = np.empty((len(items),) + self.transformer.output_shape(first.shape), dtype=np.float32)
        labels = np.array([label for _, label, _ in samples], dtype=np.float32)
        if draws is None and all(p.shape == first.shape and p.dtype == first.dtype for p, _, _ in samples):
            self.transformer.transform_batch(np.stack([p for p, _, _ in samples]), out=data)
        else:
            for i, (pixels, _, where) in enumerate(samples):
                self.transformer(pixels, None if draws is None else draws[i], out=data[i], where=where)
        return data, labels


class _Prefetching(_Source):
    """Data and ImageData: `_plan()` picks the next batch's records and random draws (sequential, in this
    process), `_builder` decodes and transforms them: on the prefetch threads, or in worker processes
    driven by those threads (caffelike.data.build_pool: by default for a training net's layers)."""

    # Set by `_start` (WindowData sets its own): picklable, job -> (data, labels) numpy arrays.
    _builder = None

    def __init__(self, param, phase):
        super().__init__(param, phase)
        self._prefetcher: Prefetcher | None = None
        self._pool: BuildPool | None = None
        self._pin = False
        self._item_size: int | None = None
        self.batches_served = 0

    def _start(self, batch_size: int, read) -> None:
        if batch_size <= 0:
            self.fail("Positive batch size required (batch_size must be > 0)")
        self.batch_size = batch_size
        self.transformer = DataTransformer(self.param.transform_param, self.phase, self.where)
        self._read = read
        self._builder = _BatchBuilder(self.transformer, read)

    def _prefetch(self) -> Prefetcher:
        if self._prefetcher is None:
            depth = int(self.param.data_param.prefetch)
            processes = build_pool.processes_for(self.phase == caffe_pb2.TRAIN, depth, self._item_size,
                                                 self._device_anchor.device.type == "cpu")
            if processes and depth:
                # A batch's bytes are at most batch x (pixels of the first record + its label), float32.
                slot_bytes = self.batch_size * (self._item_size + 1) * 4 if self._item_size else None
                self._pool = BuildPool(self._builder, processes, self.where, slot_bytes=slot_bytes,
                                       slots=default_workers(depth, self._item_size))
            self._prefetcher = Prefetcher(self._plan, self._build, depth=depth, name=self.layer_name or self.type,
                                          item_size=self._item_size)
        return self._prefetcher

    def _build(self, job) -> tuple[torch.Tensor, torch.Tensor]:
        data, labels = self._builder(job) if self._pool is None else self._pool.run(job)
        data_t, labels_t = torch.from_numpy(data), torch.from_numpy(labels)
        if self._pin:
            data_t, labels_t = data_t.pin_memory(), labels_t.pin_memory()
        return data_t, labels_t

    def forward(self):
        self._pin = self._device_anchor.device.type == "cuda"
        data, labels = self._prefetch().next()
        self.batches_served += 1
        return self._tops([data, labels][:self.num_tops])

    def skip_batches(self, n: int) -> None:
        """Move on n batches without building them (the records and random draws are consumed as if they had
        been read): how a resumed training run continues where the interrupted one stopped."""
        self._prefetch().skip(n)
        self.batches_served += n

    def close(self) -> None:
        """Stop the prefetch workers and worker processes (also done when the layer is garbage-collected)."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None


# ------------------------------------------------------------------------------------------------------- Data
@register("Data")
class Data(_Prefetching):
    """Datums from an LMDB, in key order, wrapping around at the end ("Restarting data prefetching from start.").

    top 0: data (batch_size, C, crop or H, crop or W), transformed by transform_param (DataTransformer).
    top 1 (optional): label (batch_size,), the Datums' labels as floats.
    data_param: source (LMDB directory, relative to the working directory), batch_size, backend, rand_skip,
    prefetch.  Raw uint8 `data`, `float_data` and encoded (PNG/JPEG) Datums are read; encoded ones are decoded
    to BGR / gray as OpenCV would (transform_param force_color / force_gray apply to them).

    Differences from Caffe: `backend: LEVELDB` (the proto default) is accepted when the source is an LMDB
    directory, and refused with advice to convert otherwise (LevelDB is not supported).  `rand_skip` skips
    Rand(rand_skip) records at the start as older Caffe did; BVLC Caffe 1.0's DataLayer ignores it.  The
    shape of every batch is that of its first record, as in Caffe; shapes known at net setup come from the
    database's first record.

    Several solvers (caffe.set_solver_count/rank, `caffelike train --workers/--gpu`): in TRAIN, rank r of N keeps
    the records whose running index i has i % N == r, as Caffe's DataLayer (layers/data_shard.py).
    """

    min_tops = 1
    max_tops = 2

    def setup(self, bottom_shapes):
        p, t = self.param.data_param, self.param.transform_param
        self._shard = data_shard.shard_of(self.phase)
        self.db = DatumDB(p.source, p.backend, self.where)
        self._force = (bool(t.force_color), bool(t.force_gray))
        self._start(int(p.batch_size), _DatumReader(f"{self.where}: record", self.db.source, self._force))
        if self._shard[1] > 1:
            log.info("%s", data_shard.describe(self.where, *self._shard))
        if p.rand_skip:
            draw = int(data_shard.shared_generator().integers(2**32)) if self._shard[1] > 1 else caffe_rng_rand()
            skip = draw % p.rand_skip
            log.info("Skipping first %d data points.", skip)
            self.db.skip(skip)
        key, value = self.db.peek()
        pixels, _, where = self._read((key, value))
        if any(self._force) and not parse_datum(value, where).encoded:
            log.error("force_color and force_gray only for encoded datum")
        self.transformer.check(pixels.shape, where)
        shape = (self.batch_size,) + self.transformer.output_shape(pixels.shape)
        log.info("output data size: %s", ",".join(str(d) for d in shape))
        self._shapes = [shape, (self.batch_size,)][:self.num_tops]
        self._item_size = pixels.size

    @property
    def epoch_records(self) -> int | None:
        return self.db.entries if getattr(self, "db", None) is not None else None

    def _plan(self):
        rank, count = self._shard
        if count == 1:
            return self.db.read(self.batch_size), self.transformer.draw(self.batch_size)
        records = []
        for _ in range(self.batch_size):  # Caffe's `while (Skip()) Next();` then the record
            self.db.skip(data_shard.to_next_kept(self.db.position, rank, count))
            records.extend(self.db.read(1))
        return records, self.transformer.draw(self.batch_size)

    def skip_batches(self, n: int) -> None:
        """Before the first batch is asked for (a resumed run), skipping costs O(records), not O(n): the cursor
        moves n * batch_size records modulo the database's size; the random draws are consumed batch by batch,
        as reading would consume them."""
        if self._prefetcher is not None and self._prefetcher.issued:
            return super().skip_batches(n)
        self.db.skip(data_shard.records_to_advance(self.db.position, n * self.batch_size, *self._shard))
        if self.transformer.rng is not None:
            for _ in range(n):
                self.transformer.draw(self.batch_size)
        self.batches_served += n

    def close(self) -> None:
        super().close()
        if getattr(self, "db", None) is not None:
            self.db.close()


# -------------------------------------------------------------------------------------------------- ImageData
@register("ImageData")
class ImageData(_Prefetching):
    """Image files listed in a text file, one `path label` per line (split at the last space).

    top 0: data (batch_size, 3 or 1, H, W) (after transform_param), top 1: label (batch_size,).
    image_data_param: source (the list), root_folder (prefixed to every path), batch_size, is_color (BGR, or
    1 channel), new_height/new_width (both or neither; resize with OpenCV's INTER_LINEAR arithmetic,
    reimplemented in numpy), shuffle (at the start and at every wrap-around), rand_skip (skip Rand(rand_skip)
    lines at the start).  Paths are relative to the working directory.  data_param.prefetch applies, as in Caffe.

    Differences from Caffe: images are decoded by Pillow (see caffelike.data.datum.decode_image for where it can
    differ from OpenCV); blank lines of the list are skipped and a line without a label is an error.  Several
    solvers (caffelike train --workers/--gpu) split the list as Data splits an LMDB (in TRAIN, rank r of N keeps
    the lines whose running index i has i % N == r), where Caffe reads the whole list on every rank and only
    warns; the shuffle and rand_skip then draw from a generator seeded alike on every rank
    (runtime.shard_seed), so each pass is one permutation shared out between the ranks.
    """

    exact_tops = 2

    @property
    def epoch_records(self) -> int | None:
        return len(self.lines) if hasattr(self, "lines") else None

    def setup(self, bottom_shapes):
        p = self.param.image_data_param
        if (p.new_height > 0) != (p.new_width > 0):
            self.fail(f"new_height and new_width must both be set or both be 0, got new_height {p.new_height} "
                      f"and new_width {p.new_width}")
        self.lines = self._read_list(p.source)
        self._start(int(p.batch_size), _ImageReader(self.where, p.source, p.root_folder, bool(p.is_color),
                                                    int(p.new_height), int(p.new_width)))
        log.info("A total of %d images.", len(self.lines))
        self._shard = data_shard.shard_of(self.phase)
        shared = data_shard.shared_generator() if self._shard[1] > 1 else None
        if shared is not None:
            log.info("%s", data_shard.describe(self.where, *self._shard))
        self.rng = (shared or new_generator()) if p.shuffle else None
        if self.rng is not None:
            log.info("Shuffling data")
            self._shuffle()
        self.line_id = 0
        self.offset = 0  # lines passed since setup, wraps included: what the sharding counts
        if p.rand_skip:
            skip = (int(shared.integers(2**32)) if shared is not None else caffe_rng_rand()) % p.rand_skip
            log.info("Skipping first %d data points.", skip)
            if skip >= len(self.lines):
                self.fail(f"rand_skip drew {skip} but the list has only {len(self.lines)} lines")
            self.line_id = skip
        pixels, _, where = self._read(self.lines[self.line_id])
        self.transformer.check(pixels.shape, where)
        shape = (self.batch_size,) + self.transformer.output_shape(pixels.shape)
        log.info("output data size: %s", ",".join(str(d) for d in shape))
        self._shapes = [shape, (self.batch_size,)]
        self._item_size = pixels.size

    def _read_list(self, source: str) -> list[tuple[str, int, int]]:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            self.fail(f"cannot open the image list {source!r} ({e.strerror or e}; relative paths are resolved "
                      f"against the working directory: {os.path.abspath(source)})")
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.rstrip()
            if not line.strip():
                continue
            path, _, label = line.rpartition(" ")
            try:
                lines.append((path, int(label), number))
            except ValueError:
                self.fail(f"{source} line {number}: expected '<path> <integer label>', got {line!r}")
            if not path:
                self.fail(f"{source} line {number}: expected '<path> <integer label>', got {line!r}")
        if not lines:
            self.fail(f"the image list {source!r} is empty")
        return lines

    def _shuffle(self) -> None:
        order = self.rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def _advance(self, count: int) -> None:
        """Move `count` lines on, shuffling at each wrap as reading would (whole unshuffled passes at once)."""
        self.offset += count
        while count:
            step = min(count, len(self.lines) - self.line_id)
            self.line_id += step
            count -= step
            if self.line_id >= len(self.lines):
                log.debug("Restarting data prefetching from start.")
                self.line_id = 0
                if self.rng is not None:
                    self._shuffle()
                elif count:
                    count %= len(self.lines)  # unshuffled passes are all alike: skip them at once

    def _plan(self):
        rank, count = self._shard
        items = []
        for _ in range(self.batch_size):
            self._advance(data_shard.to_next_kept(self.offset, rank, count))
            items.append(self.lines[self.line_id])
            self._advance(1)
        return items, self.transformer.draw(self.batch_size)

    def skip_batches(self, n: int) -> None:
        """Before the first batch (a resumed run): move through the list by whole passes, not line by line,
        shuffling at each wrap as reading would, and consume the transformer's draws batch by batch."""
        if self._prefetcher is not None and self._prefetcher.issued:
            return super().skip_batches(n)
        self._advance(data_shard.records_to_advance(self.offset, n * self.batch_size, *self._shard))
        if self.transformer.rng is not None:
            for _ in range(n):
                self.transformer.draw(self.batch_size)
        self.batches_served += n


# ------------------------------------------------------------------------------------- readers (picklable)
class _DatumReader:
    """(key, serialized Datum) -> (pixels CHW, label, where) for the Data layer.  Encoded Datums' pixels are
    kept for the next epoch (caffelike.data.decoded_cache)."""

    def __init__(self, where: str, source: str, force: tuple[bool, bool]):
        self.where, self.source, self.force = where, source, force
        self.cache = DecodedCache(decoded_cache.budget_bytes())

    def __call__(self, record):
        key, value = record
        where = f"{self.where} {key.decode('utf-8', 'backslashreplace')!r} of {self.source!r}"
        hit = self.cache.get(value)
        if hit is not None:
            return hit[0], hit[1], where
        datum = parse_datum(value, where)
        pixels = datum_pixels(datum, *self.force, where=where)
        if datum.encoded:
            self.cache.put(value, pixels, datum.label)
        return pixels, datum.label, where


class _ImageReader:
    """(path, label, line number) of an image list -> (pixels CHW, label, where) for the ImageData layer."""

    def __init__(self, where: str, source: str, root: str, is_color: bool, new_height: int, new_width: int):
        self.where, self.source, self.root = where, source, root
        self.is_color, self.new_height, self.new_width = is_color, new_height, new_width

    def __call__(self, line):
        path, label, number = line
        where = f"{self.where}: {self.source} line {number}"
        return read_image(self.root + path, self.is_color, self.new_height, self.new_width, where), label, where
