"""`caffelike export` and caffelike.export on the zoo's deploy nets: every one exports to ONNX and onnxruntime
reproduces caffelike's outputs (the logits and the probabilities) within 1e-4 relative on seeded weights; dynamic
batches; the torch.export (.pt2) and TorchScript round trips; what is refused and how the command line says so.
OpenCV 5's readNetFromONNX is checked where opencv-python-headless 5 is installed (an optional extra).

Per-layer-type coverage is in tests/test_export_layers.py.  The big nets run at the input size their fully
connected layers fix (one image); on a 2-core CPU the zoo cases take about a minute and a half in all, most of
it in the ONNX exporter itself (GoogLeNet's and ResNet-50's graphs take 10-20 s each).
"""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2

import caffelike as caffe
from caffelike import export, zoo
from caffelike.cli import main
from caffelike.format.prototxt import read_net

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# id -> (zoo path, stages, input shape to set (None: the file's, batch 1), the logits blob)
ZOO = {
    "lenet": (("lenet", "lenet.prototxt"), (), None, "ip2"),
    "cifar10_quick": (("cifar10_quick", "cifar10_quick.prototxt"), (), None, "ip2"),
    "cifar10_full": (("cifar10_full", "cifar10_full.prototxt"), (), None, "ip1"),
    "siamese": (("siamese", "mnist_siamese.prototxt"), (), (2, 1, 28, 28), "ip2"),
    "caffenet": (("caffenet", "deploy.prototxt"), (), None, "fc8"),
    "alexnet": (("alexnet", "deploy.prototxt"), (), None, "fc8"),
    "rcnn_ilsvrc13": (("rcnn_ilsvrc13", "deploy.prototxt"), (), None, "fc-rcnn"),
    "flickr_style": (("flickr_style", "deploy.prototxt"), (), None, "fc8_flickr"),
    "googlenet": (("googlenet", "deploy.prototxt"), (), None, "loss3/classifier"),
    "vgg16": (("vgg16", "deploy.prototxt"), (), None, "fc8"),
    "resnet50": (("resnet50", "deploy.prototxt"), (), None, "fc1000"),
    # global pooling at the end: a smaller image keeps the test quick
    "squeezenet1.1": (("squeezenet1.1", "deploy.prototxt"), (), (1, 3, 96, 96), "conv10"),
    "mobilenet_v1": (("mobilenet_v1", "deploy.prototxt"), (), (1, 3, 64, 64), "fc7"),
    # DIGITS' stage-based files, deploy stage, with the input DIGITS writes (C x crop x crop)
    "digits-lenet": (("digits-lenet", "lenet.prototxt"), ("deploy",), (1, 1, 28, 28), "ip2"),
    "digits-alexnet": (("digits-alexnet", "alexnet.prototxt"), ("deploy",), (1, 3, 227, 227), "fc8"),
    "digits-googlenet": (("digits-googlenet", "googlenet.prototxt"), ("deploy",), (1, 3, 224, 224),
                         "loss3/classifier"),
}
DIGITS_CLASSES = 6


def zoo_param(name: str) -> caffe_pb2.NetParameter:
    """The zoo file made exportable as its users deploy it: batch 1 (or the shape above), DIGITS' deploy input
    and class count filled in as DIGITS writes them."""
    parts, stages, shape, _ = ZOO[name]
    param = read_net(zoo.path(*parts))
    if stages:
        with_input = caffe_pb2.NetParameter(name=param.name)
        with_input.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=list(shape))
        for layer in param.layer:
            if layer.type == "InnerProduct" and not layer.inner_product_param.HasField("num_output"):
                layer.inner_product_param.num_output = DIGITS_CLASSES
        with_input.layer.extend(param.layer)
        return with_input
    for layer in param.layer:
        if layer.type == "Input":
            for s in layer.input_param.shape:
                s.dim[:] = list(shape) if shape else [1, *s.dim[1:]]
    return param


