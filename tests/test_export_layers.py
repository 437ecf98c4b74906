"""Every Caffe layer type, exported: ONNX (run in onnxruntime), torch.export (.pt2, loaded back) and TorchScript.

* The real-Caffe layer fixtures (tests/fixtures/layers, one small net per type, recorded by BVLC Caffe): all the
  exportable ones merged into one net, exported once per format, and every case's outputs compared with the
  numbers Caffe wrote, at the case's own tolerance.  Loss and metric layers are dropped from that net (the
  blobs before them are compared instead); each case holding a refused type is exported on its own and must
  fail naming the layer.
* tests/export_cases.py: the places Caffe differs from other frameworks (ceil-mode pooling windows and Caffe's
  clip, AVE divisors with padding, LRN, Crop offsets, Slice points, Eltwise coefficients, PReLU shared, Reshape
  0/-1, Flatten axes, Power/Exp/Log bases, ArgMax ties, Reduction, MVN, BatchNorm's folded factor...), merged
  likewise and compared with caffelike within 1e-4 relative, pooling also with a NumPy transcription of Caffe's
  loops, and every top's shape with the one derived by hand from Caffe's rules.
* Data layers become inputs; TorchLayer and TorchModule layers export; numpy Python layers are refused.
* `test_every_type_is_covered` ties these to `caffelike.export.support`, which docs/layers.md's ONNX column is
  generated from.
"""
import sys

import numpy as np
import pytest
import torch
from caffelike.layers import layer_type_list
from caffelike.proto import caffe_pb2
from export_cases import CASES, case_inputs, case_net, prefixed, set_batchnorm_blobs
from google.protobuf import text_format
from helpers import FIXTURES, Case

import caffelike as caffe
from caffelike import export
from caffelike.export.check import compare
from caffelike.export.graph import reference_outputs
from caffelike.format.prototxt import read_net

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

LAYER_CASES = sorted(p.name for p in (FIXTURES / "layers").iterdir() if (p / "case.json").exists())
DATA_ONLY = [n for n in LAYER_CASES if set(Case.load("layers", n).meta["layer_types"]) <= export.DATA_TYPES]
REFUSED_CASES = [n for n in LAYER_CASES if n not in DATA_ONLY and
                 set(Case.load("layers", n).meta["layer_types"]) & set(export.REFUSED)]
EXPORTED_CASES = [n for n in LAYER_CASES if n not in DATA_ONLY]


def _run_onnx(path, feeds: dict) -> dict:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})))


def _run_torch(path, fmt: str, feeds: dict) -> dict:
    from caffelike.export.writers import read_meta

    meta = read_meta(str(path), fmt)
    run = meta["program"].module() if fmt == "torch-export" else meta["program"]
    with torch.no_grad():
        outs = run(*(torch.from_numpy(feeds[n]) for n in meta["inputs"]))
    return {n: t.detach().numpy() for n, t in zip(meta["outputs"], outs)}


def _run_opencv(path, feeds: dict) -> dict:
    import cv2

    net = cv2.dnn.readNetFromONNX(str(path))
    for name, value in feeds.items():
        net.setInput(value, name)
    names = list(net.getUnconnectedOutLayersNames())
    return dict(zip(names, net.forward(names)))


def _opencv5() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return int(cv2.__version__.split(".")[0]) >= 5


FORMATS = ["onnx", "torch-export", "torchscript",
           pytest.param("opencv", marks=pytest.mark.skipif(not _opencv5(), reason="needs opencv-python-headless 5"))]


def _export_all(net, folder, feeds) -> dict:
    """{format: {output: array}} for the three formats, and "opencv": the ONNX file in OpenCV 5's dnn."""
    results = {}
    for fmt, suffix in (("onnx", ".onnx"), ("torch-export", ".pt2"), ("torchscript", ".pt")):
        path = folder / f"net{suffix}"
        export.export(net, path, format=fmt)
        results[fmt] = _run_onnx(path, feeds) if fmt == "onnx" else _run_torch(path, fmt, feeds)
    if _opencv5():
        results["opencv"] = _run_opencv(folder / "net.onnx", feeds)
    return results


