"""`type: "Python"` layers: the behaviours BVLC pycaffe's own python-layer tests check (x10 chain, reshape,
exception in setup, parameter blobs through save / copy_from / share_with and the solver, phase, param_str), plus
caffelike's errors, module search, consent for modules from the model's folder, and the torch-native TorchLayer.

The fixtures write their modules beside the prototxt (and in the working directory), so the nets are built with
`trust_python=True`, the consent caffelike asks for before it runs a model's own code."""
import re
import textwrap

import numpy as np
import pytest
import torch
from caffelike.layers.python import EXTRA_PATHS, add_python_path
from helpers import MARKED_MODULE

import caffelike as caffe
from caffelike.format.prototxt import parse_net

MODULE = '''
import caffe


class TimesTen(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class Raises(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("This should be raised, with the layer named")


class Params(caffe.Layer):
    """top = bottom + blobs[0]; the blob is learnable."""
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data + self.blobs[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += top[0].diff.sum()
        bottom[0].diff[...] = top[0].diff


class Phase(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class ParamStr(caffe.Layer):
    def setup(self, bottom, top):
        self.value = eval(self.param_str)["value"]

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data


class WrongShape(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(2, 2)

    def forward(self, bottom, top):
        top[0].data[...] = np.zeros((3, 3))


class NoForward:
    def __init__(self, param):
        pass


class Source(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(2, 3)

    def forward(self, bottom, top):
        top[0].data[...] = 7


class ScalarLoss(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = (bottom[0].data ** 2).sum() / 2

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff * bottom[0].data


class Doubler(caffe.TorchLayer):
    def setup(self, bottom_shapes):
        self.add_blob((1,), 2.0)

    def forward(self, x):
        return x * self.blobs[0]
'''.replace("import caffe\n", "import numpy as np\nimport caffe\n", 1)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    (tmp_path / "pylayers.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def net_text(*layers, inputs="dim: 10 dim: 9 dim: 8", force_backward=True):
    body = "\n".join(layers)
    return textwrap.dedent(f"""
        name: "pynet"
        force_backward: {str(force_backward).lower()}
        layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ {inputs} }} }} }}
        {body}
    """)


def py(name, cls, bottom, top, extra=""):
    return (f'layer {{ name: "{name}" type: "Python" bottom: "{bottom}" top: "{top}" {extra} '
            f'python_param {{ module: "pylayers" layer: "{cls}" }} }}')


def build(folder, text, phase=caffe.TEST, name="net.prototxt"):
    path = folder / name
    path.write_text(text)
    return caffe.Net(str(path), phase, trust_python=True)


def chain(folder):
    return build(folder, net_text(py("one", "TimesTen", "data", "one"), py("two", "TimesTen", "one", "two"),
                                  py("three", "TimesTen", "two", "three")))


def test_python_is_a_registered_type():
    assert "Python" in caffe.layer_type_list()


def test_chain_of_three_times_ten_forward(folder):
    net = chain(folder)
    x = np.random.default_rng(0).normal(size=(10, 9, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    np.testing.assert_allclose(net.blobs["three"].data, 1000 * x, rtol=1e-6)


def test_chain_of_three_times_ten_backward(folder):
    net = chain(folder)
    net.forward()
    net.blobs["three"].diff[...] = 1
    net.backward()
    assert (net.blobs["data"].diff == 1000).all()


def test_reshape_propagates(folder):
    net = chain(folder)
    net.blobs["data"].reshape(2, 3, 4)
    net.reshape()
    assert all(net.blobs[b].shape == [2, 3, 4] for b in ("one", "two", "three"))
    net.blobs["data"].reshape(5, 1)
    net.forward()
    assert net.blobs["three"].shape == [5, 1]


def test_exception_in_setup_is_a_runtime_error_naming_the_layer(folder):
    with pytest.raises(RuntimeError, match=r'Python layer "bad" \(pylayers.Raises\) raised RuntimeError in setup: '
                                           r'This should be raised') as err:
        build(folder, net_text(py("bad", "Raises", "data", "out")))
    assert "Traceback" in str(err.value) and "pylayers.py" in str(err.value)


def test_parameter_blobs_are_saved_loaded_and_shared(folder, tmp_path):
    text = net_text(py("layer", "Params", "data", "out"))
    net = build(folder, text)
    assert [b.shape for b in net.params["layer"]] == [[1]]
    net.params["layer"][0].data[...] = 5
    net.forward()
    assert np.allclose(net.blobs["out"].data, 5)
    net.save(str(tmp_path / "p.caffemodel"))
    other = build(folder, text, name="other.prototxt")
    other.copy_from(str(tmp_path / "p.caffemodel"))
    assert other.params["layer"][0].data[0] == 5
    third = build(folder, text, name="third.prototxt")
    third.share_with(net)
    net.params["layer"][0].data[...] = 9
    third.forward()
    assert np.allclose(third.blobs["out"].data, 9)


def test_parameter_blobs_are_trained_by_the_solver(folder):
    net_file = folder / "train.prototxt"
    net_file.write_text(net_text(py("layer", "Params", "data", "out"),
                                 'layer { name: "loss" type: "Python" bottom: "out" top: "loss" loss_weight: 1 '
                                 'python_param { module: "pylayers" layer: "ScalarLoss" } }',
                                 inputs="dim: 2 dim: 3", force_backward=False))
    solver_file = folder / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 display: 0 '
                           'snapshot_after_train: false')
    solver = caffe.SGDSolver(str(solver_file), trust_python=True)
    solver.net.blobs["data"].data[...] = 1
    solver.step(1)
    # loss = sum((x + b)^2)/2 over 6 values, x = 1, b = 0: db = 6, so b = -0.6 after one SGD step.
    assert solver.net.params["layer"][0].data[0] == pytest.approx(-0.6)


@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST], ids=["train", "test"])
def test_phase(folder, phase):
    net = build(folder, net_text(py("phase", "Phase", "data", "phase")), phase)
    net.forward()
    assert net.blobs["phase"].data == phase and net.blobs["phase"].shape == []


