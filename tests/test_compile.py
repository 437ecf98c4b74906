"""`NetGraph.compile()`: the compiled torch path computes what the eager one does, the common nets trace into
one graph, and host-side layers (data, numpy Python layers) stay eager between the compiled pieces.

Most checks use torch.compile's "aot_eager" backend: it traces exactly as the default one (dynamo, then AOT
autograd) but skips C++ code generation, so they stay fast; one test runs the default inductor backend end to
end on LeNet."""
import textwrap

import numpy as np
import pytest
import test_registry
import torch
import torch._dynamo
from helpers import Case, lenet_train_solver, make_layer
from test_python_layer import MODULE as PYTHON_LAYERS

import caffelike as caffe
from caffelike import zoo
from caffelike.format.prototxt import read_net

LENET = zoo.path("lenet", "lenet.prototxt")
WEIGHTS = zoo.path("lenet", "lenet_mnist5k.caffemodel")


def deploy(path: str, batch: int = 2) -> caffe.Net:
    param = read_net(path)
    param.force_backward = True
    for layer in param.layer:
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    caffe.set_random_seed(5)
    net = caffe.Net(param, caffe.TEST)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layer_list:
            for p in layer.blobs:
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


def graph_count(fn, *args) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return explained.graph_count, [b.reason.splitlines()[0] for b in explained.break_reasons]


def test_compiled_lenet_matches_eager_forward_and_backward():
    param = read_net(LENET)
    param.force_backward = True
    net = caffe.Net(param, caffe.TEST)
    net.copy_from(WEIGHTS)
    x = torch.as_tensor(Case.load("nets", "bvlc_lenet").data("data"))
    eager = {n: t.detach().clone() for n, t in net.run(data=x).items()}
    weight = net.layer_list[net.layer_index("conv1")].blobs[0]
    net.run(data=x)["prob"].log().sum().backward()
    eager_grad = weight.grad.clone()
    weight.grad = None

    torch._dynamo.reset()
    net.compile()
    compiled = net.run(data=x)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name].detach(), value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["prob"].data, eager["prob"].numpy(), rtol=1e-5, atol=1e-6)
    compiled["prob"].log().sum().backward()
    torch.testing.assert_close(weight.grad, eager_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key,file", [("lenet", "lenet.prototxt"), ("cifar10_full", "cifar10_full.prototxt"),
                                      ("squeezenet1.1", "deploy.prototxt"), ("mobilenet_v1", "deploy.prototxt")])
def test_deploy_nets_trace_into_one_graph(key, file):
    """No layer of these nets (conv, pooling, LRN, ReLU, concat, BatchNorm, Scale, Softmax, ...) splits the graph:
    forward code reads no protobuf and needs no host sync."""
    net = deploy(zoo.path(key, file), batch=1)
    env = {n: torch.randn(tuple(net.blobs[n].shape)) for n in net.inputs}
    graphs, breaks = graph_count(net._unrolled(), net, env)
    assert (graphs, breaks) == (1, [])


def test_every_traceable_layer_type_compiles_without_a_break():
    """Each registry case, warmed up once eagerly (as a net's shape pass does), traces with no graph break and
    gives its eager tops; the few types that cannot are listed with the reason."""
    needs_a_break = {"Filter": "its top's size depends on the values of its selector bottom"}
    skipped = set(test_registry.TMP_CWD) | set(test_registry.CWD) | {"Input", "MemoryData", "Python"}
    checked = []
    for name, (text, bottoms, _) in sorted(test_registry.CASES.items()):
        if name in skipped:
            continue
        xs = [torch.as_tensor(x, dtype=torch.float32) for x in bottoms()]
        layer = make_layer(text, [x.shape for x in xs], caffe.TRAIN if name == "Dropout" else caffe.TEST)
        if layer.runs_eagerly:
            continue
        caffe.set_random_seed(1)
        with torch.no_grad():
            expected = layer(*xs)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(lambda *a: layer(*a))(*xs)
        breaks = max(explained.graph_break_count, 0)
        assert (breaks > 0) == (name in needs_a_break), (name, [b.reason for b in explained.break_reasons])
        if name in ("Dropout", "DummyData"):  # random tops
            continue
        caffe.set_random_seed(1)
        with torch.no_grad():
            got = torch.compile(lambda *a: layer(*a), backend="aot_eager", dynamic=False)(*xs)
        for a, b in zip(got if isinstance(got, tuple) else (got,),
                        expected if isinstance(expected, tuple) else (expected,)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
        checked.append(name)
    assert len(checked) > 40


def test_compiled_training_steps_match_eager(tmp_path):
    """The Data layer runs eagerly before the compiled rest; three SGD steps give the eager weights."""
    eager, compiled = lenet_train_solver(8), lenet_train_solver(8)
    torch._dynamo.reset()
    compiled.net.compile(backend="aot_eager")
    eager.step(3)
    compiled.step(3)
    for a, b in zip(eager.net.learnable, compiled.net.learnable):
        torch.testing.assert_close(b.param.detach(), a.param.detach(), rtol=1e-5, atol=1e-6)
    graphs, _ = graph_count(compiled.net._unrolled(), compiled.net, {})
    assert graphs == 1  # everything after the eager Data layer





@pytest.mark.parametrize("cls,graphs", [("TimesTen", 2), ("Doubler", 1)])
def test_python_layers_numpy_ones_stay_eager_torch_ones_are_traced(tmp_path, monkeypatch, cls, graphs):
    (tmp_path / "pylayers_compile.py").write_text(PYTHON_LAYERS)
    monkeypatch.chdir(tmp_path)
    text = textwrap.dedent(f"""
        name: "py" force_backward: true
        layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
        layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
                 inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" }} }} }}
        layer {{ name: "ten" type: "Python" bottom: "ip" top: "ten"
                 python_param {{ module: "pylayers_compile" layer: "{cls}" }} }}
        layer {{ name: "sig" type: "Sigmoid" bottom: "ten" top: "out" }}
    """)
    (tmp_path / "net.prototxt").write_text(text)
    net = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, trust_python=True)
    x = torch.randn(2, 3)
    expected = net.run(data=x)["out"].detach().clone()
    assert graph_count(net._unrolled(), net, {"data": x})[0] == graphs
    torch._dynamo.reset()
    net.compile(backend="aot_eager")
    out = net.run(data=x)["out"]
    torch.testing.assert_close(out.detach(), expected)
    out.sum().backward()
    assert net.layer_list[net.layer_index("ip")].blobs[0].grad.abs().sum() > 0


