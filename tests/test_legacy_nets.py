"""Old nets run exactly like their current-format twins: same blobs, same outputs, same diffs, same parameter
multipliers.

* V1 (`layers { type: ENUM }` with blobs_lr, weight_decay, param/blob_share_mode, net-level input/input_dim or
  input_shape): one twin per V1 LayerType value (NONE excepted), each written by hand in today's format.  A V1
  enum value added to caffe.proto without a twin here fails `test_every_v1_enum_value_has_a_twin`.
* V1 caffemodels (`layers` with legacy 4-D blobs) load into current-format nets, and back.
* V0 (`layers { layer { type: "conv" } }`, padding layers, flat fields) against its twin.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import FIXTURES, Case
from PIL import Image

import caffelike as caffe

V1_LENET = """name: "LeNet"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 28 input_dim: 28
force_backward: true
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 20 kernel_size: 5 stride: 1 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1" blobs_lr: 1 blobs_lr: 2 weight_decay: 1
         weight_decay: 0 inner_product_param { num_output: 500 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2" blobs_lr: 1 blobs_lr: 2
         inner_product_param { num_output: 10 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
"""


def test_v1_lenet_matches_the_current_format_fixture(tmp_path):
    case = Case.load("nets", "bvlc_lenet")
    path = tmp_path / "lenet_v1.prototxt"
    path.write_text(V1_LENET)
    weights = str(FIXTURES / "data" / "lenet_weights.caffemodel")
    old = caffe.Net(str(path), caffe.TEST, weights=weights)
    new = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST, weights=weights)
    assert list(old.blobs) == list(new.blobs) and old._layer_names == ["input"] + new._layer_names[1:]
    x = case.data("data")
    a, b = old.forward(data=x)["prob"], new.forward(data=x)["prob"]
    assert np.array_equal(a, b)
    np.testing.assert_allclose(a, case.data("prob"), **case.tolerance)
    mults = {(p.layer, p.index): (p.lr_mult, p.decay_mult) for p in old.learnable}
    assert mults[("conv1", 1)] == (2, 1) and mults[("ip1", 1)] == (2, 0)


# ----------------------------------------------------------------------------------------------- input values
def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def away_from_zero(*shape, seed=0):
    x = normal(*shape, seed=seed)
    return np.where(np.abs(x) < 0.1, np.float32(0.3), x)


def uniform(*shape, low=0.0, high=1.0, seed=0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def labels(n, classes, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=n).astype(np.float32)


# ------------------------------------------------------------------------------------------ files of data layers
def write_blobproto(path, array: np.ndarray) -> None:
    """A BlobProto with legacy num/channels/height/width, as Caffe's tools write mean files."""
    a = array.reshape((1,) * (4 - array.ndim) + array.shape)
    bp = caffe_pb2.BlobProto(num=a.shape[0], channels=a.shape[1], height=a.shape[2], width=a.shape[3])
    bp.data.extend(a.ravel().tolist())
    path.write_bytes(bp.SerializeToString())


def write_lmdb(tmp):
    from caffelike.data.datum import array_to_datum
    from caffelike.data.dbwriter import LmdbWriter

    images = np.random.default_rng(3).integers(0, 256, (5, 2, 5, 6), dtype=np.uint8)
    with LmdbWriter(str(tmp / "lmdb")) as db:
        for i, im in enumerate(images):
            db.put(f"{i:08d}".encode(), array_to_datum(im, label=i))
    write_blobproto(tmp / "mean.binaryproto", uniform(2, 5, 6, high=255, seed=4))


def write_images(tmp):
    rng = np.random.default_rng(5)
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (7 + i, 9, 3), dtype=np.uint8)).save(tmp / f"im{i}.png")
        lines.append(f"im{i}.png {i}")
    (tmp / "list.txt").write_text("\n".join(lines) + "\n")


def write_hdf5(tmp):
    import h5py

    with h5py.File(tmp / "d.h5", "w") as f:
        f["data"] = normal(5, 2, 3, seed=6)
        f["label"] = labels(5, 3)
    (tmp / "h5list.txt").write_text("d.h5\n")