def seed_weights(net, seed: int = 1701) -> None:
    """He-scaled weights (the signal neither dies nor explodes, so the probabilities mean something), biases
    N(0, 0.01), Scale gammas near 1, and BatchNorm statistics stored as Caffe stores them (accumulators times a
    moving-average factor of 999.982, which the export must fold)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layer_list:
            blobs = list(layer.blobs)
            if layer.type == "BatchNorm":
                c, s = blobs[0].numel(), 999.982
                blobs[0].copy_(torch.randn(c, generator=gen) * 0.1 * s)
                blobs[1].copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen) * s)
                blobs[2].fill_(s)
            elif layer.type == "Scale":
                blobs[0].copy_(torch.empty(blobs[0].shape).uniform_(0.5, 1.5, generator=gen))
                for b in blobs[1:]:
                    b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            else:
                for i, p in enumerate(blobs):
                    fan_in = p[0].numel() if i == 0 and p.dim() > 1 else 0
                    std = math.sqrt(2.0 / fan_in) if fan_in else 0.01
                    p.copy_(torch.randn(p.shape, generator=gen) * std)


def zoo_net(name: str, trust: bool = False):
    torch.manual_seed(0)
    net = caffe.Net(zoo_param(name), caffe.TEST, stages=list(ZOO[name][1]), trust_python=trust)
    seed_weights(net)
    return net


# ------------------------------------------------------------------------------------------------- the zoo
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_net_exports_and_onnxruntime_matches(name, tmp_path):
    net = zoo_net(name)
    logits = ZOO[name][3]
    outputs = [logits, *[o for o in net.outputs if o != logits]]
    path = tmp_path / "net.onnx"
    graph = export.to_onnx(net, path, outputs=outputs)
    assert graph.inputs == ["data"]
    report = export.check_onnx(net, path, outputs=outputs)
    assert report.ok, report.text()


def test_outputs_of_a_deploy_net_are_its_unconsumed_blobs(tmp_path):
    net = zoo_net("lenet")
    graph = export.to_onnx(net, tmp_path / "lenet.onnx")
    assert (graph.inputs, graph.outputs) == (["data"], ["prob"])
    session = ort.InferenceSession(str(tmp_path / "lenet.onnx"))
    assert [i.name for i in session.get_inputs()] == ["data"]
    assert [o.name for o in session.get_outputs()] == ["prob"]
    assert session.get_inputs()[0].shape == [1, 1, 28, 28]


@pytest.mark.parametrize("name", ["lenet", "mobilenet_v1"])
def test_dynamic_batch_onnx(name, tmp_path):
    """LeNet, and MobileNet's depthwise convolutions with BatchNorm and Scale."""
    net = zoo_net(name)
    export.to_onnx(net, tmp_path / "net.onnx", dynamic_batch=True)
    session = ort.InferenceSession(str(tmp_path / "net.onnx"))
    assert session.get_inputs()[0].shape[0] == session.get_outputs()[0].shape[0] == "batch"
    for batch in (1, 3):
        report = export.check_onnx(net, tmp_path / "net.onnx", batch=batch, seed=batch)
        assert report.ok and report.outputs[0].shape[0] == batch, report.text()


