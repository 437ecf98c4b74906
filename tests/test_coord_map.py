"""pycaffe compatibility, BVLC's python/caffe/test/test_coord_map.py: caffe.coord_map's maps through
convolution, pooling, deconvolution and crop, its `crop` helper (FCN's), and its refusals - asserted on caffelike
through `import caffelike as caffe`, written here from what BVLC's test checks."""
from __future__ import annotations

import numpy as np
import pytest

import caffelike as caffe
from caffelike import layers as L
from caffelike import params as P
from caffelike.coord_map import (
    AxisMismatchException,
    UndefinedMapException,
    compose,
    coord_map,
    coord_map_from_to,
    crop,
    inverse,
)


def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    """conv -> pool -> deconv over a 100x100 input (and a 20x20 auxiliary input), the upsampling kernel twice
    the deconvolution's stride."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks, stride=dstride, pad=dpad)
    return n


@pytest.mark.parametrize("pool, dstride, shift", [(2, 2, 0), (4, 4, -1)], ids=["2x-pool-2x-deconv-identity",
                                                                               "4x-pool-4x-deconv-shift-1"])
def test_coord_map_through_conv_pool_deconv(pool, dstride, shift):
    n = coord_net_spec(pool=pool, dstride=dstride)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and a == 1 and b == shift
    assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray)  # per-axis arrays, as pycaffe returns


@pytest.mark.parametrize("make", [lambda n: L.ReLU(n.deconv),
                                  lambda n: L.Convolution(L.ReLU(n.deconv), num_output=10, kernel_size=1, stride=1,
                                                          pad=0)],
                         ids=["relu-pass-through", "1x1-conv-identity"])
def test_coord_map_pass_through_layers_keep_the_map(make):
    n = coord_net_spec()
    expected = coord_map_from_to(n.deconv, n.data)
    assert coord_map_from_to(make(n), n.data) == expected


@pytest.mark.parametrize("pad", [1, 7], ids=["pad-1", "pad-7"])
@pytest.mark.parametrize("where, sign", [("conv", -1), ("deconv", +1), ("both", 0)],
                         ids=["conv-pad-subtracts", "deconv-pad-adds", "both-cancel"])
def test_coord_map_padding_shifts_the_offset(pad, where, sign):
    n = coord_net_spec()
    _, a, b = coord_map_from_to(n.deconv, n.data)
    kwargs = {"conv": dict(pad=pad), "deconv": dict(dpad=pad), "both": dict(pad=pad, dpad=pad)}[where]
    n = coord_net_spec(**kwargs)
    _, a_pad, b_pad = coord_map_from_to(n.deconv, n.data)
    assert a_pad == a and b_pad == b + sign * pad


def test_coord_map_every_bottom_and_top_of_a_layer_maps_alike():
    n = coord_net_spec()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10, kernel_size=5, stride=2, pad=0)
    assert coord_map_from_to(n.conv_data, n.data) == coord_map_from_to(n.conv_aux, n.aux)


def test_coord_map_anisotropic_is_its_isotropic_parts():
    n3x3 = coord_net_spec(ks=3, stride=1, pad=0)
    n5x5 = coord_net_spec(ks=5, stride=2, pad=10)
    n3x5 = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    ax_3, a_3, b_3 = coord_map_from_to(n3x3.deconv, n3x3.data)
    ax_5, a_5, b_5 = coord_map_from_to(n5x5.deconv, n5x5.data)
    ax_35, a_35, b_35 = coord_map_from_to(n3x5.deconv, n3x5.data)
    assert ax_3 == ax_5 == ax_35 == 1
    assert (a_3[0], b_3[0]) == (a_35[0], b_35[0]) and (a_5[0], b_5[0]) == (a_35[1], b_35[1])


def test_coord_map_nd_convolution_maps_each_axis():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1], pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=4, stride=2, pad=0)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and len(a) == len(b) == 3 and np.all(a == 1)
    assert b[0] - 1 == b[1] and b[1] - 1 == b[2]


@pytest.mark.parametrize("offset", [0, 4], ids=["offset-0", "offset-4"])
def test_coord_map_through_a_crop_adds_its_offset(offset):
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
    ax_crop, a_crop, b_crop = coord_map_from_to(n.crop, n.data)
    assert (ax_crop, a_crop, b_crop) == (ax, a, b + offset)


@pytest.mark.parametrize("pool, dstride, offset", [(2, 2, 0), (4, 4, 1)], ids=["aligned", "offset-1"])
def test_crop_helper_makes_a_crop_layer_that_aligns_the_net(pool, dstride, offset):
    n = coord_net_spec(pool=pool, dstride=dstride)
    n.score = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [offset]
    net = caffe.Net(n.to_proto(), caffe.TEST)
    assert net.blobs["score"].data.shape == (2, 10, 100, 100)


def test_coord_map_of_spatially_unconnected_tops_is_a_runtime_error():
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="Could not compute map between tops"):
        coord_map_from_to(n.ip, n.data)


@pytest.mark.parametrize("kwargs, message", [(dict(pool=3, dstride=2), "scale mismatch on crop"),
                                             (dict(dpad=10), "cannot crop negative offset")],
                         ids=["scale-mismatch", "negative-crop"])
def test_crop_refuses_impossible_crops_with_an_assertion_error(kwargs, message):
    n = coord_net_spec(**kwargs)
    with pytest.raises(AssertionError, match=message):
        crop(n.deconv, n.data)


def test_coord_map_refuses_legacy_h_w_params_and_non_tops():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 10, 10]))
    n.conv = L.Convolution(n.data, num_output=1, kernel_h=3, kernel_w=3)
    with pytest.raises(AssertionError, match="cropping does not support legacy _h/_w params"):
        coord_map_from_to(n.conv, n.data)
    with pytest.raises(TypeError, match="pass one of its tops"):
        coord_map_from_to(L.Slice(n.data, ntop=2), n.data)


def test_coord_map_building_blocks():
    assert coord_map(L.ReLU(L.Input()).fn) == (None, 1, 0)
    with pytest.raises(UndefinedMapException):
        coord_map(L.InnerProduct(L.Input(), num_output=1).fn)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
    assert compose((None, 2, 1), (1, 3, 4)) == (1, 6, 9)
    assert inverse((1, 2.0, 4.0)) == (1, 0.5, -2.0)
