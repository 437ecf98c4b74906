"""Source layers that do not read through the prefetching pipeline: HDF5Data (h5py files), MemoryData (arrays
handed over by pycaffe's set_input_arrays) and DummyData (fillers)."""
from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import torch
from caffelike.layers import data_shard
from caffelike.layers.base import register, shape_str
from caffelike.layers.data import _Source
from caffelike.proto import caffe_pb2

from caffelike.data.transformer import new_generator

log = logging.getLogger("caffelike")


# --------------------------------------------------------------------------------------------------- HDF5Data
@register("HDF5Data")
class HDF5Data(_Source):
    """Rows of HDF5 datasets: `hdf5_data_param.source` is a text file listing .h5 files (whitespace-separated,
    relative to the working directory); each top reads the dataset of the same name.

    top k: (batch_size,) + dataset.shape[1:], float32 (integer datasets are converted).  Rows are taken in
    order, file after file, wrapping around.  shuffle: the file order is permuted at every pass over the
    files and the rows of a file each time it is (re)entered.  transform_param is an error (HDF5Data does not
    transform).  Needs h5py.  Every file is read whole into memory, as in Caffe.

    Several solvers (caffelike train --workers/--gpu): in TRAIN, rank r of N keeps the rows whose running index
    i has i % N == r, as Caffe's HDF5DataLayer; with shuffle, the permutations come from a generator seeded
    alike on every rank (runtime.shard_seed), so the ranks' rows are disjoint (in Caffe each rank shuffles on
    its own).  A resumed run starts again from the first file, as in Caffe.
    """

    min_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            self.fail("HDF5Data does not transform data (remove transform_param)")
        if p.batch_size <= 0:
            self.fail("batch_size must be > 0")
        if importlib.util.find_spec("h5py") is None:
            self.fail("needs the h5py package to read HDF5 files (pip install h5py)")
        try:
            with open(p.source, encoding="utf-8") as f:
                self.files = f.read().split()
        except OSError as e:
            self.fail(f"cannot open the HDF5 file list {p.source!r} ({e.strerror or e}; relative paths are "
                      f"resolved against the working directory: {os.path.abspath(p.source)})")
        log.info("Loading list of HDF5 filenames from: %s", p.source)
        if not self.files:
            self.fail(f"Must have at least 1 HDF5 filename listed in {p.source}")
        log.info("Number of HDF5 files: %d", len(self.files))
        self._shard = data_shard.shard_of(self.phase)
        if self._shard[1] > 1:
            log.info("%s", data_shard.describe(self.where, *self._shard))
        self.rng = (data_shard.shared_generator() if self._shard[1] > 1 else new_generator()) if p.shuffle else None
        self.offset = 0  # rows passed since setup, wraps included: what the sharding counts
        self.file_order = np.arange(len(self.files))
        if self.rng is not None:
            self.rng.shuffle(self.file_order)
        self.arrays: list[np.ndarray] = []
        self.current_file = 0
        self._load(self.file_order[0])
        self._shapes = [(int(p.batch_size),) + a.shape[1:] for a in self.arrays]

    def _load(self, index: int) -> None:
        import h5py

        path, tops = self.files[index], list(self.param.top)
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            self.fail(f"Failed opening HDF5 file {path!r} (listed in {self.param.hdf5_data_param.source}): {e}")
        with f:
            arrays = []
            for name in tops:
                ds = f.get(name)
                if not isinstance(ds, h5py.Dataset):
                    self.fail(f"HDF5 file {path!r} has no dataset {name!r} (each top reads the dataset of its name; "
                              f"the file holds {sorted(f.keys())})")
                if ds.ndim < 1 or ds.dtype.kind not in "fiub":
                    self.fail(f"dataset {name!r} of {path!r} must be a numeric array of at least 1 axis, "
                              f"got shape {ds.shape} {ds.dtype}")
                arrays.append(np.asarray(ds[()], dtype=np.float32))
        rows = arrays[0].shape[0]
        for name, a in zip(tops, arrays):
            if a.shape[0] != rows:
                self.fail(f"datasets of {path!r} differ in rows: {tops[0]!r} has {rows}, {name!r} has {a.shape[0]}")
            if self.arrays and a.shape[1:] != self.arrays[tops.index(name)].shape[1:]:
                self.fail(f"dataset {name!r} of {path!r} has rows of shape {shape_str(a.shape[1:])}, the first "
                          f"file's have {shape_str(self.arrays[tops.index(name)].shape[1:])}")
        if rows == 0:
            self.fail(f"HDF5 file {path!r} has no rows")
        log.debug("Successfully loaded %d rows", rows)
        self.arrays = arrays
        self.row_order = np.arange(rows)
        if self.rng is not None:
            self.rng.shuffle(self.row_order)
        self.current_row = 0

    def _end_of_file(self) -> None:
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.rng is not None:
                    self.rng.shuffle(self.file_order)
                log.debug("Looping around to first file.")
            self._load(self.file_order[self.current_file])
        self.current_row = 0
        if self.rng is not None:
            self.rng.shuffle(self.row_order)

    def _advance_rows(self, count: int) -> None:
        self.offset += count
        while count:
            step = min(count, len(self.row_order) - self.current_row)
            self.current_row += step
            count -= step
            if self.current_row == len(self.row_order):
                self._end_of_file()

    def forward(self):
        batch = self._shapes[0][0]
        outs = [np.empty((batch,) + a.shape[1:], dtype=np.float32) for a in self.arrays]
        rank, count = self._shard
        if count > 1:  # Caffe's `while (Skip()) Next();` before each row
            for i in range(batch):
                self._advance_rows(data_shard.to_next_kept(self.offset, rank, count))
                row = self.row_order[self.current_row]
                for out, a in zip(outs, self.arrays):
                    out[i] = a[row]
                self._advance_rows(1)
            return self._tops([torch.from_numpy(o) for o in outs])
        self.offset += batch
        i = 0
        while i < batch:
            k = min(batch - i, len(self.row_order) - self.current_row)
            rows = self.row_order[self.current_row:self.current_row + k]
            for out, a in zip(outs, self.arrays):
                out[i:i + k] = a[rows]
            i += k
            self.current_row += k
            if self.current_row == len(self.row_order):
                self._end_of_file()
        return self._tops([torch.from_numpy(o) for o in outs])