def test_param_str(folder):
    net = build(folder, net_text(py("mul", "ParamStr", "data", "out").replace(
        'layer: "ParamStr"', 'layer: "ParamStr" param_str: "{\'value\': 11}"')))
    net.blobs["data"].data[...] = 1
    net.forward()
    assert (net.blobs["out"].data == 11).all()


def test_source_layer_without_bottoms(folder):
    text = ('name: "src" layer { name: "src" type: "Python" top: "out" '
            'python_param { module: "pylayers" layer: "Source" } }')
    net = build(folder, text)
    assert net.forward()["out"].tolist() == [[7, 7, 7]] * 2


def test_python_loss_layer_seeds_backward_with_its_loss_weight(folder):
    text = net_text('layer { name: "loss" type: "Python" bottom: "data" top: "loss" loss_weight: 3 '
                    'python_param { module: "pylayers" layer: "ScalarLoss" } }', inputs="dim: 2 dim: 2")
    net = build(folder, text)
    net.blobs["data"].data[...] = [[1, 2], [3, 4]]
    assert net.forward()["loss"] == pytest.approx(15)
    net.backward()
    np.testing.assert_allclose(net.blobs["data"].diff, 3 * np.array([[1, 2], [3, 4]]))


def test_missing_module_names_what_was_searched(folder):
    text = net_text(py("x", "TimesTen", "data", "out").replace("pylayers", "no_such_module"))
    with pytest.raises(caffe.LayerError, match=r"cannot find Python module 'no_such_module' \(searched .*"
                                               + str(folder)):
        build(folder, text)


def test_missing_class_and_class_without_forward(folder):
    with pytest.raises(caffe.LayerError, match="module 'pylayers' .* has no class 'Nope'"):
        build(folder, net_text(py("x", "Nope", "data", "out")))
    with pytest.raises(caffe.LayerError, match="pylayers.NoForward has no forward method"):
        build(folder, net_text(py("x", "NoForward", "data", "out")))


def test_top_of_the_wrong_shape_is_reported(folder):
    net = build(folder, net_text(py("w", "WrongShape", "data", "out")))
    with pytest.raises(caffe.LayerError, match=r'Python layer "w" \(pylayers.WrongShape\) raised ValueError in '
                                               r'forward'):
        net.forward()