def test_compiled_pass_updates_outputs_and_refresh_blobs_recomputes_the_rest():
    net = deploy(LENET, batch=2)
    x = torch.randn(2, 1, 28, 28)
    expected = {n: t.detach().clone() for n, t in _all_blobs(net, x).items()}
    stale_conv1 = net.blobs["conv1"].tensor.detach().clone()
    torch._dynamo.reset()
    net.compile(backend="aot_eager")
    net.run(data=2 * x)
    torch.testing.assert_close(net.blobs["conv1"].tensor, stale_conv1)  # not an output: left as it was
    net.refresh_blobs()
    torch.testing.assert_close(net.blobs["conv1"].tensor, _all_blobs(deploy(LENET, batch=2), 2 * x)["conv1"])
    torch._dynamo.reset()
    net.compile(keep_blobs=True, backend="aot_eager")
    net.run(data=x)
    for name, value in expected.items():
        torch.testing.assert_close(net.blobs[name].tensor.detach(), value)


def _all_blobs(net, x):
    net.run(data=x)
    return {n: b.tensor for n, b in net.blobs.items()}


def test_nonfinite_loss_in_a_compiled_net_still_names_the_layer(tmp_path):
    from caffelike.train.solver import TrainingError

    solver = lenet_train_solver(8)
    solver.param.base_lr = 1e30
    torch._dynamo.reset()
    solver.net.compile(backend="aot_eager")
    with pytest.raises(TrainingError, match=r"the training loss is (nan|inf).*(Convolution|InnerProduct|Pooling|"
                                            r"ReLU) layer"):
        solver.step(5)


def test_a_copied_compiled_net_runs_its_own_layers():
    import copy

    net = deploy(LENET, batch=2)
    torch._dynamo.reset()
    net.compile(backend="aot_eager")
    twin = copy.deepcopy(net)
    with torch.no_grad():
        twin.layer_list[twin.layer_index("ip2")].blobs[1].add_(5.0)  # shifts only the twin's logits
    x = torch.randn(2, 1, 28, 28)
    mine, theirs = net.run(data=x)["prob"], twin.run(data=x)["prob"]
    torch.testing.assert_close(mine, theirs)  # softmax ignores a shift shared by every class...
    with torch.no_grad():
        twin.layer_list[twin.layer_index("ip2")].blobs[1][0] += 10.0  # ...but not one that favours class 0
    assert twin.run(data=x)["prob"][:, 0].min() > net.run(data=x)["prob"][:, 0].max()


@pytest.mark.parametrize("region,channels_last", [("ACROSS_CHANNELS", True), ("ACROSS_CHANNELS", False),
                                                  ("WITHIN_CHANNEL", True)])
def test_compiled_lrn_matches_eager_forward_and_backward(region, channels_last):
    """Traced, LRN across channels runs torch's own LRN (which Inductor lowers best); eagerly, window sums on the
    channels_last memory.  Both compute Caffe's formula."""
    layer = make_layer(f"name: 'n' type: 'LRN' lrn_param {{ local_size: 5 alpha: 0.01 beta: 0.75 k: 2 "
                       f"norm_region: {region} }}", [(2, 7, 5, 6)], caffe.TRAIN)
    x = torch.randn(2, 7, 5, 6, generator=torch.Generator().manual_seed(3))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    results = []
    for run in (layer, torch.compile(lambda t: layer(t), backend="aot_eager", dynamic=False)):
        torch._dynamo.reset()
        xg = x.clone().requires_grad_()
        y = run(xg)
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        results.append((y.detach(), xg.grad))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-6)
