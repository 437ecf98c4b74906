"""What tests/test_zoo.py checks the generated zoo nets against, written without caffelike's layers:
CHECKPOINTS, per-image blob shapes derived by hand, and blob_shapes(), Caffe's shape arithmetic (convolution
floor, pooling ceil with the pad clip, concat, inner product) walked over a NetParameter for one phase/stage."""
from __future__ import annotations

import math

from caffelike.proto import caffe_pb2

# ------------------------------------------------------------------------------------- what the tests expect
# Per-image shapes (batch axis left out) at checkpoints, derived by hand from the layer parameters:
# convolution out = floor((in + 2 pad - kernel) / stride) + 1; Caffe's pooling rounds up,
# out = ceil((in + 2 pad - kernel) / stride) + 1 (GoogLeNet's 112 -> 56 where floor would give 55).
_CAFFENET = {"data": (3, 227, 227), "conv1": (96, 55, 55), "pool1": (96, 27, 27), "norm1": (96, 27, 27),
             "conv2": (256, 27, 27), "pool2": (256, 13, 13), "norm2": (256, 13, 13), "conv3": (384, 13, 13),
             "conv4": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,),
             "fc7": (4096,)}
_ALEXNET = {**_CAFFENET, "norm1": (96, 55, 55), "norm2": (256, 27, 27)}
_GOOGLENET = {"data": (3, 224, 224), "conv1/7x7_s2": (64, 112, 112), "pool1/3x3_s2": (64, 56, 56),
              "conv2/3x3": (192, 56, 56), "pool2/3x3_s2": (192, 28, 28), "inception_3a/output": (256, 28, 28),
              "inception_3b/output": (480, 28, 28), "pool3/3x3_s2": (480, 14, 14),
              "inception_4a/output": (512, 14, 14), "inception_4b/output": (512, 14, 14),
              "inception_4c/output": (512, 14, 14), "inception_4d/output": (528, 14, 14),
              "inception_4e/output": (832, 14, 14), "pool4/3x3_s2": (832, 7, 7),
              "inception_5a/output": (832, 7, 7), "inception_5b/output": (1024, 7, 7),
              "pool5/7x7_s1": (1024, 1, 1)}
_GOOGLENET_AUX = {"loss1/ave_pool": (512, 4, 4), "loss1/conv": (128, 4, 4), "loss1/fc": (1024,),
                  "loss2/ave_pool": (528, 4, 4), "loss2/conv": (128, 4, 4), "loss2/fc": (1024,)}
CHECKPOINTS = {
    "caffenet/deploy.prototxt": {**_CAFFENET, "fc8": (1000,), "prob": (1000,)},
    "caffenet/train_val.prototxt": {**_CAFFENET, "fc8": (1000,)},
    "alexnet/deploy.prototxt": {**_ALEXNET, "fc8": (1000,), "prob": (1000,)},
    "alexnet/train_val.prototxt": {**_ALEXNET, "fc8": (1000,)},
    "rcnn_ilsvrc13/deploy.prototxt": {**_CAFFENET, "fc-rcnn": (200,)},
    "flickr_style/deploy.prototxt": {**_CAFFENET, "fc8_flickr": (20,), "prob": (20,)},
    "flickr_style/train_val.prototxt": {**_CAFFENET, "fc8_flickr": (20,)},
    "googlenet/deploy.prototxt": {**_GOOGLENET, "loss3/classifier": (1000,), "prob": (1000,)},
    "googlenet/train_val.prototxt": {**_GOOGLENET, **_GOOGLENET_AUX, "loss1/classifier": (1000,),
                                     "loss2/classifier": (1000,), "loss3/classifier": (1000,)},
    "digits-alexnet/alexnet.prototxt": _ALEXNET,
    "digits-googlenet/googlenet.prototxt": _GOOGLENET,
    "vgg16/deploy.prototxt": {"data": (3, 224, 224), "conv1_2": (64, 224, 224), "pool1": (64, 112, 112),
                              "pool3": (256, 28, 28), "pool5": (512, 7, 7), "fc7": (4096,), "prob": (1000,)},
    "resnet50/deploy.prototxt": {"conv1": (64, 112, 112), "pool1": (64, 56, 56), "res2c": (256, 56, 56),
                                 "res3a": (512, 28, 28), "res4f": (1024, 14, 14), "res5c": (2048, 7, 7),
                                 "pool5": (2048, 1, 1), "prob": (1000,)},
    "squeezenet1.1/deploy.prototxt": {"conv1": (64, 113, 113), "pool1": (64, 56, 56), "fire2/concat": (128, 56, 56),
                                      "pool3": (128, 28, 28), "pool5": (256, 14, 14), "fire9/concat": (512, 14, 14),
                                      "conv10": (1000, 14, 14), "pool10": (1000, 1, 1), "prob": (1000, 1, 1)},
    "mobilenet_v1/deploy.prototxt": {"conv1": (32, 112, 112), "conv2_dw": (32, 112, 112),
                                     "conv4_dw": (128, 56, 56), "conv7_pw": (512, 14, 14),
                                     "conv14_pw": (1024, 7, 7), "pool6": (1024, 1, 1), "prob": (1000, 1, 1)},
}