def test_modules_are_found_beside_the_prototxt_and_on_added_paths(tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    (models / "pylayers_beside.py").write_text(MODULE)
    (models / "net.prototxt").write_text(net_text(py("a", "TimesTen", "data", "out").replace(
        "pylayers", "pylayers_beside")))
    monkeypatch.chdir(tmp_path)
    caffe.Net(str(models / "net.prototxt"), caffe.TEST, trust_python=True)  # found beside the prototxt
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "pylayers_added.py").write_text(MODULE)
    add_python_path(str(other))
    try:  # a folder the user names is searched without consent, as PYTHONPATH is
        caffe.Net(parse_net(net_text(py("a", "TimesTen", "data", "out").replace(
            "pylayers", "pylayers_added"))), caffe.TEST)
    finally:
        EXTRA_PATHS.remove(str(other))


def test_torch_layer_runs_on_tensors_with_autograd(folder):
    net = build(folder, net_text(py("d", "Doubler", "data", "out"), inputs="dim: 2 dim: 2"))
    assert [b.shape for b in net.params["d"]] == [[1]]
    net.blobs["data"].data[...] = [[1, 2], [3, 4]]
    net.forward()
    assert net.blobs["out"].data.tolist() == [[2, 4], [6, 8]]
    net.blobs["out"].diff[...] = 1
    net.backward()
    assert (net.blobs["data"].diff == 2).all() and net.params["d"][0].diff[0] == 10


@pytest.mark.gpu
def test_python_layer_on_gpu(folder):
    caffe.set_mode_gpu()
    try:
        net = chain(folder)
        x = np.ones((10, 9, 8), np.float32)
        net.blobs["data"].data[...] = x
        net.forward()
        assert net.device.type == "cuda" and np.allclose(net.blobs["three"].data, 1000)
        net.blobs["three"].diff[...] = 1
        net.backward()
        assert (net.blobs["data"].diff == 1000).all()
    finally:
        caffe.set_mode_cpu()
    assert torch.cuda.is_available()


# ------------------------------------------------------------------------- consent for the model folder's code


def model_folder(tmp_path, module):
    """A downloaded model: net.prototxt and the module its Python layer names, which leaves `<module>.imported`
    beside itself when it is imported."""
    models = tmp_path / "model"
    models.mkdir()
    (models / f"{module}.py").write_text(MARKED_MODULE)
    (models / "net.prototxt").write_text(net_text(py("occlude", "Ten", "data", "out").replace(
        "pylayers", module)))
    return models


def check_refusal(err, module_file, place="the model's folder"):
    message = str(err.value)
    assert message.startswith(f'Python layer "occlude" ({module_file.stem}.Ten) would import {module_file} '
                              f"from {place}"), message
    for way in ("--trust-model-dir", "trust_python=True", "CAFFELIKE_TRUST_MODEL_DIR=1"):
        assert way in message
    assert not module_file.with_suffix(".imported").exists(), "the module ran without consent"