# ------------------------------------------------------------------------------------------ real-Caffe fixtures
def _fixture_net():
    """The exportable fixture cases in one net (refused layers dropped), with Caffe's weights, and the inputs."""
    merged = caffe_pb2.NetParameter(name="fixtures")
    weights, feeds = {}, {}
    for name in EXPORTED_CASES:
        case = Case.load("layers", name)
        assert not case.meta["legacy"]
        param = read_net(str(case.path / "net.prototxt"))
        kept = [lp for lp in param.layer if lp.type not in export.REFUSED]
        del param.layer[:]
        param.layer.extend(kept)
        phase = caffe.TRAIN if case.meta["phase"] == "TRAIN" else None
        merged.layer.extend(prefixed(param, name, phase))
        for layer, blobs in case.stored_weights().items():
            weights[f"{name}/{layer}"] = blobs
        feeds.update({f"{name}/{b}": case.data(b) for b in case.meta["inputs"]})
    net = caffe.Net(merged, caffe.TEST)
    for layer, blobs in weights.items():
        if layer in net.params:
            for blob, value in zip(net.params[layer], blobs):
                blob.data[...] = value
    return net, feeds


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory):
    net, feeds = _fixture_net()
    graph = export.ExportGraph(net)
    feeds = {n: feeds[n] for n in graph.inputs}
    return graph, _export_all(net, tmp_path_factory.mktemp("fixtures"), feeds)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", [n for n in EXPORTED_CASES if Case.load("layers", n).meta["outputs"] and
                                  (n not in REFUSED_CASES or n in ("embed", "batchreindex", "filter"))])
def test_fixture_case_reproduces_caffe(fixture_results, name, fmt):
    graph, results = fixture_results
    case = Case.load("layers", name)
    outputs = [o for o in graph.outputs if o.startswith(f"{name}/")]
    assert outputs, f"{name}: nothing of the case is exported"
    tol = case.tolerance
    for out in outputs:
        blob = out[len(name) + 1:]
        np.testing.assert_allclose(results[fmt][out], case.data(blob), rtol=max(tol["rtol"], 1e-5),
                                   atol=max(tol["atol"], 1e-6), err_msg=f"{fmt}: {out} differs from Caffe's")


@pytest.mark.parametrize("name", REFUSED_CASES)
def test_fixture_case_with_a_refused_layer_names_it(name, tmp_path, monkeypatch):
    case = Case.load("layers", name)
    if case.meta.get("cwd"):
        monkeypatch.chdir(case.path)
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST)
    refused = [t for t in case.meta["layer_types"] if t in export.REFUSED]
    layer = next(layer for layer in net.layer_list if layer.type == refused[0])
    with pytest.raises(export.ExportError) as e:
        export.to_onnx(net, tmp_path / "x.onnx")
    assert f'{layer.type} layer "{layer.layer_name}" cannot be exported: {export.REFUSED[layer.type]}' in str(e.value)


# ------------------------------------------------------------------------------------------ Caffe's corner cases
def caffe_pool(x: np.ndarray, pp) -> np.ndarray:
    """Caffe's PoolingLayer::Forward_cpu (MAX and AVE), transcribed loop for loop."""
    n, c, height, width = x.shape
    kh, kw = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size,) * 2
    sh, sw = (pp.stride_h, pp.stride_w) if pp.HasField("stride_h") else (pp.stride,) * 2
    ph, pw = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad,) * 2
    rnd = np.ceil if pp.round_mode == caffe_pb2.PoolingParameter.CEIL else np.floor
    oh = int(rnd((height + 2 * ph - kh) / sh)) + 1
    ow = int(rnd((width + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        oh -= (oh - 1) * sh >= height + ph
        ow -= (ow - 1) * sw >= width + pw
    y = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, height + ph), min(ws + kw, width + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, height), min(we, width)
            window = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            if pp.pool == caffe_pb2.PoolingParameter.MAX:
                y[:, :, i, j] = np.maximum(window.max(-1), -np.finfo(np.float32).max)
            else:
                y[:, :, i, j] = window.sum(-1) / size
    return y


@pytest.fixture(scope="module")
def corner_results(tmp_path_factory):
    torch.manual_seed(0)
    net = caffe.Net(case_net(), caffe.TEST)
    set_batchnorm_blobs(net, "batchnorm_factor/bn")
    feeds = {}
    for name in CASES:
        feeds.update(case_inputs(name))
    graph = export.ExportGraph(net)
    feeds = {n: feeds[n] for n in graph.inputs}
    want = reference_outputs(net, {n: torch.from_numpy(a) for n, a in feeds.items()})
    return net, feeds, want, _export_all(net, tmp_path_factory.mktemp("corners"), feeds)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CASES))