def write_windows(tmp):
    write_images(tmp)
    lines = []
    for i in range(3):
        lines += [f"# {i}", f"im{i}.png", f"3 {7 + i} 9", "3", f"{i + 1} 0.8 1 1 6 5", "0 0.1 0 0 4 4",
                  f"2 0.9 3 2 8 {6 + i}"]
    (tmp / "windows.txt").write_text("\n".join(lines) + "\n")
    write_blobproto(tmp / "wmean.binaryproto", uniform(3, 8, 8, high=255, seed=8))


def write_infogain(tmp):
    write_blobproto(tmp / "H.binaryproto", np.eye(3, dtype=np.float32) + uniform(3, 3, high=0.2, seed=9))


def compare_hdf5_outputs(tmp):
    import h5py

    with h5py.File(tmp / "out_v1.h5", "r") as a, h5py.File(tmp / "out_v2.h5", "r") as b:
        for name in ("data", "label"):
            assert a[name].shape == b[name].shape
            np.testing.assert_array_equal(a[name][()], b[name][()])


# ---------------------------------------------------------------------------------------------------- the twins
@dataclass
class Twin:
    """An old-format net body and its hand-written current-format twin.

    `inputs` become net-level `input` + `input_dim` (4-D inputs) or `input_shape` in the old net and one Input
    layer named "input" in the twin.  `backward`: run backward (with force_backward) and compare every diff;
    False for nets whose layers have no backward in Caffe.  `mults`: (layer, blob index) -> (lr_mult,
    decay_mult) both nets must give.  The upgraded LayerParameters must equal the twin's, unless `respelled`
    (the twin uses today's spelling of a deprecated field, or writes another file): then behaviour decides."""
    old: str
    new: str
    inputs: dict = field(default_factory=dict)
    backward: bool = True
    phase: int = caffe.TEST
    forwards: int = 1
    files: Callable | None = None
    needs: str | None = None
    after: Callable | None = None
    mults: dict = field(default_factory=dict)
    memory: tuple | None = None
    respelled: bool = False


def simple(enum: str, type_name: str, param: str = "", bottoms=("x",), tops=("y",), **kw) -> Twin:
    """A one-layer twin: `layers { type: ENUM }` against `layer { type: "Name" }` with the same param text."""
    b = " ".join(f'bottom: "{n}"' for n in bottoms)
    t = " ".join(f'top: "{n}"' for n in tops)
    return Twin(f'layers {{ name: "l" type: {enum} {b} {t} {param} }}',
                f'layer {{ name: "l" type: "{type_name}" {b} {t} {param} }}', **kw)


