"""caffelike.draw (pycaffe's caffe.draw) and `caffelike draw`: the DOT text of BVLC's LeNet — labels, colours,
edge labels, in-place layers, phase filtering — and rendering through Graphviz's `dot` where it is installed."""
import re
import shutil
import subprocess

import pytest
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

from caffelike import draw, zoo
from caffelike.cli import main
from caffelike.errors import CaffeError, PrototxtError
from caffelike.format.prototxt import read_net
from caffelike.net_spec import L, P, to_proto

LENET = zoo.path("lenet", "lenet_train_test.prototxt")
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")

_NODE = re.compile(r'^\t("(?:[^"\\]|\\.)*") \[(.*)\];$')
_EDGE = re.compile(r'^\t("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*")(?: \[label="(.*)"\])?;$')
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def parse_dot(text: str):
    """(nodes: DOT id (unquoted) -> attributes, edges: [(source, target, label)]) of net_to_dot's text."""
    nodes, edges = {}, []
    for line in text.splitlines()[2:-1]:
        if m := _EDGE.match(line):
            edges.append((m[1][1:-1], m[2][1:-1], m[3] or ""))
        elif m := _NODE.match(line):
            nodes[m[1][1:-1]] = dict(_ATTR.findall(m[2]))
        else:
            raise AssertionError(f"unexpected DOT line {line!r}")
    return nodes, edges


def lenet(phase=None, rankdir="LR", display_lrm=False):
    return parse_dot(draw.net_to_dot(read_net(LENET), rankdir, phase, display_lrm))


def layer(text: str) -> caffe_pb2.LayerParameter:
    return text_format.Parse(text, caffe_pb2.LayerParameter())


# ------------------------------------------------------------------------------------------------ the graph
def test_header_names_the_net_and_the_rankdir():
    lines = draw.net_to_dot(read_net(LENET), "UD").splitlines()
    assert lines[:2] == ['digraph "LeNet" {', '\trankdir="UD";'] and lines[-1] == "}"
    assert draw.net_to_dot(caffe_pb2.NetParameter()).splitlines()[0] == 'digraph "Net" {'


