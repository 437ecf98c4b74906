"""Parity with real BVLC Caffe: replay every fixture case through the pycaffe-compatible API.

Each case (tests/fixtures/{layers,nets}/<case>) holds a net, its weights, and every blob's data and diff as
Caffe computed them; see tests/fixtures/README.md.  Cases whose layer types caffelike does not register yet
are skipped with the missing types named.
"""

import random

import pytest
from helpers import FIXTURES, Case, assert_blob_close

import caffelike as caffe

CASES = [(kind, p.name) for kind in ("layers", "nets") for p in sorted((FIXTURES / kind).iterdir()) if p.is_dir()]


def replay(case: Case):
    meta = case.meta
    weights = {"weights": str(case.path / meta["weights"])} if meta.get("weights") else {}
    phase = caffe.TEST if meta["phase"] == "TEST" else caffe.TRAIN
    net = caffe.Net(str(case.path / "net.prototxt"), phase, **weights)
    for name in meta["inputs"]:
        net.blobs[name].data[...] = case.data(name)
    if meta.get("pre_forward") == "random.seed(0)":
        random.seed(0)  # the Python layer draws from Python's global random
    if meta.get("pre_forward", "").startswith("net.set_input_arrays"):
        net.set_input_arrays(case.arrays["memory_data/data"], case.arrays["memory_data/labels"])
    net.forward()
    return net


@pytest.mark.parametrize("kind,name", CASES, ids=[f"{k}/{n}" for k, n in CASES])
def test_caffe_fixture(kind, name, monkeypatch):
    case = Case.load(kind, name)
    meta = case.meta
    missing = sorted(set(meta["layer_types"]) - set(caffe.layer_type_list()))
    if missing:
        pytest.skip(f"layer types not implemented yet: {', '.join(missing)}")
    if meta.get("cwd"):
        monkeypatch.chdir(case.path)
    if meta.get("python_layers"):
        monkeypatch.syspath_prepend(str(case.path))
    tol = case.tolerance
    net = replay(case)

    assert list(net.blobs) == meta["blobs"], "blob names or order differ from Caffe's"
    assert net.outputs == meta["outputs"]
    assert net.inputs == meta["inputs"]
    assert {k: [list(b.shape) for b in v] for k, v in net.params.items()} == meta["params"]
    for name in meta["blobs"]:
        assert_blob_close(net.blobs[name].data, case.data(name), name=f"data of blob {name!r}", **tol)
    if not meta["backward"]:
        return
    for name in meta["random_output_diffs"]:
        net.blobs[name].diff[...] = case.output_diff(name)
    net.backward()
    for name in meta["blobs"]:
        assert_blob_close(net.blobs[name].diff, case.diff(name), name=f"diff of blob {name!r}", **tol)
    for layer, shapes in meta["params"].items():
        for i in range(len(shapes)):
            assert_blob_close(net.params[layer][i].data, case.param_data(layer, i),
                              name=f"data of param {layer}[{i}]", **tol)
            assert_blob_close(net.params[layer][i].diff, case.param_diff(layer, i),
                              name=f"diff of param {layer}[{i}]", **tol)