# ------------------------------------------------------------------------------------------------- MemoryData
@register("MemoryData")
class MemoryData(_Source):
    """Batches sliced from arrays handed over by `reset(data, labels)` (pycaffe's net.set_input_arrays).

    top 0: data (batch_size, channels, height, width); top 1: label, (batch_size,) at setup and
    (batch_size, 1, 1, 1) once forward has run, as in Caffe.  memory_data_param: batch_size, channels, height,
    width.  No transformation is applied to the arrays (Caffe's Reset path); the cursor advances by batch_size
    and wraps.  The arrays are used in place, not copied, so later changes to them are seen, as in Caffe.
    """

    exact_tops = 2

    def setup(self, bottom_shapes):
        p = self.param.memory_data_param
        self.dims = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(self.dims) <= 0:
            self.fail("batch_size, channels, height, and width must be specified and positive in "
                      f"memory_data_param, got {shape_str(self.dims)}")
        self._shapes = [self.dims, self.dims[:1]]
        self._data: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self.pos = 0

    def reset(self, data, labels) -> None:
        """Use `data` (float32, C-contiguous, (N, C, H, W)) and `labels` ((N,) or (N, 1, 1, 1)) from now on,
        starting at item 0; N must be a multiple of batch_size."""
        b, c, h, w = self.dims
        data = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels
        if not isinstance(data, np.ndarray) or not isinstance(labels, np.ndarray):
            self.fail("reset needs numpy arrays for data and labels")
        for what, a in (("data", data), ("labels", labels)):
            if a.dtype != np.float32:
                self.fail(f"{what} array must be float32, got {a.dtype}")
            if not a.flags.c_contiguous:
                self.fail(f"{what} array must be C contiguous")
        if labels.ndim == 1:
            labels = labels.reshape(-1, 1, 1, 1)
        if data.ndim != 4:
            self.fail(f"data array must be 4-d, got shape {data.shape}")
        if data.shape[1:] != (c, h, w):
            self.fail(f"data array has wrong shape {shape_str(data.shape)}: each item must be {c}x{h}x{w} "
                      "(channels x height x width)")
        if labels.ndim != 4 or labels.shape[1:] != (1, 1, 1):
            self.fail(f"labels array must be (N,) or (N, 1, 1, 1), got {shape_str(labels.shape)}")
        if data.shape[0] != labels.shape[0]:
            self.fail(f"data and labels must have the same first dimension, got {data.shape[0]} and "
                      f"{labels.shape[0]}")
        if data.shape[0] == 0 or data.shape[0] % b:
            self.fail(f"n must be a multiple of batch size: {data.shape[0]} items, batch_size {b}")
        if self.param.HasField("transform_param"):
            log.warning("MemoryData does not transform array data on Reset()")
        self._arrays = (data, labels)  # the tensors below share their memory
        self._data, self._labels = torch.from_numpy(data), torch.from_numpy(labels)
        self.pos = 0

    def forward(self):
        if self._data is None:
            self.fail("MemoryDataLayer needs to be initialized by calling Reset (pycaffe: net.set_input_arrays, "
                      "or layer.reset(data, labels)) before forward")
        b = self.dims[0]
        data, labels = self._data[self.pos:self.pos + b], self._labels[self.pos:self.pos + b]
        self.pos = (self.pos + b) % self._data.shape[0]
        return self._tops([data, labels])


