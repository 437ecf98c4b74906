"""caffelike: BVLC Caffe's files and habits on PyTorch.

`import caffelike as caffe` gives pycaffe's names: Net, TRAIN, TEST, set_mode_cpu/gpu, set_device,
set_random_seed, layer_type_list, ...
"""
from caffelike.proto import caffe_pb2
from caffelike.errors import CaffeError, LayerError, PrototxtError, WeightsError
from caffelike.layers import layer_type_list
from caffelike.runtime import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from caffelike.graph import NetGraph
from caffelike.net import Net
from caffelike.pylayer import Layer, TorchLayer
from caffelike.net_spec import NetSpec, layers, params, to_proto
from caffelike import io  # noqa: E402  (pycaffe's caffe.io)
from caffelike.classifier import Classifier

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
__version__ = "0.1.0"

__all__ = [
    "Net", "NetGraph", "Layer", "TorchLayer", "NetSpec", "layers", "params", "to_proto", "io", "Classifier", "TRAIN", "TEST", "caffe_pb2", "layer_type_list", "set_mode_cpu", "set_mode_gpu",
    "set_device", "set_random_seed", "CaffeError", "LayerError", "PrototxtError", "WeightsError",
]

from caffelike.solver import (  # noqa: E402
    AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver, Solver, get_solver,
)

__all__ += ["Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
            "AdamSolver", "get_solver"]