TWINS: dict[str, Twin] = {
    "ABSVAL": simple("ABSVAL", "AbsVal", inputs={"x": away_from_zero(2, 3, 4, 5)}),
    "ACCURACY": simple("ACCURACY", "Accuracy", "accuracy_param { top_k: 2 }", bottoms=("x", "label"),
                       inputs={"x": normal(6, 5), "label": labels(6, 5)}, backward=False),
    "ARGMAX": simple("ARGMAX", "ArgMax", "argmax_param { top_k: 2 out_max_val: true }",
                     inputs={"x": normal(3, 7)}, backward=False),
    "BNLL": simple("BNLL", "BNLL", inputs={"x": normal(2, 3, 4, 5)}),
    "CONCAT": Twin('layers { name: "l" type: CONCAT bottom: "a" bottom: "b" top: "y" concat_param { concat_dim: 1 } }',
                   'layer { name: "l" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 1 } }',
                   inputs={"a": normal(2, 2, 3, 3), "b": normal(2, 3, 3, 3, seed=1)}, respelled=True),
    "CONTRASTIVE_LOSS": Twin(
        'layers { name: "l" type: CONTRASTIVE_LOSS bottom: "a" bottom: "b" bottom: "sim" top: "loss" loss_weight: 0.5 '
        'contrastive_loss_param { margin: 2 legacy_version: true } }',
        'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" loss_weight: 0.5 '
        'contrastive_loss_param { margin: 2 legacy_version: true } }',
        inputs={"a": normal(4, 3), "b": normal(4, 3, seed=1), "sim": np.float32([1, 0, 1, 0])}),
    "CONVOLUTION": Twin(
        'layers { name: "l" type: CONVOLUTION bottom: "x" top: "y" blobs_lr: 1 blobs_lr: 2 weight_decay: 1 '
        'weight_decay: 0 convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 '
        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }',
        'layer { name: "l" type: "Convolution" bottom: "x" top: "y" param { lr_mult: 1 decay_mult: 1 } '
        'param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 '
        'group: 2 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }',
        inputs={"x": normal(2, 4, 5, 5)}, mults={("l", 0): (1, 1), ("l", 1): (2, 0)}),
    # The V1 data upgrade: scale/mean_file/crop_size/mirror written inside data_param move to transform_param.
    "DATA": Twin(
        'layers { name: "l" type: DATA top: "data" top: "label" data_param { source: "lmdb" backend: LMDB '
        'batch_size: 3 scale: 0.5 mean_file: "mean.binaryproto" crop_size: 4 mirror: true } }',
        'layer { name: "l" type: "Data" top: "data" top: "label" transform_param { scale: 0.5 '
        'mean_file: "mean.binaryproto" crop_size: 4 mirror: true } data_param { source: "lmdb" backend: LMDB '
        'batch_size: 3 } }',
        backward=False, phase=caffe.TRAIN, forwards=3, files=write_lmdb),
    "DECONVOLUTION": Twin(
        'layers { name: "l" type: DECONVOLUTION bottom: "x" top: "y" blobs_lr: 0.5 weight_decay: 2 '
        'convolution_param { num_output: 2 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" } '
        'bias_filler { type: "gaussian" } } }',
        'layer { name: "l" type: "Deconvolution" bottom: "x" top: "y" param { lr_mult: 0.5 decay_mult: 2 } '
        'convolution_param { num_output: 2 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" } '
        'bias_filler { type: "gaussian" } } }',
        inputs={"x": normal(2, 3, 3, 3)}, mults={("l", 0): (0.5, 2), ("l", 1): (1, 1)}),
    "DROPOUT": simple("DROPOUT", "Dropout", "dropout_param { dropout_ratio: 0.3 }",
                      inputs={"x": normal(2, 3, 4, 5)}, phase=caffe.TRAIN),
    # The legacy num/channels/height/width against a shape.
    "DUMMY_DATA": Twin(
        'layers { name: "l" type: DUMMY_DATA top: "a" top: "b" dummy_data_param { num: 2 channels: 3 height: 4 '
        'width: 5 data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 3 } } }',
        'layer { name: "l" type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 dim: 4 '
        'dim: 5 } data_filler { type: "gaussian" std: 2 } data_filler { type: "constant" value: 3 } } }',
        backward=False, forwards=2, respelled=True),
    "EUCLIDEAN_LOSS": simple("EUCLIDEAN_LOSS", "EuclideanLoss", bottoms=("a", "b"), tops=("loss",),
                             inputs={"a": normal(3, 4), "b": normal(3, 4, seed=1)}),
    "ELTWISE": simple("ELTWISE", "Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }",
                      bottoms=("a", "b"), inputs={"a": normal(2, 3, 2, 2), "b": normal(2, 3, 2, 2, seed=1)}),
    "EXP": simple("EXP", "Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }", inputs={"x": normal(2, 3)}),
    "FLATTEN": simple("FLATTEN", "Flatten", inputs={"x": normal(2, 3, 2, 2)}),
    "HDF5_DATA": simple("HDF5_DATA", "HDF5Data", 'hdf5_data_param { source: "h5list.txt" batch_size: 3 }',
                        bottoms=(), tops=("data", "label"), backward=False, forwards=3, files=write_hdf5,
                        needs="h5py"),
    "HDF5_OUTPUT": Twin(
        'layers { name: "l" type: HDF5_OUTPUT bottom: "x" bottom: "label" '
        'hdf5_output_param { file_name: "out_v1.h5" } }',
        'layer { name: "l" type: "HDF5Output" bottom: "x" bottom: "label" '
        'hdf5_output_param { file_name: "out_v2.h5" } }',
        inputs={"x": normal(2, 3, 2, 2), "label": labels(2, 4)}, backward=False, needs="h5py",
        after=compare_hdf5_outputs, respelled=True),
    "HINGE_LOSS": simple("HINGE_LOSS", "HingeLoss", "hinge_loss_param { norm: L2 }", bottoms=("x", "label"),
                         tops=("loss",), inputs={"x": normal(4, 5), "label": labels(4, 5)}),
    "IM2COL": simple("IM2COL", "Im2col", "convolution_param { kernel_size: 2 pad: 1 stride: 2 }",
                     inputs={"x": normal(2, 2, 5, 4)}),
    "IMAGE_DATA": Twin(
        'layers { name: "l" type: IMAGE_DATA top: "data" top: "label" image_data_param { source: "list.txt" '
        'batch_size: 2 new_height: 6 new_width: 5 shuffle: true scale: 0.25 crop_size: 4 mirror: true } }',
        'layer { name: "l" type: "ImageData" top: "data" top: "label" transform_param { scale: 0.25 crop_size: 4 '
        'mirror: true } image_data_param { source: "list.txt" batch_size: 2 new_height: 6 new_width: 5 '
        'shuffle: true } }',
        backward=False, phase=caffe.TRAIN, forwards=3, files=write_images),
    "INFOGAIN_LOSS": simple("INFOGAIN_LOSS", "InfogainLoss", 'infogain_loss_param { source: "H.binaryproto" }',
                            bottoms=("p", "label"), tops=("loss",),
                            inputs={"p": uniform(4, 3, low=0.1, seed=2), "label": labels(4, 3)},
                            files=write_infogain),
    # Two layers sharing their blobs by name, with V1's blob_share_mode.
    "INNER_PRODUCT": Twin(
        'layers { name: "ip1" type: INNER_PRODUCT bottom: "x" top: "y1" param: "w" param: "b" blobs_lr: 1 '
        'blobs_lr: 2 weight_decay: 1 weight_decay: 0 inner_product_param { num_output: 3 '
        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } } '
        'layers { name: "ip2" type: INNER_PRODUCT bottom: "x2" top: "y2" param: "w" param: "b" '
        'blob_share_mode: PERMISSIVE blob_share_mode: STRICT inner_product_param { num_output: 3 } }',
        'layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "y1" param { name: "w" lr_mult: 1 '
        'decay_mult: 1 } param { name: "b" lr_mult: 2 decay_mult: 0 } inner_product_param { num_output: 3 '
        'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } } '
        'layer { name: "ip2" type: "InnerProduct" bottom: "x2" top: "y2" param { name: "w" share_mode: PERMISSIVE } '
        'param { name: "b" share_mode: STRICT } inner_product_param { num_output: 3 } }',
        inputs={"x": normal(2, 2, 3), "x2": normal(2, 6, seed=1)}, mults={("ip1", 0): (1, 1), ("ip1", 1): (2, 0)}),
    "LRN": simple("LRN", "LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }",
                  inputs={"x": normal(2, 3, 4, 4)}),
    "MEMORY_DATA": simple("MEMORY_DATA", "MemoryData",
                          "memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }",
                          bottoms=(), tops=("data", "label"), backward=False, forwards=3,
                          memory=(normal(4, 1, 2, 3, seed=3), np.arange(4, dtype=np.float32))),
    "MULTINOMIAL_LOGISTIC_LOSS": simple("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss",
                                        bottoms=("p", "label"), tops=("loss",),
                                        inputs={"p": uniform(4, 5, low=0.1, seed=2), "label": labels(4, 5)}),
    "MVN": simple("MVN", "MVN", "mvn_param { normalize_variance: true across_channels: true }",
                  inputs={"x": normal(2, 3, 4, 4)}),
    "POOLING": simple("POOLING", "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }",
                      inputs={"x": normal(2, 2, 5, 5)}),
    "POWER": simple("POWER", "Power", "power_param { power: 2 scale: 0.5 shift: 1 }", inputs={"x": normal(2, 3)}),
    "RELU": simple("RELU", "ReLU", "relu_param { negative_slope: 0.1 }", inputs={"x": away_from_zero(2, 3, 4)}),
    "SIGMOID": simple("SIGMOID", "Sigmoid", inputs={"x": normal(2, 3)}),
    "SIGMOID_CROSS_ENTROPY_LOSS": simple("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss",
                                         bottoms=("x", "t"), tops=("loss",),
                                         inputs={"x": normal(3, 4), "t": uniform(3, 4, seed=1)}),
    "SILENCE": simple("SILENCE", "Silence", tops=(), inputs={"x": normal(2, 3)}),
    "SOFTMAX": simple("SOFTMAX", "Softmax", "softmax_param { axis: 1 }", inputs={"x": normal(2, 4, 3)}),
    "SOFTMAX_LOSS": simple("SOFTMAX_LOSS", "SoftmaxWithLoss",
                           "loss_param { ignore_label: 1 normalization: VALID } softmax_param { axis: 1 }",
                           bottoms=("x", "label"), tops=("loss",), inputs={"x": normal(6, 4), "label": labels(6, 4)}),
    "SPLIT": simple("SPLIT", "Split", tops=("a", "b"), inputs={"x": normal(2, 3)}),
    "SLICE": Twin('layers { name: "l" type: SLICE bottom: "x" top: "a" top: "b" '
                  'slice_param { slice_dim: 1 slice_point: 1 } }',
                  'layer { name: "l" type: "Slice" bottom: "x" top: "a" top: "b" '
                  'slice_param { axis: 1 slice_point: 1 } }',
                  inputs={"x": normal(2, 3, 2)}, respelled=True),
    "TANH": simple("TANH", "TanH", inputs={"x": normal(2, 3)}),
    # WindowData reads crop_size/mirror/mean_file from transform_param, where the V1 upgrade moves them.
    "WINDOW_DATA": Twin(
        'layers { name: "l" type: WINDOW_DATA top: "data" top: "label" window_data_param { source: "windows.txt" '
        'batch_size: 4 fg_fraction: 0.5 context_pad: 1 crop_size: 6 mirror: true mean_file: "wmean.binaryproto" '
        'crop_mode: "square" } }',
        'layer { name: "l" type: "WindowData" top: "data" top: "label" transform_param { crop_size: 6 mirror: true '
        'mean_file: "wmean.binaryproto" } window_data_param { source: "windows.txt" batch_size: 4 fg_fraction: 0.5 '
        'context_pad: 1 crop_mode: "square" } }',
        backward=False, phase=caffe.TRAIN, forwards=3, files=write_windows),
    "THRESHOLD": simple("THRESHOLD", "Threshold", "threshold_param { threshold: 0.2 }", inputs={"x": normal(2, 3)},
                        backward=False),
}