class ShapeError(ValueError):
    """blob_shapes met a layer whose shape arithmetic it does not know, or an impossible geometry."""


def _meets(rule, phase: int, stages) -> bool:
    """Caffe's StateMeetsRule for phase and stages (the zoo uses no levels)."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    return all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def included(layer, phase: int, stages=()) -> bool:
    """Caffe's rule: with include rules, in iff one is met; otherwise in unless an exclude rule is met."""
    if layer.include:
        return any(_meets(r, phase, stages) for r in layer.include)
    return not any(_meets(r, phase, stages) for r in layer.exclude)


def _hw(p, base: str, generic: str, default: int) -> tuple[int, int]:
    """(h, w) of a geometry field: `<base>_h`/`<base>_w` when given, else the generic field (Convolution's is
    repeated: one value for both axes or one per axis), else the default."""
    if p.HasField(f"{base}_h") or p.HasField(f"{base}_w"):
        return getattr(p, f"{base}_h"), getattr(p, f"{base}_w")
    value = getattr(p, generic)
    if isinstance(value, int):
        return (value, value) if p.HasField(generic) else (default, default)
    return (value[0], value[-1]) if len(value) else (default, default)


def _geometry(p) -> tuple:
    return _hw(p, "kernel", "kernel_size", 0), _hw(p, "stride", "stride", 1), _hw(p, "pad", "pad", 0)


def blob_shapes(net: caffe_pb2.NetParameter, phase: int, stages=(), image=(3, 256, 256)) -> dict:
    """Every top blob of `net` in state (phase, stages), with the shape Caffe gives it; `image` is the (C, H, W)
    of what Data and ImageData layers read before their crop (ImageData's new_height/new_width win).  Split
    blobs, which Caffe inserts itself, are not listed."""
    shapes = {}
    for name, shape in zip(net.input, net.input_shape):
        shapes[name] = tuple(shape.dim)
    for layer in net.layer:
        if not included(layer, phase, stages):
            continue
        try:
            bottoms = [shapes[b] for b in layer.bottom]
        except KeyError as e:
            raise ShapeError(f'layer "{layer.name}": bottom {e} is not produced before it') from None
        tops = _layer_tops(layer, bottoms, image)
        for t, s in zip(layer.top, tops):
            shapes[t] = s
    return shapes


def _layer_tops(layer, bottoms, image) -> list[tuple]:
    t = layer.type
    if t == "Input":
        dims = [tuple(s.dim) for s in layer.input_param.shape]
        return dims if len(dims) == len(layer.top) else dims * len(layer.top)
    if t in ("Data", "ImageData"):
        tp = layer.transform_param
        if t == "Data":
            batch, (c, h, w) = layer.data_param.batch_size, image
        else:
            p = layer.image_data_param
            batch, c = p.batch_size, (3 if p.is_color else 1)
            h, w = (p.new_height, p.new_width) if p.new_height else image[1:]
        if tp.crop_size:
            h = w = tp.crop_size
        return [(batch, c, h, w), (batch,)]
    if t in ("ReLU", "Dropout", "LRN", "Softmax", "Power", "Sigmoid", "TanH", "BatchNorm", "Scale", "Eltwise"):
        return [bottoms[0]]
    if t in ("SoftmaxWithLoss", "Accuracy"):
        return [()]
    if t == "Concat":
        axis = layer.concat_param.axis
        out = list(bottoms[0])
        out[axis] = sum(b[axis] for b in bottoms)
        return [tuple(out)]
    if t == "InnerProduct":
        axis = layer.inner_product_param.axis
        return [tuple(bottoms[0][:axis]) + (layer.inner_product_param.num_output,)]
    if t == "Convolution":
        p = layer.convolution_param
        (kh, kw), (sh, sw), (ph, pw) = _geometry(p)
        dilation = p.dilation[0] if len(p.dilation) else 1
        n, _, h, w = bottoms[0]
        oh = (h + 2 * ph - (dilation * (kh - 1) + 1)) // sh + 1
        ow = (w + 2 * pw - (dilation * (kw - 1) + 1)) // sw + 1
        return [(n, p.num_output, oh, ow)]
    if t == "Pooling":
        p = layer.pooling_param
        n, c, h, w = bottoms[0]
        if p.global_pooling:
            return [(n, c, 1, 1)]
        (kh, kw), (sh, sw), (ph, pw) = _geometry(p)
        rnd = math.floor if p.round_mode == caffe_pb2.PoolingParameter.FLOOR else math.ceil
        oh, ow = rnd((h + 2 * ph - kh) / sh) + 1, rnd((w + 2 * pw - kw) / sw) + 1
        # The last window must start inside the image (plus the top/left pad).
        if ph and (oh - 1) * sh >= h + ph:
            oh -= 1
        if pw and (ow - 1) * sw >= w + pw:
            ow -= 1
        return [(n, c, oh, ow)]
    raise ShapeError(f'layer "{layer.name}": no shape rule for type {t}')
