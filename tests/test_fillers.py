"""Caffe's fillers: deterministic ones exactly, random ones by their statistics and fan rules."""
import math

import pytest
import torch
from caffelike.proto import caffe_pb2

from caffelike.core.fillers import fans, fill
from caffelike.errors import LayerError


def filler(**kw):
    return caffe_pb2.FillerParameter(**kw)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(5)


def test_default_is_constant_zero():
    assert torch.equal(fill((3, 4), filler()), torch.zeros(3, 4))


def test_fans_follow_caffe():
    assert fans((20, 1, 5, 5)) == (25, 500) and fans((10,)) == (1, 10) and fans((500, 800)) == (800, 500)


@pytest.mark.parametrize("norm,n", [(0, 25 * 8), (1, 64 * 25), (2, (25 * 8 + 64 * 25) / 2)],
                         ids=["fan_in", "fan_out", "average"])
def test_xavier_bound(norm, n):
    x = fill((64, 8, 5, 5), filler(type="xavier", variance_norm=norm))
    bound = math.sqrt(3.0 / n)
    assert x.abs().max() <= bound and x.abs().max() > 0.95 * bound


def test_msra_std():
    x = fill((256, 64, 3, 3), filler(type="msra"))
    assert x.std().item() == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.02)


def test_gaussian_and_uniform_statistics():
    g = fill((200, 300), filler(type="gaussian", mean=0.5, std=2.0))
    assert g.mean().item() == pytest.approx(0.5, abs=0.03) and g.std().item() == pytest.approx(2.0, rel=0.02)
    u = fill((200, 300), filler(type="uniform", min=-1.0, max=3.0))
    assert u.min() >= -1 and u.max() <= 3 and u.mean().item() == pytest.approx(1.0, abs=0.03)


def test_sparse_gaussian_keeps_about_sparse_over_num_outputs():
    x = fill((100, 400), filler(type="gaussian", sparse=20))
    assert (x != 0).float().mean().item() == pytest.approx(0.2, abs=0.02)


def test_positive_unitball_rows_sum_to_one():
    x = fill((6, 3, 2, 2), filler(type="positive_unitball"))
    assert (x >= 0).all() and torch.allclose(x.reshape(6, -1).sum(1), torch.ones(6))


def test_bilinear_kernel_for_2x_upsampling():
    x = fill((2, 1, 4, 4), filler(type="bilinear"))
    row = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(x[1, 0], row[:, None] * row[None, :])


def test_unknown_filler_is_an_error():
    with pytest.raises(LayerError, match="Unknown filler name: 'gauss'"):
        fill((2, 2), filler(type="gauss"))


@pytest.mark.parametrize("spec, fragment", [
    ('type: "uniform" min: 1 max: 0', "filler type 'uniform' needs min <= max, got min 1 and max 0"),
    ('type: "gaussian" std: -1', "filler type 'gaussian' needs std >= 0, got -1"),
    ('type: "gaussian" std: nan', "filler type 'gaussian' needs std >= 0, got nan"),
    ('type: "gaus"', "parameter blob 0 (inner_product_param.weight_filler): Unknown filler name: 'gaus'"),
], ids=["uniform-min-above-max", "negative-std", "nan-std", "unknown-type"])
def test_a_layers_bad_filler_names_the_layer_and_the_field(spec, fragment):
    # Found by tests/test_fuzz.py: torch's own RuntimeError, or an error naming no layer, escaped before.
    from google.protobuf import text_format

    import caffelike as caffe

    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } } '
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
            f"weight_filler {{ {spec} }} }} }}")
    with pytest.raises(LayerError) as err:
        caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    assert str(err.value).startswith('InnerProduct layer "ip": ') and fragment in str(err.value)


def test_xavier_on_an_empty_blob_names_the_layer():
    from google.protobuf import text_format

    import caffelike as caffe

    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 0 } } } '
            'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
            'weight_filler { type: "xavier" } } }')
    with pytest.raises(LayerError, match=r'InnerProduct layer "ip": .*xavier.* fan-in/fan-out is 0'):
        caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)

