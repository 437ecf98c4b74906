"""Write the zoo's deploy prototxts that are generated rather than copied: CaffeNet, GoogLeNet, VGG-16, ResNet-50,
SqueezeNet 1.1 and MobileNet v1, each as its authors published it for Caffe, built with caffelike's NetSpec.

    python zoo/generate.py            # rewrites zoo/<net>/deploy.prototxt
    python zoo/generate.py --check    # exit 1 if a committed prototxt differs from what this script writes

Each builder also returns the blob shapes Caffe derives for a 1-image batch at a few checkpoints (the test checks
them against caffelike's shape inference and a forward pass).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from caffelike.net_spec import NetSpec, layers as L, params as P

ROOT = pathlib.Path(__file__).resolve().parent
MSRA = dict(type="msra")
GAUSS = dict(type="gaussian", std=0.01)


def _input(n: NetSpec, size: int) -> None:
    n.data = L.Input(shape=dict(dim=[1, 3, size, size]))


def conv(bottom, num_output, kernel, stride=1, pad=0, group=1, bias=True, filler=MSRA):
    kw = dict(num_output=num_output, kernel_size=kernel, stride=stride, pad=pad, weight_filler=filler)
    if group > 1:
        kw["group"] = group
    if not bias:
        kw["bias_term"] = False
    else:
        kw["bias_filler"] = dict(type="constant")
    return L.Convolution(bottom, **kw)


def caffenet() -> tuple[NetSpec, dict]:
    """BVLC Reference CaffeNet (models/bvlc_reference_caffenet/deploy.prototxt): AlexNet with pooling before LRN."""
    n = NetSpec()
    _input(n, 227)
    n.conv1 = conv(n.data, 96, 11, stride=4, filler=GAUSS)
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.norm1 = L.LRN(n.pool1, local_size=5, alpha=1e-4, beta=0.75)
    n.conv2 = conv(n.norm1, 256, 5, pad=2, group=2, filler=GAUSS)
    n.relu2 = L.ReLU(n.conv2, in_place=True)
    n.pool2 = L.Pooling(n.relu2, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n.norm2 = L.LRN(n.pool2, local_size=5, alpha=1e-4, beta=0.75)
    n.conv3 = conv(n.norm2, 384, 3, pad=1, filler=GAUSS)
    n.relu3 = L.ReLU(n.conv3, in_place=True)
    n.conv4 = conv(n.relu3, 384, 3, pad=1, group=2, filler=GAUSS)
    n.relu4 = L.ReLU(n.conv4, in_place=True)
    n.conv5 = conv(n.relu4, 256, 3, pad=1, group=2, filler=GAUSS)
    n.relu5 = L.ReLU(n.conv5, in_place=True)
    n.pool5 = L.Pooling(n.relu5, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    top = n.pool5
    for i, width in ((6, 4096), (7, 4096)):
        setattr(n, f"fc{i}", L.InnerProduct(top, num_output=width, weight_filler=dict(type="gaussian", std=0.005),
                                            bias_filler=dict(type="constant", value=0.1)))
        setattr(n, f"relu{i}", L.ReLU(getattr(n, f"fc{i}"), in_place=True))
        setattr(n, f"drop{i}", L.Dropout(getattr(n, f"relu{i}"), in_place=True, dropout_ratio=0.5))
        top = getattr(n, f"drop{i}")
    n.fc8 = L.InnerProduct(top, num_output=1000, weight_filler=GAUSS, bias_filler=dict(type="constant"))
    n.prob = L.Softmax(n.fc8)
    shapes = {"conv1": (1, 96, 55, 55), "pool1": (1, 96, 27, 27), "conv2": (1, 256, 27, 27),
              "pool2": (1, 256, 13, 13), "conv5": (1, 256, 13, 13), "pool5": (1, 256, 6, 6), "fc6": (1, 4096),
              "prob": (1, 1000)}
    return n, shapes


def vgg16() -> tuple[NetSpec, dict]:
    """VGG-16 (Simonyan & Zisserman, VGG_ILSVRC_16_layers_deploy.prototxt): 13 3x3 convs, 3 FC layers."""
    n = NetSpec()
    _input(n, 224)
    top = n.data
    for block, (convs, width) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), start=1):
        for i in range(1, convs + 1):
            name = f"conv{block}_{i}"
            setattr(n, name, conv(top, width, 3, pad=1))
            setattr(n, f"relu{block}_{i}", L.ReLU(getattr(n, name), in_place=True))
            top = getattr(n, f"relu{block}_{i}")
        setattr(n, f"pool{block}", L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2))
        top = getattr(n, f"pool{block}")
    for i in (6, 7):
        setattr(n, f"fc{i}", L.InnerProduct(top, num_output=4096))
        setattr(n, f"relu{i}", L.ReLU(getattr(n, f"fc{i}"), in_place=True))
        setattr(n, f"drop{i}", L.Dropout(getattr(n, f"relu{i}"), in_place=True, dropout_ratio=0.5))
        top = getattr(n, f"drop{i}")
    n.fc8 = L.InnerProduct(top, num_output=1000)
    n.prob = L.Softmax(n.fc8)
    shapes = {"conv1_2": (1, 64, 224, 224), "pool1": (1, 64, 112, 112), "pool3": (1, 256, 28, 28),
              "pool5": (1, 512, 7, 7), "fc7": (1, 4096), "prob": (1, 1000)}
    return n, shapes


def _bn_scale(n: NetSpec, bottom, name: str, relu: bool):
    """BatchNorm (statistics, lr_mult 0) + Scale with bias, in place, as ResNet's Caffe release writes them."""
    setattr(n, f"bn{name}", L.BatchNorm(bottom, in_place=True, batch_norm_param=dict(use_global_stats=True)))
    setattr(n, f"scale{name}", L.Scale(getattr(n, f"bn{name}"), in_place=True, bias_term=True))
    top = getattr(n, f"scale{name}")
    if relu:
        setattr(n, f"{name}_relu", L.ReLU(top, in_place=True))
        top = getattr(n, f"{name}_relu")
    return top


