"""`type: "Python"` layers: user classes named by python_param, run with Caffe's full contract.

The module `python_param.module` is imported (searched on the prototxt's folder, the working directory, the
folders given to `add_python_path` / `--python-path`, then sys.path, which holds PYTHONPATH) and
`python_param.layer` instantiated.  The first two are folders caffelike searches on its own, where a downloaded
model keeps its code: a module found only there is imported with consent alone (`trust_python=True`, the
command line's --trust-model-dir or CAFFELIKE_TRUST_MODEL_DIR=1), otherwise the net fails naming the file, as
BVLC Caffe searched sys.path only.  A pycaffe layer (a `caffe.Layer` subclass) gets `param_str` and `phase`
before `setup(bottom, top)`, `reshape` before every `forward`, and `backward(top, propagate_down, bottom)` when
the net needs it; it sees host numpy arrays, so on CUDA only its own bottoms and tops are copied.  Blobs it adds
with `self.blobs.add_blob(*shape)` are real parameters of the net.  A `caffelike.TorchLayer` subclass instead
runs on device tensors with autograd.  Exceptions in user code, and sys.exit, become LayerErrors (RuntimeErrors)
naming the layer, with the user's traceback.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import os
import sys
import traceback

import numpy as np
import torch
from caffelike.layers.base import Layer, register, shape_str
from caffelike.layers.python_base import BlobVec, HostBlob, TorchLayer, alias_caffe
from torch import nn

from caffelike.core.blob import ParamBlob
from caffelike.errors import LayerError

EXTRA_PATHS: list[str] = []  # --python-path folders: named by the user, so searched without asking
_NET_DIR: list[tuple[str, bool]] = []  # (the folder of the prototxt being built, whether its code may run)
_FROM_MODEL_DIRS: dict[str, str] = {}  # top-level modules imported from a model's folder with consent -> file
TRUST_ENV = "CAFFELIKE_TRUST_MODEL_DIR"
HOW_TO_TRUST = ("pass --trust-model-dir to caffelike train/test/time/classify, trust_python=True to caffe.Net(...) "
                f"or Solver(...), or set {TRUST_ENV}=1")


def add_python_path(folder: str) -> None:
    """Also look for Python-layer modules in `folder` (the command line's --python-path)."""
    folder = os.path.abspath(folder)
    if folder not in EXTRA_PATHS:
        EXTRA_PATHS.append(folder)


def env_trusts_model_dir() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def net_folder(folder: str | None, trust: bool = False):
    """While a net builds, its prototxt's folder (then the working directory) is searched first for Python-layer
    modules, if `trust` or CAFFELIKE_TRUST_MODEL_DIR=1 lets the model's own code run."""
    _NET_DIR.append((os.path.abspath(folder) if folder is not None else "", bool(trust)))
    try:
        yield
    finally:
        _NET_DIR.pop()


def _model_dirs() -> list[str]:
    """The folders caffelike searches on its own: the prototxt's folder and the working directory."""
    return list(dict.fromkeys([d for d, _ in _NET_DIR[-1:] if d] + [os.getcwd()]))


def _trusted() -> bool:
    return bool(_NET_DIR and _NET_DIR[-1][1]) or env_trusts_model_dir()


def _on_chosen_path(folder: str) -> bool:
    """Whether `folder` is one the user put on the search path (sys.path, PYTHONPATH, --python-path)."""
    return folder in {os.path.abspath(p or os.curdir) for p in [*sys.path, *EXTRA_PATHS] if isinstance(p, str)}


def _module_folder(mod) -> tuple[str | None, str | None]:
    """(file, the folder it was found in) of a top-level module; a package's folder is its parent's."""
    file = getattr(mod, "__file__", None)
    if not file:
        return None, None
    folder = os.path.dirname(os.path.abspath(file))
    if os.path.splitext(os.path.basename(file))[0] == "__init__":
        folder = os.path.dirname(folder)
    return file, folder


def _refuse(where: str, file: str, folder: str):
    place = "the model's folder" if _NET_DIR and folder == _NET_DIR[-1][0] else "the working directory"
    raise LayerError(f"{where} would import {file} from {place}: that runs the model's own code, which caffelike "
                     "does only with consent (BVLC Caffe searched sys.path/PYTHONPATH alone). To allow it, "
                     f"{HOW_TO_TRUST} (or put its folder on PYTHONPATH or --python-path)")


def import_layer_class(module: str, name: str, where: str):
    alias_caffe()
    trust = _trusted()
    model_dirs = _model_dirs()
    dirs = list(dict.fromkeys((model_dirs if trust else []) + EXTRA_PATHS))
    layer = f"{where} ({module}.{name})"
    top = module.partition(".")[0]
    if not trust and top in _FROM_MODEL_DIRS:  # a trusted net imported it from its folder earlier on
        file, folder = _module_folder(sys.modules.get(top))
        if (file == _FROM_MODEL_DIRS[top] and not _on_chosen_path(folder)
                and importlib.machinery.PathFinder.find_spec(top, [*EXTRA_PATHS, *sys.path]) is None):
            _refuse(layer, file, folder)
    added = [d for d in dirs if d not in sys.path]
    sys.path[:0] = added
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module and not module.startswith(f"{e.name}."):
            raise LayerError(f"{where}: importing module '{module}' failed: {e}\n{traceback.format_exc()}") from e
        for folder in [] if trust or e.name != top else model_dirs:
            spec = importlib.machinery.PathFinder.find_spec(top, [folder])
            if spec is not None:
                _refuse(layer, spec.origin if spec.has_location else os.path.join(folder, top), folder)
        searched = dirs + [f"{d} (needs consent)" for d in model_dirs if d not in dirs]
        raise LayerError(f"{where}: cannot find Python module '{module}' (searched {', '.join(searched)} and "
                         "sys.path/PYTHONPATH; add its folder with --python-path or PYTHONPATH)") from None
    except SystemExit as e:
        raise LayerError(f"{where}: importing module '{module}' called {exit_call(e)}") from None
    except Exception as e:
        raise LayerError(f"{where}: importing module '{module}' raised {e!r}\n{traceback.format_exc()}") from e
    finally:
        for d in added:
            sys.path.remove(d)
    file, folder = _module_folder(sys.modules.get(top))
    if trust and folder in model_dirs and not _on_chosen_path(folder):
        _FROM_MODEL_DIRS[top] = file
    if not hasattr(mod, name):
        raise LayerError(f"{where}: module '{module}' ({getattr(mod, '__file__', '?')}) has no class '{name}'")
    return getattr(mod, name)


def exit_call(e: SystemExit) -> str:
    """How the user's code ended the interpreter: `sys.exit(3)`, `sys.exit('bye')` or `sys.exit()`."""
    return "sys.exit()" if e.code is None else f"sys.exit({e.code!r})"


def _host(t: torch.Tensor) -> np.ndarray:
    """A float32 host copy the user may modify freely."""
    return t.detach().to("cpu", torch.float32).numpy().copy()


class _PythonFunction(torch.autograd.Function):
    """Runs the user's forward and backward; the layer's parameters ride along as inputs only so that autograd
    calls backward when they need gradients (the user writes their diffs directly, as in Caffe)."""

    @staticmethod
    def forward(ctx, layer, n_bottoms, *inputs):
        bottoms = inputs[:n_bottoms]
        ctx.layer = layer
        ctx.bottom_data = [_host(b) for b in bottoms]
        tops = layer.run_user_forward(ctx.bottom_data)
        ctx.top_data = tops
        ctx.devices = [(b.device, b.dtype) for b in bottoms]
        device, dtype = (bottoms[0].device, bottoms[0].dtype) if bottoms else (layer.device, torch.float32)
        ctx.n_bottoms = n_bottoms
        # (np.ascontiguousarray would turn a 0-d top into shape (1,))
        return tuple(torch.from_numpy(t if t.flags.c_contiguous else t.copy()).to(device=device, dtype=dtype)
                     for t in tops)

    @staticmethod
    def backward(ctx, *top_grads):
        layer = ctx.layer
        top_diffs = [np.zeros_like(d) if g is None else _host(g).reshape(d.shape)
                     for d, g in zip(ctx.top_data, top_grads)]
        propagate = [bool(x) for x in ctx.needs_input_grad[2:2 + ctx.n_bottoms]]
        diffs = layer.run_user_backward(ctx.top_data, top_diffs, propagate, ctx.bottom_data)
        out = [None, None]
        for i, (d, (device, dtype)) in enumerate(zip(diffs, ctx.devices)):
            out.append(torch.from_numpy(d).to(device=device, dtype=dtype) if propagate[i] else None)
        out.extend([None] * (len(ctx.needs_input_grad) - len(out)))
        return tuple(out)


@register("Python")
class PythonLayer(Layer):
    """A Python layer (python_param: module, layer, param_str; share_in_parallel is ignored).  Any number of
    bottoms and tops; loss weights must be given explicitly, as in Caffe."""

    def __init__(self, param, phase):
        super().__init__(param, phase)
        p = param.python_param
        where = f'Python layer "{param.name}"'
        if not p.module or not p.layer:
            self.fail("python_param needs both module and layer")
        cls = import_layer_class(p.module, p.layer, where)
        if not callable(getattr(cls, "forward", None)):
            self.fail(f"class {p.module}.{p.layer} has no forward method; a Python layer needs setup, reshape, "
                      "forward and backward (subclass caffe.Layer)")
        self.where = f"{where} ({p.module}.{p.layer})"
        self.torch_native = isinstance(cls, type) and issubclass(cls, TorchLayer)
        self.runs_eagerly = not self.torch_native  # numpy in, numpy out: nothing torch.compile could trace
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        try:
            user = cls() if self.torch_native else cls(param)
        except SystemExit as e:
            self._user_exit("constructing the layer", e)
        except Exception as e:
            self._user_error("constructing the layer", e)
        user.param_str = p.param_str
        user.phase = phase
        if self.torch_native:
            self.user = user
            self.blobs = user.blobs  # one list: the net, the solver and caffemodels see the user's blobs
        else:
            self.__dict__["user"] = user  # a plain object, kept out of the module tree
            user.blobs = BlobVec(self)
        self.in_place = [j < len(param.bottom) and param.bottom[j] == t for j, t in enumerate(param.top)]
        # Caffe's top blobs persist: a shape set in setup (or an earlier reshape) stays until reshaped again, so a
        # data layer may size its tops once in setup and leave reshape empty.
        self.__dict__["top_shapes"] = [() for _ in param.top]

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def _user_error(self, what: str, e: Exception):
        raise LayerError(f"{self.where} raised {type(e).__name__} in {what}: {e}\n"
                         f"{''.join(traceback.format_exception(type(e), e, e.__traceback__))}") from e

    def _user_exit(self, what: str, e: SystemExit):
        """sys.exit in a layer would end the whole run silently with its code; say who called it instead."""
        raise LayerError(f"{self.where} called {exit_call(e)} in {what}") from None

    def new_param_blob(self, shape) -> None:
        """BlobVec.add_blob: a zero-filled learnable blob, visible to the user as a Blob over the parameter."""
        self.blobs.append(nn.Parameter(torch.zeros(shape, device=self.device)))
        self.user.blobs.append(ParamBlob(f"{self.layer_name}[{len(self.blobs) - 1}]", self, len(self.blobs) - 1))

    def _push_params(self) -> None:
        for blob in self.user.blobs:
            blob._push_host()

    # ------------------------------------------------------------------------------------------- Caffe contract
    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except LayerError:
            raise
        except SystemExit as e:
            self._user_exit(what, e)
        except Exception as e:
            self._user_error(what, e)

    def setup(self, bottom_shapes):
        if self.torch_native:
            self._call("setup", self.user.setup, [tuple(s) for s in bottom_shapes])
            return
        bottom = [HostBlob(s) for s in bottom_shapes]
        top = self._tops(bottom)
        self._call("setup", self.user.setup, bottom, top)
        self._keep_top_shapes(top)
        self._push_params()

    def _tops(self, bottom: list[HostBlob]) -> list[HostBlob]:
        """Top blobs with their last shape (an in-place top has its bottom's), as Caffe's persistent tops."""
        return [HostBlob(bottom[j].data.shape if self.in_place[j] else self.top_shapes[j])
                for j in range(len(self.param.top))]

    def _keep_top_shapes(self, top: list[HostBlob]) -> None:
        self.top_shapes[:] = [tuple(t.data.shape) for t in top]

    def infer_top_shapes(self, bottom_shapes):
        if self.torch_native:
            return super().infer_top_shapes(bottom_shapes)
        bottom = [HostBlob(s) for s in bottom_shapes]
        top = self._tops(bottom)
        self._call("reshape", self.user.reshape, bottom, top)
        self._keep_top_shapes(top)
        return [tuple(t.data.shape) for t in top]

    def run_user_forward(self, bottom_data: list[np.ndarray]) -> list[np.ndarray]:
        bottom = [HostBlob(data=d) for d in bottom_data]
        top = self._tops(bottom)
        self._call("reshape", self.user.reshape, bottom, top)
        self._keep_top_shapes(top)
        for j, t in enumerate(top):
            if self.in_place[j]:
                if t.data.shape != bottom[j].data.shape:
                    self.fail(f"in-place top {j} '{self.param.top[j]}' was reshaped to {shape_str(t.data.shape)}"
                              f" but its bottom has shape {shape_str(bottom[j].data.shape)}")
                t.data[...] = bottom[j].data  # in place, Caffe's top IS the bottom
        self._call("forward", self.user.forward, bottom, top)
        self._push_params()
        return [t.data for t in top]

    def run_user_backward(self, top_data, top_diffs, propagate_down, bottom_data) -> list[np.ndarray]:
        top = [HostBlob(data=d, diff=g) for d, g in zip(top_data, top_diffs)]
        bottom = []
        for j, d in enumerate(bottom_data):
            # In place, Caffe's bottom diff IS the top diff: a backward that does nothing passes it through.
            shared = j < len(top) and self.in_place[j]
            bottom.append(HostBlob(data=d, diff=top_diffs[j] if shared else np.zeros_like(d)))
        self._call("backward", self.user.backward, top, list(propagate_down), bottom)
        self._push_params()
        return [b.diff for b in bottom]

    def forward(self, *bottoms):
        if self.torch_native:
            return self._call("forward", self.user.forward, *bottoms)
        if bottoms and bottoms[0].device.type == "meta":
            return tuple(torch.empty(s, device="meta") for s in self.infer_top_shapes([b.shape for b in bottoms]))
        tops = _PythonFunction.apply(self, len(bottoms), *bottoms, *self.blobs)
        return tops[0] if len(tops) == 1 else tops