def test_corner_case_matches_caffelike(corner_results, name, fmt):
    _net, _feeds, want, results = corner_results
    _, _, shapes = CASES[name]
    outputs = [o for o in results[fmt] if o.startswith(f"{name}/")]
    assert outputs
    for out in outputs:
        got, expected = results[fmt][out], want[out].numpy()
        blob = out[len(name) + 1:]
        if blob in shapes:
            assert got.shape == shapes[blob], f"{out}: shape {got.shape}, Caffe's rules give {shapes[blob]}"
        row = compare(out, got, expected, 1e-4)
        assert row.ok, f"{fmt}: {row.line()}"


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("pool_") and "global" not in n
                                  and "stochastic" not in n])
def test_pooling_windows_are_caffes(corner_results, name):
    """The exported pooling against Caffe's own loops, not only against caffelike."""
    net, feeds, _, results = corner_results
    pp = net.layer_list[net.layer_index(f"{name}/pool")].param.pooling_param
    expected = caffe_pool(feeds[f"{name}/x"].astype(np.float64), pp)
    np.testing.assert_allclose(results["onnx"][f"{name}/y"], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- inputs, Python, TorchModule
def test_data_layers_become_inputs_of_their_shapes(tmp_path, monkeypatch):
    """Every data layer's tops are inputs of the shapes the layer declares (fixtures read with their own cwd)."""
    from PIL import Image

    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "img.png")
    window = tmp_path / "windows.txt"
    window.write_text(f"# 0\n{tmp_path / 'img.png'}\n3 12 16\n2\n1 0.9 0 0 7 7\n0 0.1 1 1 5 5\n")
    seen = set()
    for name in DATA_ONLY:
        case = Case.load("layers", name)
        param = read_net(str(case.path / "net.prototxt"))
        monkeypatch.chdir(case.path)
        for top in case.meta["outputs"]:
            param.layer.add(name=f"double_{top}", type="Power", bottom=[top], top=[f"{top}_x2"]).power_param.scale = 2
        net = caffe.Net(param, caffe.TEST)
        graph = export.ExportGraph(net)
        assert graph.inputs == case.meta["outputs"]
        # The shapes the layer declares at setup (Caffe's MemoryData/HDF5Data reshape labels to (N, 1, 1, 1) only
        # as they run): the data tops have them anyway.
        assert graph.input_shapes() == {t: tuple(net.blobs[t].data.shape) for t in graph.inputs}
        assert graph.input_shapes()[graph.inputs[0]] == tuple(case.meta["blob_shapes"][graph.inputs[0]])
        seen |= {layer.type for layer in net.layer_list}
    text = (f'layer {{ name: "win" type: "WindowData" top: "data" top: "label" transform_param {{ crop_size: 8 }} '
            f'window_data_param {{ source: "{window}" batch_size: 2 }} }} '
            'layer { name: "p" type: "Power" bottom: "data" top: "y" }')
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    graph = export.to_onnx(net, tmp_path / "w.onnx")
    assert graph.inputs == ["data"] and graph.input_shapes() == {"data": (2, 3, 8, 8)}
    assert export.check_onnx(net, tmp_path / "w.onnx").ok
    seen.add("WindowData")
    assert seen >= export.DATA_TYPES - {"Input"}


TORCH_LAYER = '''
import torch
import caffe


class Gate(caffe.TorchLayer):
    """y = x * sigmoid(w) + b, torch code the tracers follow."""

    def setup(self, bottom_shapes):
        self.add_blob((bottom_shapes[0][1],), 0.5)

    def forward(self, x):
        return x * torch.sigmoid(self.blobs[0]).reshape(1, -1, 1, 1) + x.mean(dim=(2, 3), keepdim=True)


class Numpy(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * 2

    def backward(self, top, propagate_down, bottom):
        pass
'''


def _python_net(tmp_path, layer: str):
    (tmp_path / "export_py_layers.py").write_text(TORCH_LAYER)
    from caffelike.layers.python import add_python_path

    add_python_path(str(tmp_path))
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } } '
            f'layer {{ name: "py" type: "Python" bottom: "x" top: "y" python_param {{ module: "export_py_layers" '
            f'layer: "{layer}" }} }}')
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)


def test_torch_layer_exports(tmp_path):
    net = _python_net(tmp_path, "Gate")
    export.to_onnx(net, tmp_path / "gate.onnx")
    assert export.check_onnx(net, tmp_path / "gate.onnx").ok
    export.to_torch_export(net, tmp_path / "gate.pt2")
    assert export.check_file(net, str(tmp_path / "gate.pt2"), "torch-export").ok


def test_numpy_python_layer_is_refused_by_name(tmp_path):
    net = _python_net(tmp_path, "Numpy")
    with pytest.raises(export.ExportError, match=r'Python layer "py" cannot be exported: a numpy Python layer .*'
                                                 r'caffelike.TorchLayer'):
        export.to_onnx(net, tmp_path / "numpy.onnx")
    sys.modules.pop("export_py_layers", None)