def test_opset_is_honoured(tmp_path):
    import onnx

    net = zoo_net("lenet")
    export.to_onnx(net, tmp_path / "lenet17.onnx", opset=17)
    model = onnx.load(str(tmp_path / "lenet17.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    assert export.check_onnx(net, tmp_path / "lenet17.onnx").ok


def test_input_shapes_reshape_the_net(tmp_path):
    net = zoo_net("squeezenet1.1")
    graph = export.to_onnx(net, tmp_path / "s.onnx", input_shapes={"data": (2, 3, 64, 80)})
    assert graph.input_shapes() == {"data": (2, 3, 64, 80)}
    assert export.check_onnx(net, tmp_path / "s.onnx").ok
    with pytest.raises(export.ExportError, match=r"--input-shape names 'image', which is not an input of net"):
        export.to_onnx(net, tmp_path / "x.onnx", input_shapes={"image": (1, 3, 64, 64)})


def test_outputs_export_the_part_of_the_net_before_them(tmp_path):
    net = zoo_net("caffenet")
    graph = export.to_onnx(net, tmp_path / "fc7.onnx", outputs=["fc7", "pool5"])
    assert graph.outputs == ["fc7", "pool5"]
    assert {"fc8", "prob"}.isdisjoint(layer.layer_name for _, layer, *_ in graph.steps)
    report = export.check_onnx(net, tmp_path / "fc7.onnx", outputs=["fc7", "pool5"])
    assert report.ok and [o.shape for o in report.outputs] == [(1, 4096), (1, 256, 6, 6)], report.text()
    with pytest.raises(export.ExportError, match="has no blob named 'fc9'"):
        export.ExportGraph(net, outputs=["fc9"])


# ------------------------------------------------------------------------------------- torch.export, TorchScript
def test_torch_export_round_trip_with_dynamic_batch(tmp_path):
    net = zoo_net("squeezenet1.1")
    path = tmp_path / "squeezenet.pt2"
    export.to_torch_export(net, path, dynamic_batch=True)
    program = torch.export.load(str(path))
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        (prob,) = program.module()(x)
        want = net.run(data=x)["prob"]
    assert prob.shape == (3, 1000, 1, 1)
    torch.testing.assert_close(prob, want, rtol=1e-4, atol=1e-6)
    assert export.check_file(net, str(path), "torch-export", batch=2).ok


def test_torchscript_fixed_batch_and_its_dynamic_batch_refusal(tmp_path):
    net = zoo_net("cifar10_quick")
    export.to_torchscript(net, tmp_path / "c.pt", input_shapes={"data": (4, 3, 32, 32)})
    traced = torch.jit.load(str(tmp_path / "c.pt"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x)[0], net.run(data=x)["prob"], rtol=1e-4, atol=1e-6)
    with pytest.raises(export.ExportError, match="TorchScript cannot hold a dynamic batch .* --format torch-export"):
        export.to_torchscript(net, tmp_path / "d.pt", dynamic_batch=True)


# --------------------------------------------------------------------------------------------------- refusals
def test_python_layer_in_a_digits_net_is_refused_by_name(tmp_path, monkeypatch):
    """DIGITS' occlusion tutorial net (deploy stage): its BlankSquare layer is numpy code."""
    monkeypatch.syspath_prepend(zoo.path("digits-occlusion"))
    param = read_net(zoo.path("digits-occlusion", "lenet_blank_square.prototxt"))
    with_input = caffe_pb2.NetParameter(name=param.name)
    with_input.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[1, 1, 28, 28])
    for layer in param.layer:
        if layer.type == "InnerProduct" and not layer.inner_product_param.HasField("num_output"):
            layer.inner_product_param.num_output = DIGITS_CLASSES
    with_input.layer.extend(param.layer)
    net = caffe.Net(with_input, caffe.TEST, stages=["deploy"])
    with pytest.raises(export.ExportError, match=r'Python layer "blank_square" cannot be exported: a numpy Python '
                                                 r"layer runs host code"):
        export.to_onnx(net, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_missing_onnx_packages_are_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(export.ExportError, match=r'onnxscript is missing\): pip install "caffelike\[export\]"'):
        export.to_onnx(zoo_net("lenet"), tmp_path / "x.onnx")


def test_dynamic_batch_refused_where_a_layer_fixes_the_batch(tmp_path):
    from google.protobuf import text_format

    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } } '
            'layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 6 } } }')
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    with pytest.raises(export.ExportError, match="dynamic batch is not possible for this net"):
        export.to_onnx(net, tmp_path / "x.onnx", dynamic_batch=True)
    export.to_onnx(net, tmp_path / "x.onnx")  # a fixed batch is fine


# ---------------------------------------------------------------------------------------------- command line
def cli(*args):
    """The installed command, in a fresh interpreter (once: the entry point and the exit status)."""
    return subprocess.run([sys.executable, "-m", "caffelike", "export", *args], capture_output=True, text=True,
                          check=False)


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lenet")
    net = zoo_net("lenet")
    net.save(str(folder / "w.caffemodel"))
    return zoo.path("lenet", "lenet.prototxt"), str(folder / "w.caffemodel"), folder