V1_ENUMS = [v.name for v in caffe_pb2.V1LayerParameter.LayerType.DESCRIPTOR.values if v.name != "NONE"]


def test_every_v1_enum_value_has_a_twin():
    assert sorted(V1_ENUMS) == sorted(TWINS), (
        f"V1 enum values without a twin: {sorted(set(V1_ENUMS) - set(TWINS))}; "
        f"twins of no V1 enum value: {sorted(set(TWINS) - set(V1_ENUMS))}")


# ------------------------------------------------------------------------------------------------ running twins
def net_texts(twin: Twin) -> tuple[str, str]:
    """The old net (net-level inputs) and the twin (an Input layer named "input"), both force_backward when
    the comparison runs backward."""
    head = "force_backward: true\n" if twin.backward else ""
    old, new = head, head
    if twin.inputs:
        names = list(twin.inputs)
        shapes = [a.shape for a in twin.inputs.values()]
        old += "".join(f'input: "{n}"\n' for n in names)
        if all(len(s) == 4 for s in shapes):
            old += "".join(f"input_dim: {d}\n" for s in shapes for d in s)
        else:
            old += "".join("input_shape { " + " ".join(f"dim: {d}" for d in s) + " }\n" for s in shapes)
        new += ('layer { name: "input" type: "Input" ' + " ".join(f'top: "{n}"' for n in names) + " input_param { "
                + " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes) + " } }\n")
    return old + twin.old + "\n", new + twin.new + "\n"