def test_module_beside_the_prototxt_needs_consent(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    models = model_folder(tmp_path, "consent_beside")
    with pytest.raises(caffe.LayerError) as err:
        caffe.Net(str(models / "net.prototxt"), caffe.TEST)
    check_refusal(err, models / "consent_beside.py")


def test_module_in_the_working_directory_needs_consent(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    models = model_folder(tmp_path, "consent_cwd")
    monkeypatch.chdir(models)
    text = (models / "net.prototxt").read_text()
    with pytest.raises(caffe.LayerError) as err:
        caffe.Net(parse_net(text), caffe.TEST)
    check_refusal(err, models / "consent_cwd.py", "the working directory")
    with pytest.raises(caffe.LayerError) as err:  # a relative path in the model's folder
        caffe.Net("net.prototxt", caffe.TEST)
    check_refusal(err, models / "consent_cwd.py")


def test_solver_needs_consent_for_its_nets(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    models = model_folder(tmp_path, "consent_solver")
    (models / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
                                            'display: 0 snapshot_after_train: false')
    monkeypatch.chdir(models)  # the solver's nets search the working directory, as `caffe train` run there
    with pytest.raises(caffe.LayerError) as err:
        caffe.SGDSolver("solver.prototxt")
    check_refusal(err, models / "consent_solver.py", "the working directory")
    solver = caffe.SGDSolver("solver.prototxt", trust_python=True)
    assert solver.net.layers[1].type == "Python"
    assert (models / "consent_solver.imported").exists()


@pytest.mark.parametrize("how", ["trust_python", "environment"])
def test_consent_lets_the_module_beside_the_prototxt_run(tmp_path, monkeypatch, how):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    module = f"consent_given_{how}"
    models = model_folder(tmp_path, module)
    if how == "environment":
        monkeypatch.setenv("CAFFELIKE_TRUST_MODEL_DIR", "1")
    net = caffe.Net(str(models / "net.prototxt"), caffe.TEST, trust_python=how == "trust_python")
    net.blobs["data"].data[...] = 1
    assert (net.forward()["out"] == 10).all()
    assert (models / f"{module}.imported").exists()


def test_consent_given_once_is_not_consent_for_the_next_net(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    models = model_folder(tmp_path, "consent_once")
    caffe.Net(str(models / "net.prototxt"), caffe.TEST, trust_python=True)
    with pytest.raises(caffe.LayerError) as err:  # the module is loaded already, but this net was not trusted
        caffe.Net(str(models / "net.prototxt"), caffe.TEST)
    assert f"would import {models / 'consent_once.py'} from the model's folder" in str(err.value)


def test_modules_on_sys_path_need_no_consent(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    models = model_folder(tmp_path, "consent_syspath")
    monkeypatch.syspath_prepend(str(models))  # PYTHONPATH, or a script run from that folder
    net = caffe.Net(str(models / "net.prototxt"), caffe.TEST)
    net.blobs["data"].data[...] = 2
    assert (net.forward()["out"] == 20).all()


def test_a_module_on_sys_path_wins_over_the_untrusted_folder(tmp_path, monkeypatch):
    """Without consent the import is BVLC Caffe's: sys.path only, whatever the model's folder holds."""
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    models = model_folder(tmp_path, "consent_shadowed")
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()  # (a module of the same name, on sys.path)
    (elsewhere / "consent_shadowed.py").write_text(MARKED_MODULE)
    monkeypatch.syspath_prepend(str(elsewhere))
    caffe.Net(str(models / "net.prototxt"), caffe.TEST)
    assert not (models / "consent_shadowed.imported").exists()


# ----------------------------------------------------------------------------------- sys.exit in a Python layer
EXITS = '''
import sys

import caffe


class Exits(caffe.Layer):
    def __init__(self, param):
        super().__init__(param)
        if param.python_param.param_str == "constructing the layer":
            sys.exit(3)

    def setup(self, bottom, top):
        self.where = self.param_str
        if self.where == "setup":
            sys.exit(3)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
        if self.where == "reshape":
            raise SystemExit(3)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        if self.where == "forward":
            sys.exit(3)

    def backward(self, top, propagate_down, bottom):
        if self.where == "backward":
            sys.exit(3)
'''


@pytest.mark.parametrize("where", ["constructing the layer", "setup", "reshape", "forward", "backward"])
def test_sys_exit_in_a_python_layer_is_a_layer_error(tmp_path, monkeypatch, where):
    (tmp_path / "exits_layer.py").write_text(EXITS)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = net_text(f'layer {{ name: "occlude" type: "Python" bottom: "data" top: "out" python_param {{ '
                    f'module: "exits_layer" layer: "Exits" param_str: "{where}" }} }}')
    expected = rf'^Python layer "occlude" \(exits_layer.Exits\) called sys.exit\(3\) in {where}$'
    with pytest.raises(caffe.LayerError, match=expected):
        net = caffe.Net(parse_net(text), caffe.TEST)
        net.forward()
        net.backward()


@pytest.mark.parametrize("code,call", [(None, "sys.exit()"), ("'bye'", "sys.exit('bye')")], ids=["none", "text"])
def test_sys_exit_at_import_is_a_layer_error(tmp_path, monkeypatch, code, call):
    module = f"exits_at_import_{'none' if code is None else 'text'}"
    (tmp_path / f"{module}.py").write_text(f"import sys\nsys.exit({code or ''})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = net_text(py("occlude", "Exits", "data", "out").replace("pylayers", module))
    with pytest.raises(caffe.LayerError, match=re.escape(f"importing module '{module}' called {call}")):
        caffe.Net(parse_net(text), caffe.TEST)