def test_cli_exports_and_checks(lenet_files):
    model, weights, folder = lenet_files
    out = folder / "lenet.onnx"
    run = cli("--model", model, "--weights", weights, "--out", str(out), "--check", "--dynamic-batch",
              "--input-shape", "data=1,1,28,28", "--check-batch", "4")
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and "inputs data [N, 1, 28, 28]; outputs prob" in run.stdout
    assert "checked with onnxruntime" in run.stdout and "all outputs match" in run.stdout
    line = next(x for x in run.stdout.splitlines() if x.strip().startswith("prob"))
    assert "[4, 10]" in line and "max abs" in line and "max rel" in line and line.rstrip().endswith("ok")
    # the file holds the trained weights: onnxruntime reproduces the caffemodel's net
    net = caffe.Net(model, caffe.TEST, weights=weights)
    assert export.check_onnx(net, out, batch=2).ok


@pytest.mark.parametrize("suffix,fmt,runtime", [(".pt2", "torch-export", "torch.export.load"),
                                                (".pt", "torchscript", "torch.jit.load")])
def test_cli_torch_formats(lenet_files, suffix, fmt, runtime, capsys):
    model, weights, folder = lenet_files
    assert main(["export", "--model", model, "--weights", weights, "--out", str(folder / f"l{suffix}"),
                 "--check"]) == 0
    out = capsys.readouterr().out
    assert f"({fmt})" in out and f"checked with {runtime}" in out and "all outputs match" in out


def test_cli_check_exits_nonzero_above_tolerance(lenet_files, capsys):
    model, weights, folder = lenet_files
    # onnxruntime's softmax is not bit-identical to torch's: with no tolerance at all, some output differs
    assert main(["export", "--model", model, "--weights", weights, "--out", str(folder / "t.onnx"), "--check",
                 "--tolerance", "0"]) == 3
    out = capsys.readouterr().out
    assert "FAILED" in out and "MISMATCH" in out


@pytest.mark.parametrize("args,message", [
    (["--input-shape", "data=1,a"], "expected NAME=D0,D1,... with dimensions >= 1"),
    (["--input-shape", "image=1,1,28,28"], "--input-shape names 'image', which is not an input"),
    (["--format", "torch-export", "--opset", "17"], "--opset applies to --format onnx only"),
    (["--output", "nothing"], "has no blob named 'nothing'"),
    (["--out", "/nonexistent-folder/x.onnx"], "cannot write /nonexistent-folder/x.onnx: no folder"),
])
def test_cli_errors(lenet_files, args, message, capsys):
    model, _, folder = lenet_files
    try:
        status = main(["export", "--model", model, "--out", str(folder / "e.onnx"), *args])
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    assert status != 0
    assert message in capsys.readouterr().err


def test_cli_names_the_refused_layer(tmp_path, capsys):
    from google.protobuf import text_format

    text = ('layer { name: "x" type: "Input" top: "x" top: "sel" input_param { shape { dim: 4 dim: 3 } '
            'shape { dim: 4 dim: 1 } } } '
            'layer { name: "keep" type: "Filter" bottom: "x" bottom: "sel" top: "y" }')
    (tmp_path / "f.prototxt").write_text(str(text_format.Parse(text, caffe_pb2.NetParameter())))
    assert main(["export", "--model", str(tmp_path / "f.prototxt"), "--out", str(tmp_path / "f.onnx")]) == 1
    assert 'Filter layer "keep" cannot be exported: its tops\' first dimension is the number of non-zero' in \
        capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- OpenCV
@pytest.mark.parametrize("name", ["lenet", "caffenet", "googlenet", "squeezenet1.1"])
def test_opencv_reads_the_onnx_file(name, tmp_path):
    cv2 = pytest.importorskip("cv2")
    if int(cv2.__version__.split(".")[0]) < 5:
        pytest.skip(f"OpenCV {cv2.__version__}: the ONNX check targets OpenCV 5")
    net = zoo_net(name)
    outputs = [ZOO[name][3], *net.outputs]  # the logits too: a saturated softmax alone would prove little
    export.to_onnx(net, tmp_path / "net.onnx", outputs=outputs)
    report = export.check_onnx(net, tmp_path / "net.onnx", runtime="opencv", outputs=outputs)
    assert report.ok, report.text()
    assert np.isfinite(report.outputs[0].max_rel)
