"""caffelike: BVLC Caffe's files and habits on PyTorch.

`import caffelike as caffe` gives pycaffe's names: Net, TRAIN, TEST, set_mode_cpu/gpu, set_device,
set_random_seed, layer_type_list, the solvers, io, Classifier, NetSpec's layers/params/to_proto, coord_map,
Timer, has_nccl/NCCL and the solver count/rank settings.

The package face only: the rooms behind it are format/ (Caffe's files), core/ (blobs, fillers, run mode),
data/ (Datum, LMDB, transformer, prefetch), caffelike.layers (the layer library), net/, train/, digits/ and cli/.
docs/architecture.md draws them.
"""
import os as _os
import pathlib as _pathlib
import signal as _signal
import sys as _sys

if _os.path.basename(_sys.argv[0]) == "caffelike" or getattr(_sys, "orig_argv", [])[1:3] == ["-m", "caffelike"]:
    # The `caffelike` command: a Ctrl-C while torch loads ends it quietly with 130, as Caffe's binary would
    # end; cli.main puts Python's own handler back once the command runs.
    _signal.signal(_signal.SIGINT, lambda *_: _os._exit(130))

from caffelike import _source_tree  # noqa: E402

_source_tree.install(_pathlib.Path(__file__).resolve().parent)  # before the first caffelike.proto import

from caffelike import io  # noqa: E402  (pycaffe's caffe.io)
from caffelike import coord_map  # noqa: E402  (pycaffe's caffe.coord_map)
from caffelike.classifier import Classifier  # noqa: E402
from caffelike.core.runtime import set_device, set_mode_cpu, set_mode_gpu, set_random_seed  # noqa: E402
from caffelike.core.runtime import (  # noqa: E402
    Timer, has_nccl, set_multiprocess, set_solver_count, set_solver_rank, solver_count, solver_rank,
)
from caffelike.errors import CaffeError, LayerError, PrototxtError, WeightsError  # noqa: E402
from caffelike.layers import layer_type_list  # noqa: E402
from caffelike.layers.python_base import Layer, TorchLayer  # noqa: E402
from caffelike.net import Net, NetGraph  # noqa: E402
from caffelike.net_spec import NetSpec, layers, params, to_proto  # noqa: E402
from caffelike.proto import caffe_pb2  # noqa: E402
from caffelike.train.nccl import NCCL  # noqa: E402  (on torch.distributed)
from caffelike.train.solver import (  # noqa: E402
    AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver, Solver, get_solver,
)

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST
get_solver_from_file = get_solver  # the name BVLC's OpenCL branch and the forks on it export
__version__ = "0.1.0"

__all__ = [
    "Net", "NetGraph", "Layer", "TorchLayer", "NetSpec", "layers", "params", "to_proto", "io", "Classifier",
    "TRAIN", "TEST", "caffe_pb2", "layer_type_list", "set_mode_cpu", "set_mode_gpu", "set_device",
    "set_random_seed", "CaffeError", "LayerError", "PrototxtError", "WeightsError",
    "Solver", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
    "get_solver", "get_solver_from_file", "coord_map", "has_nccl", "NCCL", "Timer", "solver_count",
    "set_solver_count", "solver_rank", "set_solver_rank", "set_multiprocess",
]