def resnet50() -> tuple[NetSpec, dict]:
    """ResNet-50 (He et al., KaimingHe/deep-residual-networks ResNet-50-deploy.prototxt): bottleneck blocks with
    BatchNorm + Scale, projection shortcuts at the first block of each stage."""
    n = NetSpec()
    _input(n, 224)
    n.conv1 = conv(n.data, 64, 7, stride=2, pad=3)
    top = _bn_scale(n, n.conv1, "_conv1", relu=True)
    n.pool1 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    top = n.pool1
    for stage, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), start=2):
        for b in range(blocks):
            tag = f"{stage}{chr(ord('a') + b)}"
            stride = 2 if b == 0 and stage > 2 else 1
            if b == 0:
                setattr(n, f"res{tag}_branch1", conv(top, 4 * width, 1, stride=stride, bias=False))
                shortcut = _bn_scale(n, getattr(n, f"res{tag}_branch1"), f"{tag}_branch1", relu=False)
            else:
                shortcut = top
            x = top
            for part, (k, w, s, pad) in zip("abc", ((1, width, stride, 0), (3, width, 1, 1), (1, 4 * width, 1, 0))):
                name = f"res{tag}_branch2{part}"
                setattr(n, name, conv(x, w, k, stride=s, pad=pad, bias=False))
                x = _bn_scale(n, getattr(n, name), f"{tag}_branch2{part}", relu=part != "c")
            setattr(n, f"res{tag}", L.Eltwise(shortcut, x))
            setattr(n, f"res{tag}_relu", L.ReLU(getattr(n, f"res{tag}"), in_place=True))
            top = getattr(n, f"res{tag}_relu")
    n.pool5 = L.Pooling(top, pool=P.Pooling.AVE, kernel_size=7, stride=1)
    n.fc1000 = L.InnerProduct(n.pool5, num_output=1000)
    n.prob = L.Softmax(n.fc1000)
    shapes = {"conv1": (1, 64, 112, 112), "pool1": (1, 64, 56, 56), "res2c": (1, 256, 56, 56),
              "res3a": (1, 512, 28, 28), "res4f": (1, 1024, 14, 14), "res5c": (1, 2048, 7, 7),
              "pool5": (1, 2048, 1, 1), "prob": (1, 1000)}
    return n, shapes


