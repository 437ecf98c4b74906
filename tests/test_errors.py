"""Bad input gets a clear error naming the file, line, layer or blob at fault."""
import numpy as np
import pytest

import caffelike as caffe
from caffelike.format.prototxt import parse_net

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 4 } }
"""


def write(tmp_path, text, name="net.prototxt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_unknown_layer_type_lists_the_known_ones(tmp_path):
    path = write(tmp_path, NET.replace('type: "InnerProduct"', 'type: "InnerProdukt"'))
    with pytest.raises(caffe.LayerError, match=r"Unknown layer type: 'InnerProdukt' \(known types: .*"
                                               r"InnerProduct.*\)"):
        caffe.Net(path, caffe.TEST)


def test_a_bottom_no_layer_produces_names_layer_and_index(tmp_path):
    path = write(tmp_path, NET.replace('bottom: "conv" top: "ip"', 'bottom: "pool" top: "ip"'))
    with pytest.raises(caffe.PrototxtError, match=r"net.prototxt: Unknown bottom blob 'pool' \(layer 'ip', "
                                                  r"bottom index 0\)"):
        caffe.Net(path, caffe.TEST)


def test_prototxt_syntax_error_names_file_line_and_column(tmp_path):
    path = write(tmp_path, NET.replace("num_output: 4 }", "num_output: 4 ").replace("kernel_size: 3",
                                                                                    "kernel_sise: 3"))
    with pytest.raises(caffe.PrototxtError) as err:
        caffe.Net(path, caffe.TEST)
    assert str(err.value).startswith(f"{path}:4:43: ")  # line 4, column of "kernel_sise"
    assert "kernel_sise" in str(err.value)


def test_unbalanced_braces_report_where_the_file_ends(tmp_path):
    path = write(tmp_path, NET + "layer { name: 'x'\n")
    with pytest.raises(caffe.PrototxtError, match=rf"{path}:\d+:\d+: "):
        caffe.Net(path, caffe.TEST)


def test_missing_net_file():
    with pytest.raises(caffe.CaffeError, match="Could not open file /nonexistent.prototxt"):
        caffe.Net("/nonexistent.prototxt", caffe.TEST)


@pytest.mark.parametrize("bad, kind", [(b"\xff", "byte 0xff, which is not UTF-8"), (b"\x00", "a NUL byte")],
                         ids=["non-utf8", "nul"])
def test_a_bad_byte_in_a_text_prototxt_names_its_line_not_a_binary_parse(tmp_path, bad, kind):
    # Found by tests/test_fuzz.py: such a file was parsed as a binary NetParameter ("not a valid binary ...").
    lines = NET.encode().split(b"\n")
    lines[2] = lines[2][:6] + bad + lines[2][6:]
    path = tmp_path / "net.prototxt"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(caffe.PrototxtError) as err:
        caffe.Net(str(path), caffe.TEST)
    assert str(err.value).startswith(f"{path}:3:7: the text net file holds {kind}")
    assert "binary" not in str(err.value)


def test_a_binary_net_with_nul_bytes_still_reads_as_binary(tmp_path):
    path = tmp_path / "net.binaryproto"
    path.write_bytes(parse_net(NET).SerializeToString())
    assert [layer.name for layer in caffe.Net(str(path), caffe.TEST).layers][:2] == ["data", "conv"]


def test_weight_shape_mismatch_names_layer_and_both_shapes(tmp_path):
    src = caffe.Net(parse_net(NET), caffe.TEST)
    weights = str(tmp_path / "w.caffemodel")
    src.save(weights)
    other = write(tmp_path, NET.replace("num_output: 3", "num_output: 5").replace("num_output: 4 }",
                                                                                   "num_output: 4 }"))
    with pytest.raises(caffe.WeightsError, match=r"Cannot copy param 0 weights from layer 'conv'; shape mismatch\. "
                                                 r"Source param shape is \(3, 1, 3, 3\); target param shape is "
                                                 r"\(5, 1, 3, 3\)"):
        caffe.Net(other, caffe.TEST, weights=weights)


def test_blob_count_mismatch_names_the_layer(tmp_path):
    src = caffe.Net(parse_net(NET), caffe.TEST)
    weights = str(tmp_path / "w.caffemodel")
    src.save(weights)
    other = write(tmp_path, NET.replace("num_output: 3 kernel_size: 3", "num_output: 3 kernel_size: 3 "
                                                                          "bias_term: false"))
    with pytest.raises(caffe.WeightsError, match="Incompatible number of blobs for layer 'conv'"):
        caffe.Net(other, caffe.TEST, weights=weights)


def test_input_of_the_wrong_rank_names_the_blob():
    net = caffe.Net(parse_net(NET), caffe.TEST)
    with pytest.raises(caffe.CaffeError, match=r"input blob 'data' has shape \(2, 1, 8, 8\) \(4 axes\); got an "
                                               r"array of shape \(2, 8, 8\)"):
        net.forward(data=np.zeros((2, 8, 8), np.float32))


def test_reshaping_an_input_to_the_wrong_rank_names_the_layer():
    net = caffe.Net(parse_net(NET), caffe.TEST)
    net.blobs["data"].reshape(2, 8, 8)
    with pytest.raises(caffe.LayerError, match=r'Convolution layer "conv".*3 axes'):
        net.reshape()


def test_missing_caffemodel(tmp_path):
    with pytest.raises(caffe.WeightsError, match="Could not open weights file .*nope.caffemodel"):
        caffe.Net(parse_net(NET), caffe.TEST, weights=str(tmp_path / "nope.caffemodel"))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999], ids=["half", "most", "all-but-last-bytes"])
def test_truncated_caffemodel(tmp_path, keep):
    src = caffe.Net(parse_net(NET), caffe.TEST)
    full = tmp_path / "full.caffemodel"
    src.save(str(full))
    data = full.read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(caffe.WeightsError, match=r"cut\.caffemodel.*(truncated|corrupt)"):
        caffe.Net(parse_net(NET), caffe.TEST, weights=str(cut))


def test_a_text_file_passed_as_weights(tmp_path):
    path = write(tmp_path, NET, "w.caffemodel")
    with pytest.raises(caffe.WeightsError, match="w.caffemodel"):
        caffe.Net(parse_net(NET), caffe.TEST, weights=path)


def test_top_produced_twice(tmp_path):
    path = write(tmp_path, NET.replace('top: "ip"', 'top: "conv"').replace('bottom: "conv" top: "conv"',
                                                                           'bottom: "data" top: "conv"'))
    with pytest.raises(caffe.PrototxtError, match="Top blob 'conv' produced by multiple sources"):
        caffe.Net(path, caffe.TEST)


def test_layer_failure_at_run_time_is_wrapped_with_the_layer_and_bottom_shapes():
    net = caffe.Net(parse_net(NET), caffe.TEST)
    net.blobs["conv"].reshape(2, 3, 5, 5)  # the InnerProduct was set up for K = 3*6*6
    with pytest.raises(caffe.LayerError, match=r'InnerProduct layer "ip".*(Input size incompatible|75)'):
        net.forward(start="ip")