@pytest.mark.parametrize("node, fillcolor", [
    (r"mnist\n(Data)", "#6495ED"),
    (r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0", "#FF5050"),
    (r"pool1\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0", "#FF9900"),
    (r"ip1\n(InnerProduct)", "#CC33FF"),
    (r"relu1\n(ReLU)", "#90EE90"),
    (r"accuracy\n(Accuracy)", "#6495ED"),
    (r"loss\n(SoftmaxWithLoss)", "#6495ED"),
], ids=["data", "conv", "pool", "ip", "in-place-relu", "accuracy", "loss"])
def test_layer_nodes_are_filled_records_with_caffes_labels_and_colours(node, fillcolor):
    nodes, _ = lenet()
    assert nodes[node] == {"shape": "record", "fillcolor": fillcolor, "style": "filled"}


def test_blobs_are_grey_octagons():
    nodes, _ = lenet()
    blobs = {name: attrs for name, attrs in nodes.items() if "(" not in name}
    assert sorted(blobs) == sorted(["data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "accuracy",
                                    "loss"])
    assert all(attrs == {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"} for attrs in blobs.values())


def test_edges_from_layers_carry_batch_size_and_num_output():
    _, edges = lenet()
    labelled = {(src.split("\\n")[0], dst, label) for src, dst, label in edges if label}
    assert labelled == {("mnist", "data", "Batch 64"), ("mnist", "label", "Batch 64"),
                        ("mnist", "data", "Batch 100"), ("mnist", "label", "Batch 100"),
                        ("conv1", "conv1", "20"), ("conv2", "conv2", "50"), ("ip1", "ip1", "500"),
                        ("ip2", "ip2", "10")}
    assert all(label == "" for src, dst, label in edges if "(" in dst)  # blob -> layer edges are unlabelled


def test_the_in_place_relu_reads_and_writes_one_blob():
    _, edges = lenet()
    assert ("ip1", r"relu1\n(ReLU)", "") in edges and (r"relu1\n(ReLU)", "ip1", "") in edges


def test_two_layers_of_one_name_and_type_are_one_node_as_in_pycaffe():
    nodes, edges = lenet()
    assert sum(name.startswith("mnist") for name in nodes) == 1
    assert len([e for e in edges if e[0].startswith("mnist")]) == 4


@pytest.mark.parametrize("phase, batches, has_accuracy", [
    (None, {"Batch 64", "Batch 100"}, True),
    (caffe_pb2.TRAIN, {"Batch 64"}, False),
    (caffe_pb2.TEST, {"Batch 100"}, True),
], ids=["all", "train", "test"])
def test_phase_filter_reads_include_rules(phase, batches, has_accuracy):
    nodes, edges = lenet(phase)
    assert {label for src, _, label in edges if src.startswith("mnist")} == batches
    assert (r"accuracy\n(Accuracy)" in nodes) is has_accuracy
    assert r"loss\n(SoftmaxWithLoss)" in nodes


def test_phase_filter_reads_exclude_rules_and_only_the_phase():
    net = caffe_pb2.NetParameter()
    net.layer.extend([
        layer('name: "a" type: "Input" top: "x" exclude { phase: TEST }'),
        layer('name: "b" type: "AbsVal" bottom: "x" top: "y" include { stage: "deploy" }'),  # phase reads TRAIN
        layer('name: "c" type: "AbsVal" bottom: "y" top: "z" exclude { stage: "deploy" phase: TRAIN }'),
    ])
    kept = {ph: [n.split("\\n")[0] for n in parse_dot(draw.net_to_dot(net, phase=ph))[0] if "(" in n]
            for ph in (caffe_pb2.TRAIN, caffe_pb2.TEST)}
    assert kept == {caffe_pb2.TRAIN: ["a", "b"], caffe_pb2.TEST: ["c"]}


def test_include_and_exclude_together_is_an_error_when_filtering():
    net = caffe_pb2.NetParameter()
    net.layer.append(layer('name: "a" type: "Input" top: "x" include { phase: TRAIN } exclude { phase: TEST }'))
    draw.net_to_dot(net)  # no phase: nothing is filtered, nothing checked (pycaffe)
    with pytest.raises(PrototxtError, match=r'layer "a" has both include and exclude rules'):
        draw.net_to_dot(net, phase=caffe_pb2.TRAIN)
    with pytest.raises(CaffeError, match=r"phase must be caffe.TRAIN, caffe.TEST or None"):
        draw.net_to_dot(net, phase="TRAIN")


# ------------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("rankdir, label", [
    ("LR", r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"'),
    ("RL", r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"'),
    ("UD", r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"'),
    ("TB", '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'),
    ("BT", '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'),
])
def test_label_separator_follows_rankdir(rankdir, label):
    assert draw.get_layer_label(read_net(LENET).layer[2], rankdir) == label


@pytest.mark.parametrize("text, label", [
    ('name: "d" type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 4 kernel_size: 3 stride: 2 '
     'pad: 1 }', "d (Deconvolution) kernel size: 4 stride: 2 pad: 1"),
    ('name: "c" type: "Convolution" convolution_param { num_output: 4 kernel_h: 3 kernel_w: 3 }',
     "c (Convolution) kernel size: 1 stride: 1 pad: 0"),
    ('name: "p" type: "Pooling" pooling_param { pool: AVE global_pooling: true }',
     "p (Pooling AVE) kernel size: 0 stride: 1 pad: 0"),
    ('name: "s" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 pad: 1 }',
     "s (Pooling STOCHASTIC) kernel size: 3 stride: 2 pad: 1"),
    ('name: "i" type: "InnerProduct" inner_product_param { num_output: 3 }', "i (InnerProduct)"),
], ids=["deconv-first-value", "conv-kernel_h-reads-1", "global-pool", "stochastic-pool", "ip"])
def test_spatial_descriptors_as_pycaffe_reads_them(text, label):
    assert draw.get_layer_label(layer(text), "TB") == f'"{label}"'


@pytest.mark.parametrize("params, lrm", [
    ("", "lr mult: 1.0, 1.0"),
    ("param { lr_mult: 0.5 }", "lr mult: 0.5, 1.0"),
    ("param { lr_mult: 1 } param { lr_mult: 2 }", "lr mult: 1.0, 2.0"),
    ("param { lr_mult: 0 } param { lr_mult: 0 }", None),
], ids=["default", "one-param", "two-params", "frozen-hidden"])
def test_display_lrm_adds_the_learning_rate_multipliers(params, lrm):
    lay = layer(f'name: "i" type: "InnerProduct" {params} inner_product_param {{ num_output: 3 }}')
    assert draw.get_layer_label(lay, "TB") == '"i (InnerProduct)"'
    assert draw.get_layer_label(lay, "TB", display_lrm=True) == \
        ('"i (InnerProduct) ' + lrm + '"' if lrm else '"i (InnerProduct)"')


def test_display_lrm_on_lenet_and_not_on_other_types():
    nodes, _ = lenet(rankdir="TB", display_lrm=True)
    assert "conv1 (Convolution) kernel size: 5 stride: 1 pad: 0 lr mult: 1.0, 2.0" in nodes
    assert "relu1 (ReLU)" in nodes
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate multiplier"):
        draw.get_layer_lr_mult(layer('name: "r" type: "ReLU"'))


def test_pycaffe_helper_functions():
    assert draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert draw.get_edge_label(layer('type: "Data" data_param { batch_size: 32 }')) == "Batch 32"
    assert draw.get_edge_label(layer('type: "InnerProduct"')) == "0"  # DIGITS' ip2 without num_output
    assert draw.get_edge_label(layer('type: "ReLU"')) == '""'
    assert [draw.choose_color_by_layertype(t) for t in ("Deconvolution", "Pooling", "InnerProduct", "LRN")] == \
        ["#FF5050", "#FF9900", "#CC33FF", "#6495ED"]


def test_in_place_is_one_bottom_equal_to_one_top_whatever_the_type():
    net = caffe_pb2.NetParameter()
    net.layer.extend([layer('name: "x" type: "Input" top: "x"'),
                      layer('name: "blank" type: "Python" bottom: "x" top: "x"'),
                      layer('name: "conv" type: "Convolution" bottom: "x" top: "x"'),
                      layer('name: "cat" type: "Concat" bottom: "x" bottom: "x" top: "x"')])
    nodes, _ = parse_dot(draw.net_to_dot(net))
    assert nodes[r"blank\n(Python)"]["fillcolor"] == "#90EE90"
    assert nodes[r"conv\n(Convolution)\nkernel size: 1\nstride: 1\npad: 0"]["fillcolor"] == "#90EE90"
    assert nodes[r"cat\n(Concat)"]["fillcolor"] == "#6495ED"


def test_names_with_quotes_and_record_characters_are_escaped():
    net = caffe_pb2.NetParameter(name='say "hi"')
    net.layer.append(layer(r'name: "a|b{c}<d>\"" type: "Input" top: "x\"y\\"'))
    text = draw.net_to_dot(net)
    assert 'digraph "say \\"hi\\"" {' in text
    assert r'"a\|b\{c\}\<d\>\"\n(Input)" [shape="record"' in text
    assert '"x\\"y\\\\" [shape="octagon"' in text
    if HAVE_DOT:  # Graphviz accepts it and prints the characters
        plain = subprocess.run(["dot", "-Tplain"], input=text.encode(), capture_output=True, check=True).stdout
        assert b"octagon" in plain and b"record" in plain


def test_a_netspec_net_draws():
    net = to_proto(L.Pooling(L.Convolution(L.Input(shape=dict(dim=[1, 1, 8, 8])), num_output=2, kernel_size=3),
                             pool=P.Pooling.AVE, kernel_size=2))
    nodes, edges = parse_dot(draw.net_to_dot(net, "TB"))
    assert "Pooling1 (Pooling AVE) kernel size: 2 stride: 1 pad: 0" in nodes
    assert ("Convolution1 (Convolution) kernel size: 3 stride: 1 pad: 0", "Convolution1", "2") in edges


# ------------------------------------------------------------------------------------------------ files and CLI
@pytest.mark.parametrize("ext", ["dot", "raw", "gv"])
def test_dot_text_files_need_no_graphviz(tmp_path, monkeypatch, ext):
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    out = tmp_path / f"lenet.{ext}"
    draw.draw_net_to_file(read_net(LENET), str(out), "TB", caffe_pb2.TEST)
    assert out.read_text() == draw.net_to_dot(read_net(LENET), "TB", caffe_pb2.TEST)


def test_a_picture_without_graphviz_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    out = tmp_path / "lenet.png"
    with pytest.raises(CaffeError, match=r"needs Graphviz's `dot` program.*apt install graphviz.*\.dot or \.raw"):
        draw.draw_net_to_file(read_net(LENET), str(out))
    assert list(tmp_path.iterdir()) == []


def test_a_file_name_without_extension_is_an_error(tmp_path):
    with pytest.raises(CaffeError, match=r"end it with \.png, \.svg, \.pdf"):
        draw.draw_net_to_file(read_net(LENET), str(tmp_path / "lenet"))


def test_cli_writes_dot_text(tmp_path, capsys):
    out = tmp_path / "lenet.dot"
    assert main(["draw", LENET, str(out), "--rankdir", "TB", "--phase", "TRAIN", "--display_lrm"]) == 0
    assert out.read_text() == draw.net_to_dot(read_net(LENET), "TB", caffe_pb2.TRAIN, display_lrm=True)
    assert f"Drawing net to {out}" in capsys.readouterr().out


def test_cli_defaults_are_lr_and_all_phases(tmp_path):
    out = tmp_path / "lenet.raw"
    assert main(["draw", LENET, str(out)]) == 0
    assert out.read_text() == draw.net_to_dot(read_net(LENET), "LR", None)


def test_cli_single_dash_flags_as_in_caffe(tmp_path):
    out = tmp_path / "lenet.dot"
    assert main(["draw", LENET, str(out), "-rankdir", "BT", "-phase", "test"]) == 0
    assert out.read_text() == draw.net_to_dot(read_net(LENET), "BT", caffe_pb2.TEST)


@pytest.mark.parametrize("argv, message", [
    (["--phase", "VAL"], "--phase must be TRAIN, TEST or ALL, got 'VAL'"),
    (["--missing"], "no such file"),
], ids=["bad-phase", "missing-net"])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    net = str(tmp_path / "nope.prototxt") if argv == ["--missing"] else LENET
    argv = [] if argv == ["--missing"] else argv
    assert main(["draw", net, str(tmp_path / "x.dot"), *argv]) == 1
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ rendering
@needs_dot
@pytest.mark.parametrize("ext, magic", [("png", b"\x89PNG\r\n\x1a\n"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_pictures_render_through_dot(tmp_path, ext, magic):
    out = tmp_path / f"lenet.{ext}"
    draw.draw_net_to_file(read_net(LENET), str(out), "UD")
    assert out.read_bytes().startswith(magic)


@needs_dot
def test_svg_shows_the_labels_and_colours():
    svg = draw.draw_net(read_net(LENET), "LR", "svg", caffe_pb2.TEST).decode()
    for text in ("conv1", "(Pooling MAX)", "kernel size: 5", "Batch 100", "#90ee90", "#ff5050", "#e0e0e0"):
        assert text.lower() in svg.lower()
    assert "Batch 64" not in svg


@needs_dot
def test_an_unknown_format_is_graphvizs_error():
    with pytest.raises(CaffeError, match=r"Graphviz `dot -Tnope` failed .*not recognized"):
        draw.draw_net(read_net(LENET), "LR", "nope")


@needs_dot
def test_cli_draws_a_png(tmp_path):
    out = tmp_path / "lenet.png"
    assert main(["draw", LENET, str(out), "--rankdir", "UD"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_get_pydot_graph_needs_pydot():
    try:
        import pydot  # noqa: F401
    except ImportError:
        with pytest.raises(CaffeError, match="needs pydot.*net_to_dot"):
            draw.get_pydot_graph(read_net(LENET), "LR")
    else:
        graph = draw.get_pydot_graph(read_net(LENET), "LR")
        assert graph.get_name() in ('"LeNet"', "LeNet")
