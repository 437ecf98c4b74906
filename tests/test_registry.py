"""Registry-wide checks: every registered Caffe type is listed here with a small configuration, builds, runs
forward on CPU, and (where Caffe has a backward) passes the finite-difference gradient check.  A type added to
the registry without an entry here fails `test_every_registered_type_has_a_case`."""
import numpy as np
import pytest
import torch
from caffelike.layers.base import layer_class
from helpers import FIXTURES, as_tuple, check_gradient, make_layer

import caffelike as caffe


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def away_from_zero(*shape, seed=0):
    x = normal(*shape, seed=seed)
    return np.where(np.abs(x) < 0.1, 0.3, x)


def labels(n, classes, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=n).astype(np.float64)


def window_file():
    """WindowData's source, written into the (temporary) working directory: windows of two fixture images."""
    images = FIXTURES / "layers" / "imagedata"
    blocks = [f"# {i}\n{images / f'img_{i}.png'}\n3 28 28\n2\n{i + 1} 0.8 2 3 20 25\n0 0.1 0 0 13 13\n"
              for i in range(2)]
    with open("windows.txt", "w") as f:
        f.write("".join(blocks))
    return []


# type -> (layer text, bottoms factory, gradient-check options; None = no backward in Caffe, skip the check)
CASES = {
    "AbsVal": ('type: "AbsVal"', lambda: [away_from_zero(2, 3, 4)], {}),
    "Accuracy": ('type: "Accuracy" accuracy_param { top_k: 2 }', lambda: [normal(4, 5), labels(4, 5)], None),
    "ArgMax": ('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', lambda: [normal(2, 3, 4)], None),
    "BNLL": ('type: "BNLL"', lambda: [normal(2, 3, 4)], {}),
    "BatchNorm": ('type: "BatchNorm"', lambda: [normal(4, 3, 2, 2)], {}),
    "BatchReindex": ('type: "BatchReindex"', lambda: [normal(4, 3), np.array([2.0, 0.0, 2.0, 3.0, 1.0])],
                     {"grad_bottoms": [0]}),
    "Bias": ('type: "Bias" bias_param { filler { type: "gaussian" } }', lambda: [normal(2, 3, 4)], {}),
    "Clip": ('type: "Clip" clip_param { min: -0.55 max: 0.7 }',
             lambda: [np.linspace(-1.5, 1.5, 24).reshape(2, 3, 4)], {}),  # no input within 0.03 of a bound
    "Concat": ('type: "Concat"', lambda: [normal(2, 2, 3), normal(2, 3, 3, seed=1)], {}),
    "ContrastiveLoss": ('type: "ContrastiveLoss" contrastive_loss_param { margin: 3 }',
                        lambda: [normal(4, 3), normal(4, 3, seed=1), np.array([1.0, 0.0, 1.0, 0.0])],
                        {"grad_bottoms": [0, 1], "threshold": 2e-3}),  # Caffe's +1e-4 in the dissimilar gradient
    "Convolution": ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 '
                    'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                    lambda: [normal(2, 4, 5, 5)], {}),
    "Crop": ('type: "Crop" crop_param { offset: 1 }', lambda: [normal(2, 3, 5, 5), normal(2, 3, 3, 3)],
             {"grad_bottoms": [0]}),
    "Data": ('type: "Data" top: "data" top: "label" transform_param { scale: 0.0125 crop_size: 24 } '
             'data_param { source: "../../data/mnist_val_lmdb" batch_size: 4 backend: LMDB }', lambda: [], None),
    "DummyData": ('type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } '
                  'data_filler { type: "gaussian" } }', lambda: [], None),
    "Embed": ('type: "Embed" embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" } '
              'bias_filler { type: "gaussian" } }', lambda: [np.array([[0.0, 4.0, 2.0], [2.0, 1.0, 3.0]])],
              {"grad_bottoms": []}),
    "Exp": ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', lambda: [normal(2, 3)], {}),
    "Filter": ('type: "Filter" top: "a" top: "b"',
               lambda: [normal(3, 2), normal(3, 4, seed=1), np.array([1.0, 2.0, -1.0])], {"grad_bottoms": [0, 1]}),
    "HDF5Data": ('type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "h5list.txt" batch_size: 3 }',
                 lambda: [], None),
    "HDF5Output": ('type: "HDF5Output" hdf5_output_param { file_name: "out.h5" }',
                   lambda: [normal(2, 3), labels(2, 3)], None),
    "Im2col": ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 1 }',
               lambda: [normal(2, 2, 5, 4)], {}),
    "ImageData": ('type: "ImageData" top: "data" top: "label" image_data_param { source: "images.txt" '
                  'batch_size: 2 is_color: false }', lambda: [], None),
    "Log": ('type: "Log" log_param { base: 10 scale: 0.5 shift: 3 }', lambda: [normal(2, 3)], {}),
    "MVN": ('type: "MVN"', lambda: [normal(2, 3, 4)], {}),
    "MemoryData": ('type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 channels: 1 '
                   'height: 3 width: 4 }', lambda: [], None),
    "Deconvolution": ('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride: 2 '
                      'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                      lambda: [normal(2, 3, 3, 3)], {}),
    "Dropout": ('type: "Dropout"', lambda: [normal(2, 3, 4)], {}),
    "ELU": ('type: "ELU" elu_param { alpha: 0.5 }', lambda: [away_from_zero(2, 3, 4)], {}),
    "Eltwise": ('type: "Eltwise" eltwise_param { operation: PROD }', lambda: [normal(2, 3), normal(2, 3, seed=1)],
                {}),
    "EuclideanLoss": ('type: "EuclideanLoss"', lambda: [normal(3, 4), normal(3, 4, seed=1)], {}),
    "Flatten": ('type: "Flatten"', lambda: [normal(2, 3, 2, 2)], {}),
    "HingeLoss": ('type: "HingeLoss" hinge_loss_param { norm: L2 }', lambda: [normal(4, 5), labels(4, 5)],
                  {"grad_bottoms": [0]}),
    "InfogainLoss": ('type: "InfogainLoss"', lambda: [normal(4, 3), labels(4, 3), np.eye(3) + 0.1],
                     {"grad_bottoms": [0]}),
    "InnerProduct": ('type: "InnerProduct" inner_product_param { num_output: 3 weight_filler { type: "gaussian" } '
                     'bias_filler { type: "gaussian" } }', lambda: [normal(2, 2, 3)], {}),
    "Input": ('type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } }', lambda: [], None),
    "LSTM": ('type: "LSTM" recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
             'bias_filler { type: "gaussian" } }',
             lambda: [normal(3, 2, 4), np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])],
             {"grad_bottoms": [0]}),  # cont gets no gradient
    "LSTMUnit": ('type: "LSTMUnit" top: "c" top: "h"',
                 lambda: [normal(1, 2, 3), normal(1, 2, 12, seed=1), np.array([[1.0, 0.0]])],
                 {"grad_bottoms": [0, 1]}),
    "LRN": ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 }', lambda: [normal(2, 5, 3, 3)], {}),
    "MultinomialLogisticLoss": ('type: "MultinomialLogisticLoss"',
                                lambda: [np.random.default_rng(0).uniform(0.1, 1.0, (4, 5)), labels(4, 5)],
                                {"grad_bottoms": [0]}),
    "PReLU": ('type: "PReLU"', lambda: [away_from_zero(2, 3, 4)], {}),
    "Parameter": ('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', lambda: [], {}),
    "Pooling": ('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
                lambda: [normal(2, 2, 5, 5)], {}),
    "Power": ('type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }', lambda: [normal(2, 3)], {}),
    # A pycaffe layer brings its own backward (checked in test_python_layer.py); this one is the pyloss example.
    "Python": ('type: "Python" top: "loss" python_param { module: "pyloss" layer: "EuclideanLossLayer" }',
               lambda: [normal(3, 4), normal(3, 4, seed=1)], None),
    "RNN": ('type: "RNN" recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
            'bias_filler { type: "gaussian" } }',
            lambda: [normal(3, 2, 4), np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])],
            {"grad_bottoms": [0]}),
    "ReLU": ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda: [away_from_zero(2, 3, 4)], {}),
    "Reduction": ('type: "Reduction" reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }',
                  lambda: [normal(2, 3, 4)], {}),
    "Reshape": ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', lambda: [normal(2, 3, 4)], {}),
    "SPP": ('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', lambda: [normal(2, 2, 5, 6)], {}),
    "Scale": ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } }',
              lambda: [normal(2, 3, 4)], {}),
    "Sigmoid": ('type: "Sigmoid"', lambda: [normal(2, 3)], {}),
    "SigmoidCrossEntropyLoss": ('type: "SigmoidCrossEntropyLoss"',
                                lambda: [normal(3, 4), np.random.default_rng(1).uniform(0.0, 1.0, (3, 4))],
                                {"grad_bottoms": [0]}),
    "Silence": ('type: "Silence"', lambda: [normal(2, 3)], None),
    "Slice": ('type: "Slice" top: "a" top: "b" slice_param { slice_point: 1 }', lambda: [normal(2, 3, 2)], {}),
    "Softmax": ('type: "Softmax"', lambda: [normal(2, 4, 3)], {}),
    "SoftmaxWithLoss": ('type: "SoftmaxWithLoss"', lambda: [normal(4, 5), labels(4, 5)], {"grad_bottoms": [0]}),
    "Split": ('type: "Split" top: "a" top: "b"', lambda: [normal(2, 3)], {}),
    "Swish": ('type: "Swish" swish_param { beta: 1.5 }', lambda: [normal(2, 3)], {}),
    "TanH": ('type: "TanH"', lambda: [normal(2, 3)], {}),
    "WindowData": ('type: "WindowData" top: "data" top: "label" transform_param { crop_size: 12 mirror: true } '
                   'window_data_param { source: "windows.txt" batch_size: 4 context_pad: 2 }', window_file, None),
    "Threshold": ('type: "Threshold" threshold_param { threshold: 0.2 }', lambda: [normal(2, 3)], None),
    "Tile": ('type: "Tile" tile_param { axis: 1 tiles: 3 }', lambda: [normal(2, 2, 3)], {}),
    # Bound in this process under fixed keys (see bound_for_registry): a prototxt cannot name a module itself.
    "TorchLoss": ('type: "TorchLoss" python_param { param_str: "registry-loss" }',
                  lambda: bound_for_registry() and [normal(4, 3), labels(4, 3)], {"grad_bottoms": [0]}),
    "TorchModule": ('type: "TorchModule" python_param { param_str: "registry-module" }',
                    lambda: bound_for_registry() and [normal(2, 3, 4)], {}),
}

