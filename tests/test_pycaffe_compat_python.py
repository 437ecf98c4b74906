"""pycaffe compatibility, continued: what BVLC's test_python_layer, test_python_layer_with_param_str and
test_solver check (the rest is in tests/test_pycaffe_compat.py)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from test_pycaffe_compat import NUM_OUTPUT, simple_net_file, write

import caffelike as caffe

# ============================================================================ test_python_layer (+ param_str)
PYTHON_LAYERS = '''\
import caffe


class SimpleLayer(caffe.Layer):
    """Multiplies by ten."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ExceptionLayer(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError


class ParameterLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class CountingDataLayer(caffe.Layer):
    """A data layer that sizes its top once, in setup, and leaves reshape empty: 0..9, 10..19, ..."""

    def setup(self, bottom, top):
        top[0].reshape(10)
        self.next = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = list(range(self.next, self.next + 10))
        self.next += 10


class InPlaceDoubleLayer(caffe.Layer):
    """Doubles its bottom in place, never reshaping: an in-place top is its bottom, so has its shape."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data


class SimpleParamLayer(caffe.Layer):
    """Multiplies by the number in its param_str."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("Parameter string must be a legible float")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff
'''

MODULE = "pycaffe_compat_layers"


@pytest.fixture
def pyfolder(tmp_path, monkeypatch):
    """A folder on sys.path holding the Python-layer module (and nothing cached under its name)."""
    folder = tmp_path / "pylayers"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(PYTHON_LAYERS)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield tmp_path
    sys.modules.pop(MODULE, None)


def python_net(folder, *layers, inputs=True):
    body = "\n".join(f"layer {{ type: 'Python' name: '{name}' {f'bottom: {bottom!r}' if bottom else ''} "
                     f"top: '{top}' python_param {{ module: '{MODULE}' layer: '{cls}' {extra} }} }}"
                     for name, bottom, top, cls, extra in layers)
    head = "input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n" if inputs else ""
    return write(folder, "python.prototxt", "name: 'pythonnet' force_backward: true\n" + head + body)


def times_ten_chain(folder, phase=caffe.TRAIN):
    return caffe.Net(python_net(folder, ("one", "data", "one", "SimpleLayer", ""),
                                ("two", "one", "two", "SimpleLayer", ""),
                                ("three", "two", "three", "SimpleLayer", "")), phase)


def test_python_layer_forward(pyfolder):
    net = times_ten_chain(pyfolder)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["three"].data == 8000)


def test_python_layer_backward_without_a_forward_first(pyfolder):
    net = times_ten_chain(pyfolder)
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 7000)


def test_python_layer_reshape(pyfolder):
    net = times_ten_chain(pyfolder)
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.forward()
    for blob in net.blobs.values():
        assert blob.data.shape == (4, 4, 4, 4)


def test_python_layer_exception_in_setup_is_a_runtime_error(pyfolder):
    with pytest.raises(RuntimeError):
        caffe.Net(python_net(pyfolder, ("layer", "data", "top", "ExceptionLayer", "")), caffe.TEST)


def test_python_layer_parameter_blobs_save_load_and_share(pyfolder, tmp_path):
    path = python_net(pyfolder, ("layer", "data", "top", "ParameterLayer", ""))
    net = caffe.Net(path, caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1
    weights = str(tmp_path / "python.caffemodel")
    net.save(weights)
    layer.blobs[0].data[0] = -1
    net.copy_from(weights)
    assert layer.blobs[0].data[0] == 1
    net2 = caffe.Net(path, caffe.TRAIN)
    net2.share_with(net)
    assert net2.layers[list(net2._layer_names).index("layer")].blobs[0].data[0] == 1


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST], ids=["TRAIN", "TEST"])
def test_python_layer_phase(pyfolder, phase):
    net = caffe.Net(python_net(pyfolder, ("layer", None, "phase", "PhaseLayer", ""), inputs=False), phase)
    assert net.forward()["phase"] == phase


def test_python_layer_top_keeps_the_shape_setup_gave_it(pyfolder):
    # Caffe's tops persist between calls, so BVLC-era data layers size them in setup only.
    net = caffe.Net(python_net(pyfolder, ("data", None, "data", "CountingDataLayer", ""), inputs=False), caffe.TRAIN)
    assert net.blobs["data"].data.shape == (10,)
    for start in (0, 10, 20):
        net.forward()
        assert net.blobs["data"].data.tolist() == list(range(start, start + 10))


def test_python_layer_in_place_top_without_a_reshape_has_its_bottoms_shape(pyfolder):
    net = caffe.Net(python_net(pyfolder, ("double", "data", "data", "InPlaceDoubleLayer", "")), caffe.TEST)
    net.blobs["data"].data[...] = 3
    net.forward()
    assert net.blobs["data"].data.shape == (10, 9, 8) and np.all(net.blobs["data"].data == 6)


@pytest.fixture
def param_str_net(pyfolder):
    return caffe.Net(python_net(pyfolder, ("mul10", "data", "mul10", "SimpleParamLayer", "param_str: '10'"),
                                ("mul2", "mul10", "mul2", "SimpleParamLayer", "param_str: '2'")), caffe.TRAIN)


def test_python_layer_with_param_str_forward(param_str_net):
    param_str_net.blobs["data"].data[...] = 8
    param_str_net.forward()
    assert np.all(param_str_net.blobs["mul2"].data == 2 * 10 * 8)


def test_python_layer_with_param_str_backward(param_str_net):
    param_str_net.blobs["mul2"].diff[...] = 7
    param_str_net.backward()
    assert np.all(param_str_net.blobs["data"].diff == 2 * 10 * 7)


# ================================================================================================== test_solver
@pytest.fixture
def solver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net_file = simple_net_file(tmp_path, NUM_OUTPUT)
    solver_file = write(tmp_path, "solver.prototxt", f"""\
        net: '{net_file}'
        test_iter: 10 test_interval: 10 base_lr: 0.01 momentum: 0.9
        weight_decay: 0.0005 lr_policy: 'inv' gamma: 0.0001 power: 0.75
        display: 100 max_iter: 100 snapshot_after_train: false
        snapshot_prefix: "model"
        """)
    solver = caffe.SGDSolver(solver_file)
    caffe.get_solver(solver_file)  # also make sure get_solver runs
    assert isinstance(caffe.get_solver_from_file(solver_file), caffe.Solver)  # the OpenCL branch's name
    caffe.set_mode_cpu()
    rng = np.random.default_rng(3)
    for net in [solver.net, solver.test_nets[0]]:
        net.blobs["label"].data[...] = rng.integers(NUM_OUTPUT, size=net.blobs["label"].data.shape)
    return solver


def test_solver_solve_runs_max_iter(solver):
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100


def test_solver_apply_update_uses_the_base_lr(solver):
    net = solver.net
    data = net.layers[1].blobs[0].data[...]
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    assert (data - -0.01 * np.ones(data.shape)).max() < 1e-7


def test_solver_nets_outlive_the_solver(solver):
    nets = [solver.net] + list(solver.test_nets)
    assert len(nets) == 2
    del solver
    total = 0.0
    for net in nets:
        for ps in net.params.values():
            total += sum(float(p.data.sum() + p.diff.sum()) for p in ps)
        total += sum(float(b.data.sum() + b.diff.sum()) for b in net.blobs.values())
    assert np.isfinite(total)


def test_solver_snapshot_writes_model_and_state(solver, tmp_path):
    solver.snapshot()
    assert (tmp_path / "model_iter_0.caffemodel").is_file() and (tmp_path / "model_iter_0.solverstate").is_file()