def test_torch_module_layer_exports(tmp_path):
    from caffelike.layers.torch_module import bind

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    module[1].running_mean.normal_()
    key = bind(module)
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } } '
            f'layer {{ name: "m" type: "TorchModule" bottom: "x" top: "y" python_param {{ param_str: "{key}" }} }}')
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    export.to_onnx(net, tmp_path / "m.onnx", dynamic_batch=True)
    assert export.check_onnx(net, tmp_path / "m.onnx", batch=3).ok


def test_hdf5_output_and_torch_loss_are_refused_by_name(tmp_path):
    pytest.importorskip("h5py")
    from caffelike.layers.torch_module import LossSpec, bind

    spec = LossSpec(torch.nn.CrossEntropyLoss())
    key = bind(spec)
    inputs = ('layer { name: "x" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 3 } '
              'shape { dim: 2 } } } ')
    for layer, message in (
            ((f'layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "label" hdf5_output_param {{ '
             f'file_name: "{tmp_path / "o.h5"}" }} }}'), 'HDF5Output layer "out" cannot be exported: it writes'),
            ((f'layer {{ name: "loss" type: "TorchLoss" bottom: "x" bottom: "label" top: "l" python_param {{ '
             f'param_str: "{key}" }} }}'), 'TorchLoss layer "loss" cannot be exported: a training-time loss')):
        net = caffe.Net(text_format.Parse(inputs + layer, caffe_pb2.NetParameter()), caffe.TEST)
        with pytest.raises(export.ExportError, match=message):
            export.ExportGraph(net)


@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_recurrent_graphs_start_from_zero_state_and_leave_the_nets_alone(kind, tmp_path):
    """Caffe carries h (and c) between forward calls; the exported graph is stateless and starts from zero, and
    exporting neither reads nor changes the state the net carries."""
    text = ('layer { name: "x" type: "Input" top: "x" top: "cont" input_param { shape { dim: 3 dim: 2 dim: 4 } '
            'shape { dim: 3 dim: 2 } } } '
            f'layer {{ name: "r" type: "{kind}" bottom: "x" bottom: "cont" top: "y" recurrent_param {{ '
            'num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }')
    torch.manual_seed(0)
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    x, cont = torch.randn(3, 2, 4), torch.ones(3, 2)  # cont 1 at t = 0: the carried state matters
    layer = net.layer_list[net.layer_index("r")]
    with torch.no_grad():
        net.run(x=x, cont=cont)
        second = net.run(x=x, cont=cont)["y"]
    state = [b.clone() for b in layer._carried]
    export.to_onnx(net, tmp_path / "r.onnx")
    assert all(type(a) is type(b) and torch.equal(a, b) for a, b in zip(state, layer._carried))
    (got,) = ort.InferenceSession(str(tmp_path / "r.onnx")).run(["y"], {"x": x.numpy(), "cont": cont.numpy()})
    layer.reset_state()
    with torch.no_grad():
        first = net.run(x=x, cont=cont)["y"]
    np.testing.assert_allclose(got, first.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, second.numpy(), atol=1e-3)  # (the state did matter)


# ------------------------------------------------------------------------------------------------------ coverage
def test_every_type_is_covered(fixture_results, corner_results):
    """What docs/layers.md says of each type is what these tests show: every type `support` calls exportable is in
    an exported net above, every refused one is refused by a test, every data type becomes an input."""
    exported = {layer.type for _, layer, *_ in fixture_results[0].steps}
    exported |= {layer.type for layer in corner_results[0].layer_list if layer.type != "Input"}
    exported |= {"TorchModule", "Python"}  # test_torch_module_layer_exports, test_torch_layer_exports
    refused = {t for n in REFUSED_CASES for t in Case.load("layers", n).meta["layer_types"]} & set(export.REFUSED)
    refused |= {"Python", "HDF5Output", "TorchLoss"}  # test_numpy_python_layer..., test_hdf5_output_and_torch_loss...
    for name in layer_type_list():
        status = export.support(name)
        if name in export.DATA_TYPES:
            assert status == "input", name
        elif name == "Python":
            assert status.startswith("TorchLayer"), status
        elif name in export.REFUSED:
            assert status.startswith("no"), (name, status)
            assert name in refused, f"{name}: no test shows the refusal"
        else:
            assert status.startswith("yes"), (name, status)
            assert name in exported, f"{name} is said to export, but no test exports it"