def squeezenet11() -> tuple[NetSpec, dict]:
    """SqueezeNet v1.1 (Iandola et al., DeepScale/SqueezeNet deploy.prototxt): fire modules, global average pool."""
    n = NetSpec()
    _input(n, 227)
    n.conv1 = conv(n.data, 64, 3, stride=2, filler=dict(type="xavier"))
    n.relu_conv1 = L.ReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu_conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    top = n.pool1
    fires = [(2, 16, 64), (3, 16, 64), "pool3", (4, 32, 128), (5, 32, 128), "pool5", (6, 48, 192), (7, 48, 192),
             (8, 64, 256), (9, 64, 256)]
    for spec in fires:
        if isinstance(spec, str):
            setattr(n, spec, L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2))
            top = getattr(n, spec)
            continue
        i, squeeze, expand = spec
        f = f"fire{i}"
        n[f"{f}/squeeze1x1"] = conv(top, squeeze, 1, filler=dict(type="xavier"))
        n[f"{f}/relu_squeeze1x1"] = L.ReLU(n[f"{f}/squeeze1x1"], in_place=True)
        s = n[f"{f}/relu_squeeze1x1"]
        n[f"{f}/expand1x1"] = conv(s, expand, 1, filler=dict(type="xavier"))
        n[f"{f}/relu_expand1x1"] = L.ReLU(n[f"{f}/expand1x1"], in_place=True)
        n[f"{f}/expand3x3"] = conv(s, expand, 3, pad=1, filler=dict(type="xavier"))
        n[f"{f}/relu_expand3x3"] = L.ReLU(n[f"{f}/expand3x3"], in_place=True)
        n[f"{f}/concat"] = L.Concat(n[f"{f}/relu_expand1x1"], n[f"{f}/relu_expand3x3"])
        top = n[f"{f}/concat"]
    n.drop9 = L.Dropout(top, in_place=True, dropout_ratio=0.5)
    n.conv10 = conv(n.drop9, 1000, 1, filler=dict(type="gaussian", mean=0.0, std=0.01))
    n.relu_conv10 = L.ReLU(n.conv10, in_place=True)
    n.pool10 = L.Pooling(n.relu_conv10, pool=P.Pooling.AVE, global_pooling=True)
    n.prob = L.Softmax(n.pool10)
    shapes = {"conv1": (1, 64, 113, 113), "pool1": (1, 64, 56, 56), "fire2/concat": (1, 128, 56, 56),
              "pool3": (1, 128, 28, 28), "pool5": (1, 256, 14, 14), "fire9/concat": (1, 512, 14, 14),
              "conv10": (1, 1000, 14, 14), "pool10": (1, 1000, 1, 1), "prob": (1, 1000, 1, 1)}
    return n, shapes


def mobilenet_v1() -> tuple[NetSpec, dict]:
    """MobileNet v1 1.0/224 (Howard et al.; the shicai/MobileNet-Caffe deploy layout): depthwise 3x3
    convolutions (group = channels) each followed by a 1x1 pointwise convolution, BatchNorm + Scale + ReLU."""
    n = NetSpec()
    _input(n, 224)
    n.conv1 = conv(n.data, 32, 3, stride=2, pad=1, bias=False)
    top = _bn_scale(n, n.conv1, "_conv1", relu=True)
    channels = 32
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for i, (width, stride) in enumerate(plan, start=2):
        dw, pw = f"conv{i}_dw", f"conv{i}_pw"
        setattr(n, dw, conv(top, channels, 3, stride=stride, pad=1, group=channels, bias=False))
        top = _bn_scale(n, getattr(n, dw), f"_{dw}", relu=True)
        setattr(n, pw, conv(top, width, 1, bias=False))
        top = _bn_scale(n, getattr(n, pw), f"_{pw}", relu=True)
        channels = width
    n.pool6 = L.Pooling(top, pool=P.Pooling.AVE, global_pooling=True)
    n.fc7 = conv(n.pool6, 1000, 1)
    n.prob = L.Softmax(n.fc7)
    shapes = {"conv1": (1, 32, 112, 112), "conv2_dw": (1, 32, 112, 112), "conv4_dw": (1, 128, 56, 56),
              "conv7_pw": (1, 512, 14, 14), "conv14_pw": (1, 1024, 7, 7), "pool6": (1, 1024, 1, 1),
              "prob": (1, 1000, 1, 1)}
    return n, shapes