def build(text: str, twin: Twin, path) -> caffe.Net:
    path.write_text(text)
    caffe.set_random_seed(1234)  # fillers and data-layer generators draw the same values in both nets
    net = caffe.Net(str(path), twin.phase)
    if twin.memory is not None:
        net.set_input_arrays(*twin.memory)
    return net


def run_forward(net: caffe.Net, twin: Twin, k: int) -> None:
    for name, value in twin.inputs.items():
        net.blobs[name].data[...] = value
    caffe.set_random_seed(99 + k)  # Dropout's mask
    net.forward()


def seed_output_diffs(net: caffe.Net) -> None:
    """Random diffs on the outputs that are not losses (a loss top's diff is its loss weight)."""
    for i, name in enumerate(net.outputs):
        if not net.blob_loss_weights.get(name):
            blob = net.blobs[name]
            blob.diff[...] = np.random.default_rng(40 + i).normal(size=blob.shape)


def assert_same_blobs(old: caffe.Net, new: caffe.Net, what: str) -> None:
    for name in new.blobs:
        np.testing.assert_array_equal(old.blobs[name].data, new.blobs[name].data, err_msg=f"{what}: {name} data")
        np.testing.assert_array_equal(old.blobs[name].diff, new.blobs[name].diff, err_msg=f"{what}: {name} diff")


