"""HDF5Output: a sink layer that writes its bottoms to an HDF5 file.

Caffe's source: hdf5_output_layer.cpp (with util/hdf5.cpp's hdf5_save_nd_dataset).
"""
from __future__ import annotations

import importlib.util
import logging
import os

import torch
from caffelike.layers.base import Layer, is_meta, register, shape_str

log = logging.getLogger("caffelike")

_DATASETS = ("data", "label")   # Caffe's HDF5_DATA_DATASET_NAME and HDF5_DATA_LABEL_NAME


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes bottom 0 to dataset "data" and bottom 1 to dataset "label" of hdf5_output_param.file_name.

    bottom 0, 1: data and label with the same first axis N, at most 4 axes each.  top: none.
    The file (relative to the working directory) is created, or truncated, at setup.  Each dataset is
    written with the blob's legacy 4-D shape (num, channels, height, width), missing trailing axes as 1, in
    the bottom's float type (float32 for a float net, as Caffe's H5LTmake_dataset_float).  No gradient to
    either bottom (Caffe's backward is empty).  Needs h5py.

    A second forward is an error: Caffe's second H5LTmake_dataset on the existing name "data" fails and the
    CHECK aborts the process ("Failed to make float dataset data"), so a Caffe HDF5Output writes one batch
    per net.  Here it raises LayerError and the file keeps the first batch.
    Difference from Caffe: Caffe holds the file open until the layer is destroyed; this layer opens it for
    each write and closes it at once, so the file is complete and readable as soon as forward returns.
    """

    runs_eagerly = True
    exact_bottoms = 2
    exact_tops = 0
    backward_free = True

    def allow_force_backward(self, bottom_index: int) -> bool:
        return False

    def setup(self, bottom_shapes):
        if importlib.util.find_spec("h5py") is None:
            self.fail("needs the h5py package to write HDF5 files (pip install h5py)")
        import h5py

        self.file_name = self.param.hdf5_output_param.file_name
        if not self.file_name:
            self.fail("hdf5_output_param.file_name must be given")
        try:
            h5py.File(self.file_name, "w").close()
        except OSError as e:
            self.fail(f"Failed to open HDF5 file {self.file_name!r} for writing ({e}; relative paths are resolved "
                      f"against the working directory: {os.path.abspath(self.file_name)})")
        self.saved = False

    def _legacy(self, x: torch.Tensor, what: str) -> tuple[int, int, int, int]:
        if x.dim() > 4 or x.dim() == 0:
            self.fail(f"{what} {shape_str(x.shape)} must have 1 to 4 axes: HDF5Output writes the legacy "
                      f"(num, channels, height, width) shape")
        return tuple(int(d) for d in x.shape) + (1,) * (4 - x.dim())

    def forward(self, data, label):
        shapes = [self._legacy(data, "the data bottom 0"), self._legacy(label, "the label bottom 1")]
        if shapes[0][0] != shapes[1][0]:
            self.fail(f"data and label must have the same first axis: bottom 0 is {shape_str(data.shape)}, "
                      f"bottom 1 is {shape_str(label.shape)}")
        if is_meta(data):   # shape inference: the file is only written by a real forward
            return ()
        import h5py

        if self.saved:
            self.fail(f"a second forward would write the datasets {_DATASETS} of {self.file_name!r} again; Caffe "
                      f"aborts here (H5LTmake_dataset: \"Failed to make float dataset data\"), so HDF5Output "
                      f"writes one batch per net")
        try:
            with h5py.File(self.file_name, "a") as f:
                for name, x, shape in zip(_DATASETS, (data, label), shapes):
                    f.create_dataset(name, data=x.detach().cpu().reshape(shape).numpy())
        except (OSError, ValueError) as e:
            self.fail(f"Failed to write the datasets {_DATASETS} to {self.file_name!r}: {e}")
        self.saved = True
        log.info("Successfully saved %d rows", shapes[0][0])
        return ()