def googlenet() -> tuple[NetSpec, dict]:
    """BVLC GoogLeNet (models/bvlc_googlenet/deploy.prototxt; Szegedy et al. 2014): inception modules of 1x1,
    3x3 and 5x5 convolutions and a pooled projection, concatenated; LRN after the stem; global 7x7 average pool."""
    n = NetSpec()
    _input(n, 224)
    xav = dict(type="xavier")

    def cr(bottom, name, num, k, stride=1, pad=0):
        n[name] = conv(bottom, num, k, stride=stride, pad=pad, filler=xav)
        relu = name.rsplit("/", 1)[0] + "/relu_" + name.rsplit("/", 1)[1] if "/" in name else name + "_relu"
        n[relu] = L.ReLU(n[name], in_place=True)
        return n[relu]

    top = cr(n.data, "conv1/7x7_s2", 64, 7, stride=2, pad=3)
    n["pool1/3x3_s2"] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n["pool1/norm1"] = L.LRN(n["pool1/3x3_s2"], local_size=5, alpha=1e-4, beta=0.75)
    top = cr(n["pool1/norm1"], "conv2/3x3_reduce", 64, 1)
    top = cr(top, "conv2/3x3", 192, 3, pad=1)
    n["conv2/norm2"] = L.LRN(top, local_size=5, alpha=1e-4, beta=0.75)
    n["pool2/3x3_s2"] = L.Pooling(n["conv2/norm2"], pool=P.Pooling.MAX, kernel_size=3, stride=2)
    top = n["pool2/3x3_s2"]
    modules = [("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "pool3",
               ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64), ("4c", 128, 128, 256, 24, 64, 64),
               ("4d", 112, 144, 288, 32, 64, 64), ("4e", 256, 160, 320, 32, 128, 128), "pool4",
               ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128)]
    for m in modules:
        if isinstance(m, str):
            n[f"{m}/3x3_s2"] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2)
            top = n[f"{m}/3x3_s2"]
            continue
        tag, c1, r3, c3, r5, c5, pp = m
        base = f"inception_{tag}"
        b1 = cr(top, f"{base}/1x1", c1, 1)
        b3 = cr(cr(top, f"{base}/3x3_reduce", r3, 1), f"{base}/3x3", c3, 3, pad=1)
        b5 = cr(cr(top, f"{base}/5x5_reduce", r5, 1), f"{base}/5x5", c5, 5, pad=2)
        n[f"{base}/pool"] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
        bp = cr(n[f"{base}/pool"], f"{base}/pool_proj", pp, 1)
        n[f"{base}/output"] = L.Concat(b1, b3, b5, bp)
        top = n[f"{base}/output"]
    n["pool5/7x7_s1"] = L.Pooling(top, pool=P.Pooling.AVE, kernel_size=7, stride=1)
    n["pool5/drop_7x7_s1"] = L.Dropout(n["pool5/7x7_s1"], in_place=True, dropout_ratio=0.4)
    n["loss3/classifier"] = L.InnerProduct(n["pool5/drop_7x7_s1"], num_output=1000, weight_filler=xav,
                                           bias_filler=dict(type="constant"))
    n.prob = L.Softmax(n["loss3/classifier"])
    shapes = {"conv1/7x7_s2": (1, 64, 112, 112), "pool1/3x3_s2": (1, 64, 56, 56), "pool2/3x3_s2": (1, 192, 28, 28),
              "inception_3a/output": (1, 256, 28, 28), "inception_3b/output": (1, 480, 28, 28),
              "pool3/3x3_s2": (1, 480, 14, 14), "inception_4e/output": (1, 832, 14, 14),
              "pool4/3x3_s2": (1, 832, 7, 7), "inception_5b/output": (1, 1024, 7, 7), "pool5/7x7_s1": (1, 1024, 1, 1),
              "prob": (1, 1000)}
    return n, shapes


NETS = {"caffenet": (caffenet, "CaffeNet"), "googlenet": (googlenet, "GoogleNet"), "vgg16": (vgg16, "VGG_ILSVRC_16_layers"),
        "resnet50": (resnet50, "ResNet-50"), "squeezenet1.1": (squeezenet11, "SqueezeNet_v1.1"),
        "mobilenet_v1": (mobilenet_v1, "MobileNet-v1")}


def render(key: str) -> tuple[str, dict]:
    build, name = NETS[key]
    spec, shapes = build()
    param = spec.to_proto()
    param.name = name
    header = f"# Generated by zoo/generate.py ({key}); do not edit by hand.\n"
    return header + str(param), shapes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    for key in NETS:
        text, _ = render(key)
        path = ROOT / key / "deploy.prototxt"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print("stale: " + ", ".join(stale) + " (run python zoo/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