def assert_twins_agree(twin: Twin, tmp_path) -> tuple[caffe.Net, caffe.Net]:
    if twin.needs:
        pytest.importorskip(twin.needs)
    if twin.files:
        twin.files(tmp_path)
    old_text, new_text = net_texts(twin)
    old = build(old_text, twin, tmp_path / "old.prototxt")
    new = build(new_text, twin, tmp_path / "new.prototxt")
    assert list(old.blobs) == list(new.blobs)
    assert [(lv.name, lv.type) for lv in old.layers] == [(lv.name, lv.type) for lv in new.layers]
    assert list(old.params) == list(new.params)
    if not twin.respelled:
        for a, b in zip(old.layer_list, new.layer_list):
            assert a.param == b.param, f"{a.layer_name}: upgraded {a.param} != twin {b.param}"
    # Seeded alike, the fillers gave the same values; copying old's into new makes that explicit either way.
    for name, blobs in old.params.items():
        for i, blob in enumerate(blobs):
            np.testing.assert_array_equal(new.params[name][i].data, blob.data, err_msg=f"{name}[{i}] filled")
            new.params[name][i].data[...] = blob.data
    mults = [[(p.layer, p.index, p.lr_mult, p.decay_mult, p.name) for p in net.learnable] for net in (old, new)]
    assert mults[0] == mults[1]
    for (layer, index), expected in twin.mults.items():
        assert next((p.lr_mult, p.decay_mult) for p in old.learnable if (p.layer, p.index) == (layer, index)) \
            == expected
    for k in range(twin.forwards):
        run_forward(old, twin, k)
        run_forward(new, twin, k)
        assert_same_blobs(old, new, f"forward {k}")
    if twin.backward:
        for net in (old, new):
            seed_output_diffs(net)
            net.backward()
        assert_same_blobs(old, new, "backward")
        for name in old.params:
            for i, (a, b) in enumerate(zip(old.params[name], new.params[name])):
                np.testing.assert_array_equal(a.diff, b.diff, err_msg=f"{name}[{i}] diff")
    if twin.after:
        twin.after(tmp_path)
    return old, new


