"""Upgrades Caffe refuses (upgrade_proto.cpp's FATAL and CHECK paths): a PrototxtError naming the file, and
the net left as it was."""
from __future__ import annotations

import pytest
from test_upgrade import parse_net

from caffelike.errors import PrototxtError
from caffelike.format.upgrade import upgrade_net


def assert_upgrade_fails(text: str, *fragments: str) -> None:
    net = parse_net(text)
    before = net.SerializeToString()
    with pytest.raises(PrototxtError) as info:
        upgrade_net(net, "bad.prototxt")
    message = str(info.value)
    assert message.startswith("bad.prototxt: ")
    for fragment in fragments:
        assert fragment in message
    assert net.SerializeToString() == before, "a failed upgrade must leave the net as it was"


def test_error_unknown_v0_type():
    assert_upgrade_fails('layers { layer { name: "mx" type: "maxout" } bottom: "x" top: "y" } input: "x"',
                         'layer "mx"', 'unknown type "maxout"', "conv")


def test_error_v0_layer_without_type():
    assert_upgrade_fails('layers { layer { name: "t" } }', 'layer "t"', "no type")


def test_error_v0_field_foreign_to_type():
    assert_upgrade_fails(
        'input: "x" layers { layer { name: "drop" type: "dropout" num_output: 3 } bottom: "x" top: "x" }',
        'layer "drop"', '"dropout"', '"num_output"', "conv, innerproduct")
    assert_upgrade_fails(  # Caffe's V0 im2col took its kernel from the conv it fed, never from kernelsize
        'input: "x" layers { layer { name: "cols" type: "im2col" kernelsize: 3 } bottom: "x" top: "c" }',
        'layer "cols"', '"im2col"', '"kernelsize"', "conv, pool")


def test_error_both_layer_and_layers():
    assert_upgrade_fails('layer { name: "a" type: "ReLU" } layers { name: "b" type: RELU }',
                         "both `layer`", "`layers`")
    assert_upgrade_fails('layer { name: "a" type: "ReLU" } layers { layer { name: "b" type: "relu" } }',
                         "both `layer`")


@pytest.mark.parametrize("header,fragments", [
    ('input: "data" input_dim: 1 input_dim: 3 input_dim: 32', ("1 input(s)", "3 input_dim", "4 (num, channels")),
    ('input: "a" input: "b" input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32', ("2 input(s)", "4 input_dim")),
    ('input: "a" input: "b" input_shape { dim: 1 }', ("2 input(s)", "1 input_shape")),
    ('input_dim: 1 input_dim: 3 input_dim: 32 input_dim: 32', ("0 input(s)",)),
    ('input: "a" input_shape { dim: 1 } input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1', ("both input_shape",)),
], ids=["dim-count", "dim-count-two-inputs", "shape-count", "dims-without-input", "shape-and-dim"])
def test_error_input_counts(header, fragments):
    # A V1 body too, to check that nothing is half-upgraded when the input check fails.
    assert_upgrade_fails(header + ' layers { name: "r" type: RELU bottom: "a" top: "a" }', *fragments)


def test_error_padding_layer_feeding_two_layers():
    assert_upgrade_fails(
        """
        input: "data"
        layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "padded" }
        layers { layer { name: "convA" type: "conv" num_output: 2 kernelsize: 3 } bottom: "padded" top: "a" }
        layers { layer { name: "convB" type: "conv" num_output: 2 kernelsize: 3 } bottom: "padded" top: "b" }
        """,
        'padding layer "pad1"', 'feeds both layer "convA" and layer "convB"')


def test_error_padding_layer_feeding_a_non_conv():
    assert_upgrade_fails(
        """
        input: "data"
        layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "padded" }
        layers { layer { name: "fc" type: "innerproduct" num_output: 2 } bottom: "padded" top: "fc" }
        """,
        'padding layer "pad1"', 'layer "fc"', '"innerproduct"', "conv or pool")


def test_error_padding_into_multi_bottom_conv():
    assert_upgrade_fails(
        """
        input: "data" input: "more"
        layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "padded" }
        layers { layer { name: "c" type: "conv" num_output: 2 kernelsize: 3 } bottom: "more" bottom: "padded" top: "c" }
        """,
        'layer "c"', "2 bottoms")


def test_error_v0_unknown_bottom():
    assert_upgrade_fails('layers { layer { name: "r" type: "relu" } bottom: "nowhere" top: "r" }',
                         'layer "r"', '"nowhere"')


def test_error_v0_net_with_a_v1_entry():
    assert_upgrade_fails('layers { layer { name: "r" type: "relu" } } layers { name: "s" type: RELU }',
                         'layer "s"', "V0 `layer { }` block")
    assert_upgrade_fails('layers { layer { name: "r" type: "relu" } } layers { type: RELU }', "layer #1 (unnamed)")


def test_error_v1_none_type():
    assert_upgrade_fails('layers { name: "ok" type: RELU } layers { name: "nothing" type: NONE }',
                         'layer "nothing"', "NONE")
    assert_upgrade_fails('layers { name: "untyped" }', 'layer "untyped"', "no type")