# -------------------------------------------------------------------------------------------------- DummyData
@register("DummyData")
class DummyData(_Source):
    """Tops filled by fillers.

    dummy_data_param: `shape` (once, or once per top) or the legacy num/channels/height/width (each once or
    once per top; mixing the two is an error); `data_filler` none (constant 0), one (shared) or one per top.
    Constant-filled tops are filled once at setup and then kept, as in Caffe (so a value written into such a
    blob stays); all others are refilled at every forward (from torch's seeded generator).
    """

    min_tops = 1

    def setup(self, bottom_shapes):
        p = self.param.dummy_data_param
        n = len(self.param.top)
        if len(p.data_filler) not in (0, 1, n):
            self.fail(f"Number of data fillers must be 0, 1 or equal to the number of tops: {n} tops, "
                      f"{len(p.data_filler)} data_filler")
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        legacy = [list(getattr(p, f)) for f in ("num", "channels", "height", "width")]
        if any(legacy):
            if len(p.shape):
                self.fail("Both shape and legacy fields were specified")
            for name, values in zip(("num", "channels", "height", "width"), legacy):
                if len(values) not in (1, n):
                    self.fail(f"Must specify '{name}' once, or once per top blob ({n}); specified {len(values)}.")
            shapes = [tuple(int(v[i if len(v) > 1 else 0]) for v in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                self.fail(f"Must specify 'shape' once, or once per top blob ({n}); specified {len(p.shape)}.")
            shapes = [tuple(int(d) for d in p.shape[i if len(p.shape) > 1 else 0].dim) for i in range(n)]
        self._shapes = shapes
        self.fillers = [fillers[i if len(fillers) > 1 else 0] for i in range(n)]
        for i, (shape, filler) in enumerate(zip(shapes, self.fillers)):
            if any(d < 0 for d in shape):
                self.fail(f"top {i} ({self.param.top[i]!r}) would have a negative dimension {shape_str(shape)}")
            self.check_filler(filler, shape, f"data_filler of top {i} ({self.param.top[i]!r})")
        from caffelike.core.fillers import fill

        for i, (shape, filler) in enumerate(zip(shapes, self.fillers)):
            if filler.type == "constant":
                self.register_buffer(f"constant_{i}", fill(shape, filler), persistent=False)

    def forward(self):
        from caffelike.core.fillers import fill

        device = self._device_anchor.device
        tops = []
        for i, (shape, filler) in enumerate(zip(self._shapes, self.fillers)):
            if filler.type == "constant":
                tops.append(getattr(self, f"constant_{i}"))
            else:
                tops.append(fill(shape, filler).to(device))
        return tops[0] if len(tops) == 1 else tuple(tops)