@pytest.mark.parametrize("enum", V1_ENUMS)
def test_v1_layer_runs_like_its_current_format_twin(enum, tmp_path, monkeypatch):
    if enum not in TWINS:
        pytest.fail(f"V1 LayerType {enum} has no current-format twin in TWINS")
    twin = TWINS[enum]
    parsed = text_format.Parse(twin.old, caffe_pb2.NetParameter())
    assert caffe_pb2.V1LayerParameter.LayerType.Value(enum) in [layer.type for layer in parsed.layers]
    monkeypatch.chdir(tmp_path)  # data files are named relative to the working directory, as in Caffe
    old, new = assert_twins_agree(twin, tmp_path)
    if twin.backward and old.params:
        assert any(np.any(b.diff != 0) for blobs in old.params.values() for b in blobs)
    if twin.backward and enum != "SILENCE":  # Silence's backward gives zeros
        assert any(np.any(old.blobs[name].diff != 0) for name in twin.inputs)


def test_shared_v1_params_are_one_blob(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, _ = assert_twins_agree(TWINS["INNER_PRODUCT"], tmp_path)
    ip1, ip2 = old.layer_dict["ip1"].module, old.layer_dict["ip2"].module
    assert all(a is b for a, b in zip(ip1.blobs, ip2.blobs))
    assert [(p.layer, p.name) for p in old.learnable] == [("ip1", "w"), ("ip1", "b")]


# --------------------------------------------------------------------------------------------- V1 caffemodels
V1_SMALL = """input: "x"
input_dim: 2 input_dim: 3 input_dim: 5 input_dim: 5
layers { name: "conv" type: CONVOLUTION bottom: "x" top: "conv" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "ip" type: INNER_PRODUCT bottom: "conv" top: "ip" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" }
"""
CURRENT_SMALL = """layer { name: "input" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "conv" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def legacy_blob(array: np.ndarray) -> caffe_pb2.BlobProto:
    a = array.reshape((1,) * (4 - array.ndim) + array.shape)
    bp = caffe_pb2.BlobProto(num=a.shape[0], channels=a.shape[1], height=a.shape[2], width=a.shape[3])
    bp.data.extend(a.ravel().tolist())
    return bp


def test_v1_caffemodel_loads_into_the_current_net_and_back(tmp_path):
    weights = {"conv": [normal(4, 3, 3, 3, seed=1), normal(4, seed=2)],
               "ip": [normal(5, 36, seed=3), normal(5, seed=4)]}
    model = caffe_pb2.NetParameter(name="small")
    for name, enum in (("conv", caffe_pb2.V1LayerParameter.CONVOLUTION), ("relu", caffe_pb2.V1LayerParameter.RELU),
                       ("ip", caffe_pb2.V1LayerParameter.INNER_PRODUCT)):
        layer = model.layers.add(name=name, type=enum)
        layer.blobs.extend(legacy_blob(w) for w in weights.get(name, []))
    v1_model = tmp_path / "v1.caffemodel"
    v1_model.write_bytes(model.SerializeToString())
    (tmp_path / "v1.prototxt").write_text(V1_SMALL)
    (tmp_path / "current.prototxt").write_text(CURRENT_SMALL)

    current = caffe.Net(str(tmp_path / "current.prototxt"), caffe.TEST, weights=str(v1_model))
    old = caffe.Net(str(tmp_path / "v1.prototxt"), caffe.TEST, weights=str(v1_model))
    for name, arrays in weights.items():
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(current.params[name][i].data, a)  # legacy (1, 1, 5, 36) -> (5, 36)
            np.testing.assert_array_equal(old.params[name][i].data, a)
    x = normal(2, 3, 5, 5, seed=5)
    np.testing.assert_array_equal(current.forward(x=x)["prob"], old.forward(x=x)["prob"])

    # Saved by the current net (current format, full shapes), read back into the V1 net.
    resaved = tmp_path / "current.caffemodel"
    current.save(str(resaved))
    back = caffe_pb2.NetParameter.FromString(resaved.read_bytes())
    assert not back.layers and [lp.name for lp in back.layer if lp.blobs] == ["conv", "ip"]
    again = caffe.Net(str(tmp_path / "v1.prototxt"), caffe.TEST, weights=str(resaved))
    for name, arrays in weights.items():
        for i, a in enumerate(arrays):
            np.testing.assert_array_equal(again.params[name][i].data, a)


# ------------------------------------------------------------------------------------------------------ V0 nets
V0_TWINS = {
    # A padding layer folded into the conv it feeds, flat fields, blobs_lr / weight_decay.
    "conv-net": Twin(
        'layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "x" top: "pad1" }\n'
        'layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 group: 1 biasterm: true '
        'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } '
        'blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 } bottom: "pad1" top: "conv1" }\n'
        'layers { layer { name: "relu1" type: "relu" } bottom: "conv1" top: "conv1" }\n'
        'layers { layer { name: "pool1" type: "pool" pool: MAX kernelsize: 2 stride: 2 } bottom: "conv1" '
        'top: "pool1" }\n'
        'layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.1 beta: 0.75 k: 2 } bottom: "pool1" '
        'top: "norm1" }\n'
        'layers { layer { name: "drop1" type: "dropout" dropout_ratio: 0.25 } bottom: "norm1" top: "norm1" }\n'
        'layers { layer { name: "ip1" type: "innerproduct" num_output: 5 weight_filler { type: "xavier" } '
        'bias_filler { type: "gaussian" } } bottom: "norm1" top: "ip1" }\n'
        'layers { layer { name: "loss" type: "softmax_loss" } bottom: "ip1" bottom: "label" top: "loss" }',
        'layer { name: "conv1" type: "Convolution" bottom: "x" top: "conv1" param { lr_mult: 1 decay_mult: 1 } '
        'param { lr_mult: 2 decay_mult: 0 } convolution_param { num_output: 4 kernel_size: 3 stride: 1 pad: 1 '
        'group: 1 bias_term: true weight_filler { type: "gaussian" std: 0.5 } '
        'bias_filler { type: "constant" value: 0.1 } } }\n'
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
        'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" '
        'lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 k: 2 } }\n'
        'layer { name: "drop1" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.25 } }\n'
        'layer { name: "ip1" type: "InnerProduct" bottom: "norm1" top: "ip1" inner_product_param { num_output: 5 '
        'weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }',
        inputs={"x": normal(2, 3, 6, 6), "label": labels(2, 5).reshape(2, 1, 1, 1)}, phase=caffe.TRAIN,
        mults={("conv1", 0): (1, 1), ("conv1", 1): (2, 0)}),
    # V0 "images": the image list fields and the transformation fields of the layer itself.
    "images": Twin(
        'layers { layer { name: "img" type: "images" source: "list.txt" batchsize: 2 new_height: 6 new_width: 5 '
        'shuffle_images: true scale: 0.5 cropsize: 4 mirror: true } top: "data" top: "label" }',
        'layer { name: "img" type: "ImageData" top: "data" top: "label" transform_param { scale: 0.5 crop_size: 4 '
        'mirror: true } image_data_param { source: "list.txt" batch_size: 2 new_height: 6 new_width: 5 '
        'shuffle: true } }',
        backward=False, phase=caffe.TRAIN, forwards=3, files=write_images),
}


@pytest.mark.parametrize("name", sorted(V0_TWINS))
def test_v0_net_runs_like_its_current_format_twin(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = assert_twins_agree(V0_TWINS[name], tmp_path)
    assert old._layer_names == new._layer_names  # the padding layer is gone, folded into conv1's pad