_KEEP = []


def bound_for_registry() -> bool:
    """Bind a small module and a loss under the keys the TorchModule and TorchLoss cases name."""
    from caffelike.layers import torch_module

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    spec = torch_module.LossSpec(lambda out, target: torch.nn.functional.cross_entropy(out, target))
    _KEEP[:] = [module, spec]
    torch_module._BOUND["registry-module"] = module
    torch_module._BOUND["registry-loss"] = spec
    return True


# Source layers that read files run in the fixture folder holding them (Caffe resolves paths against the cwd).
CWD = {"Data": "layers/data_lmdb_transform", "HDF5Data": "layers/hdf5data", "ImageData": "layers/imagedata",
       "Python": "nets/python_euclidean_loss"}
# Sink layers that write files, and WindowData (its window file is written there), run in a fresh temporary folder.
TMP_CWD = {"HDF5Output", "WindowData"}


def test_every_registered_type_has_a_case():
    missing = sorted(set(caffe.layer_type_list()) - set(CASES))
    assert not missing, f"registered types without a registry test case: {missing}"


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_builds_and_runs_forward(type_name, monkeypatch, tmp_path):
    if type_name in TMP_CWD:
        if type_name == "HDF5Output":
            pytest.importorskip("h5py")
        monkeypatch.chdir(tmp_path)
    if type_name in CWD:
        if type_name == "HDF5Data":
            pytest.importorskip("h5py")
        if type_name == "Python":  # pyloss.py is the fixture's own: consent to import it from there
            monkeypatch.setenv("CAFFELIKE_TRUST_MODEL_DIR", "1")
        monkeypatch.chdir(FIXTURES / CWD[type_name])
    text, bottoms, _ = CASES[type_name]
    xs = bottoms()
    layer = make_layer(text, [x.shape for x in xs], caffe.TRAIN if type_name == "Dropout" else caffe.TEST)
    assert layer.type == type_name and layer_class(type_name) is type(layer)
    if type_name == "Input":
        assert layer.infer_top_shapes([]) == [(2, 3)]
        return
    if type_name == "MemoryData":
        layer.reset(np.zeros((4, 1, 3, 4), np.float32), np.arange(4, dtype=np.float32))
    tensors = [torch.as_tensor(x, dtype=torch.float32) for x in xs]
    tops = as_tuple(layer(*tensors))
    assert [tuple(t.shape) for t in tops] == layer.infer_top_shapes([x.shape for x in xs])
    assert all(torch.isfinite(t).all() for t in tops)


@pytest.mark.parametrize("type_name", sorted(k for k, v in CASES.items() if v[2] is not None))
def test_gradient(type_name):
    text, bottoms, options = CASES[type_name]
    xs = bottoms()
    # Dropout's TEST phase is the identity; its TRAIN mask is re-drawn from the same seed in every evaluation.
    layer = make_layer(text, [x.shape for x in xs], caffe.TRAIN if type_name == "Dropout" else caffe.TEST)
    report = check_gradient(layer, xs, **options)
    assert report.checked > 0
