"""What the zoo's generated nets share (zoo/generate.py and zoo/googlenet_nets.py): Caffe's usual fillers and
multipliers, a Convolution with BVLC's defaults, and the assembly of train_val files from NetSpecs."""
from __future__ import annotations

from caffelike.proto import caffe_pb2

from caffelike.net_spec import NetSpec
from caffelike.net_spec import layers as L

MSRA = dict(type="msra")
GAUSS = dict(type="gaussian", std=0.01)

# The data files of BVLC's train_val nets, named as Caffe's ImageNet and Flickr Style examples write them, resolved
# against the working directory (run from the folder that holds them, as zoo/lenet does).
IMAGENET_TRAIN_LMDB = "ilsvrc12_train_lmdb"
IMAGENET_VAL_LMDB = "ilsvrc12_val_lmdb"
IMAGENET_MEAN = "imagenet_mean.binaryproto"


def input_layer(n: NetSpec, size: int, batch: int = 1) -> None:
    n.data = L.Input(shape=dict(dim=[batch, 3, size, size]))


def conv(bottom, num_output, kernel, stride=1, pad=0, group=1, bias=True, filler=MSRA):
    kw = dict(num_output=num_output, kernel_size=kernel, stride=stride, pad=pad, weight_filler=filler)
    if group > 1:
        kw["group"] = group
    if not bias:
        kw["bias_term"] = False
    else:
        kw["bias_filler"] = dict(type="constant")
    return L.Convolution(bottom, **kw)


def mults(lr=(1, 2)):
    """BVLC's per-blob multipliers: weights decay, biases learn twice as fast and do not decay."""
    return [dict(lr_mult=lr[0], decay_mult=1), dict(lr_mult=lr[1], decay_mult=0)]


def with_second_data_layer(n: NetSpec, second: NetSpec, name: str) -> caffe_pb2.NetParameter:
    """n's layers with second's (one data layer) right after n's first: train_val files give the TRAIN and TEST
    data layers the same tops, which one NetSpec cannot name twice."""
    first, extra = n.to_proto(), second.to_proto()
    out = caffe_pb2.NetParameter(name=name)
    out.layer.extend([first.layer[0], *extra.layer, *first.layer[1:]])
    return out


def named(n: NetSpec, name: str) -> caffe_pb2.NetParameter:
    param = n.to_proto()
    param.name = name
    return param
