"""Write the zoo's generated prototxts with caffelike's NetSpec: the BVLC model-zoo nets (CaffeNet, AlexNet,
GoogLeNet, R-CNN ILSVRC13, Flickr Style) with their deploy, train_val and solver files, NVIDIA DIGITS' standard
AlexNet and GoogLeNet, and the deploy nets of VGG-16, ResNet-50, SqueezeNet 1.1 and MobileNet v1, each as its
authors published it for Caffe.

    python zoo/generate.py            # rewrites every file listed in FILES
    python zoo/generate.py --check    # exit 1 if a committed file differs from what this script writes

What the tests check these files against lives in tests/zoo_shapes.py, written without caffelike's layers.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from caffelike.proto import caffe_pb2
from caffelike.zoo.build_helpers import (
    IMAGENET_MEAN,
    IMAGENET_TRAIN_LMDB,
    IMAGENET_VAL_LMDB,
    conv,
    input_layer,
    mults,
    named,
    with_second_data_layer,
)
from caffelike.zoo.googlenet_nets import (
    digits_googlenet,
    googlenet_deploy,
    googlenet_train_val,
)

from caffelike.net_spec import NetSpec
from caffelike.net_spec import layers as L
from caffelike.net_spec import params as P

ROOT = pathlib.Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------ CaffeNet and AlexNet
def _alexnet_body(n: NetSpec, bottom, *, lrn_first: bool, style: str, bias: float = 1.0, head: str = "fc8",
                  head_outputs: int | None = 1000, head_lr=(1, 2)):
    """conv1..fc7 and the classifier of BVLC's CaffeNet (pool before LRN) or AlexNet (`lrn_first`: LRN before
    pool).  style: "bare" (no param, no filler: CaffeNet's and R-CNN's deploy), "mults" (param multipliers only:
    AlexNet's deploy) or "full" (multipliers and fillers: train_val files).  `bias` is the constant BVLC starts
    conv2, conv4, conv5, fc6 and fc7 at: 1 in CaffeNet, 0.1 in AlexNet."""

    def learned(kind, bottom, num_output, std, bias_value, lr=(1, 2), **geometry):
        kw = dict(geometry)
        if num_output is not None:
            kw["num_output"] = num_output
        if style in ("mults", "full"):
            kw["param"] = mults(lr)
        if style == "full":
            kw["weight_filler"] = dict(type="gaussian", std=std)
            kw["bias_filler"] = dict(type="constant", value=bias_value)
        return getattr(L, kind)(bottom, **kw)

    def pool(bottom):
        return L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=3, stride=2)

    def lrn(bottom):
        return L.LRN(bottom, local_size=5, alpha=0.0001, beta=0.75)

    top = bottom
    convs = [(1, 96, 0.0, dict(kernel_size=11, stride=4)), (2, 256, bias, dict(pad=2, kernel_size=5, group=2)),
             (3, 384, 0.0, dict(pad=1, kernel_size=3)), (4, 384, bias, dict(pad=1, kernel_size=3, group=2)),
             (5, 256, bias, dict(pad=1, kernel_size=3, group=2))]
    for i, width, bias_value, geometry in convs:
        n[f"conv{i}"] = learned("Convolution", top, width, 0.01, bias_value, **geometry)
        n[f"relu{i}"] = L.ReLU(n[f"conv{i}"], in_place=True)
        top = n[f"relu{i}"]
        if i in (1, 2):
            if lrn_first:
                n[f"norm{i}"] = lrn(top)
                n[f"pool{i}"] = pool(n[f"norm{i}"])
                top = n[f"pool{i}"]
            else:
                n[f"pool{i}"] = pool(top)
                n[f"norm{i}"] = lrn(n[f"pool{i}"])
                top = n[f"norm{i}"]
    n.pool5 = pool(top)
    top = n.pool5
    for i in (6, 7):
        n[f"fc{i}"] = learned("InnerProduct", top, 4096, 0.005, bias)
        n[f"relu{i}"] = L.ReLU(n[f"fc{i}"], in_place=True)
        n[f"drop{i}"] = L.Dropout(n[f"relu{i}"], in_place=True, dropout_ratio=0.5)
        top = n[f"drop{i}"]
    n[head] = learned("InnerProduct", top, head_outputs, 0.01, 0.0, lr=head_lr)
    return n[head]


def _imagenet_data(n: NetSpec, phase: str, batch_size: int, mirror: bool) -> None:
    n.data, n.label = L.Data(include=dict(phase=phase), ntop=2, source=IMAGENET_TRAIN_LMDB if phase == "TRAIN"
                             else IMAGENET_VAL_LMDB, batch_size=batch_size, backend=P.Data.LMDB,
                             transform_param=dict(mirror=mirror, crop_size=227, mean_file=IMAGENET_MEAN))


def _imagenet_train_val(name: str, *, lrn_first: bool, bias: float) -> caffe_pb2.NetParameter:
    """BVLC's CaffeNet/AlexNet train_val: LMDB data (mirror and crop 227 in TRAIN, batch 256; batch 50 in TEST)
    less the ImageNet mean image, SoftmaxWithLoss, and Accuracy in TEST."""
    n, test = NetSpec(), NetSpec()
    _imagenet_data(n, "TRAIN", 256, True)
    _imagenet_data(test, "TEST", 50, False)
    fc8 = _alexnet_body(n, n.data, lrn_first=lrn_first, style="full", bias=bias)
    n.accuracy = L.Accuracy(fc8, n.label, include=dict(phase="TEST"))
    n.loss = L.SoftmaxWithLoss(fc8, n.label)
    return with_second_data_layer(n, test, name)


def caffenet_deploy() -> caffe_pb2.NetParameter:
    """BVLC Reference CaffeNet (models/bvlc_reference_caffenet/deploy.prototxt): AlexNet with pooling before LRN;
    no multipliers or fillers, as BVLC's deploy file."""
    n = NetSpec()
    input_layer(n, 227, batch=10)
    n.prob = L.Softmax(_alexnet_body(n, n.data, lrn_first=False, style="bare"))
    return named(n, "CaffeNet")


def caffenet_train_val() -> caffe_pb2.NetParameter:
    return _imagenet_train_val("CaffeNet", lrn_first=False, bias=1.0)


def alexnet_deploy() -> caffe_pb2.NetParameter:
    """BVLC AlexNet (models/bvlc_alexnet/deploy.prototxt): LRN before pooling; multipliers kept, no fillers."""
    n = NetSpec()
    input_layer(n, 227, batch=10)
    n.prob = L.Softmax(_alexnet_body(n, n.data, lrn_first=True, style="mults"))
    return named(n, "AlexNet")


def alexnet_train_val() -> caffe_pb2.NetParameter:
    return _imagenet_train_val("AlexNet", lrn_first=True, bias=0.1)


def rcnn_deploy() -> caffe_pb2.NetParameter:
    """BVLC's R-CNN ILSVRC13 (models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt): the CaffeNet body with fc-rcnn,
    200 detector scores made from the R-CNN SVMs, and no Softmax."""
    n = NetSpec()
    input_layer(n, 227, batch=10)
    _alexnet_body(n, n.data, lrn_first=False, style="bare", head="fc-rcnn", head_outputs=200)
    return named(n, "R-CNN-ilsvrc13")


FLICKR_HEAD = dict(head="fc8_flickr", head_outputs=20, head_lr=(10, 20))


def flickr_deploy() -> caffe_pb2.NetParameter:
    """BVLC's Flickr Style fine-tuning (models/finetune_flickr_style/deploy.prototxt): CaffeNet with fc8_flickr,
    20 style classes, learning 10x (weights) and 20x (biases) faster than the pre-trained layers."""
    n = NetSpec()
    input_layer(n, 227, batch=10)
    n.prob = L.Softmax(_alexnet_body(n, n.data, lrn_first=False, style="full", **FLICKR_HEAD))
    return named(n, "FlickrStyleCaffeNet")


def _flickr_data(n: NetSpec, phase: str, mirror: bool) -> None:
    n.data, n.label = L.ImageData(include=dict(phase=phase), ntop=2,
                                  source="train.txt" if phase == "TRAIN" else "test.txt", batch_size=50,
                                  new_height=256, new_width=256,
                                  transform_param=dict(mirror=mirror, crop_size=227, mean_file=IMAGENET_MEAN))


def flickr_train_val() -> caffe_pb2.NetParameter:
    """CaffeNet's train_val with ImageData (image lists, resized to 256x256, batch 50) and fc8_flickr."""
    n, test = NetSpec(), NetSpec()
    _flickr_data(n, "TRAIN", True)
    _flickr_data(test, "TEST", False)
    fc8 = _alexnet_body(n, n.data, lrn_first=False, style="full", **FLICKR_HEAD)
    n.accuracy = L.Accuracy(fc8, n.label, include=dict(phase="TEST"))
    n.loss = L.SoftmaxWithLoss(fc8, n.label)
    return with_second_data_layer(n, test, "FlickrStyleCaffeNet")


def digits_alexnet() -> caffe_pb2.NetParameter:
    """DIGITS' standard AlexNet (digits/standard-networks/caffe/alexnet.prototxt): BVLC's AlexNet train_val with
    stage-selected data layers (no sources: DIGITS fills them), fc8's num_output left for DIGITS to set to the
    number of classes, Accuracy in stage val, the loss outside deploy and a Softmax in deploy."""
    n, val = NetSpec(), NetSpec()
    n.data, n.label = L.Data(name="train-data", ntop=2, batch_size=128, include=dict(stage="train"),
                             transform_param=dict(mirror=True, crop_size=227))
    val.data, val.label = L.Data(name="val-data", ntop=2, batch_size=32, include=dict(stage="val"),
                                 transform_param=dict(crop_size=227))
    fc8 = _alexnet_body(n, n.data, lrn_first=True, style="full", bias=0.1, head_outputs=None)
    n.accuracy = L.Accuracy(fc8, n.label, include=dict(stage="val"))
    n.loss = L.SoftmaxWithLoss(fc8, n.label, exclude=dict(stage="deploy"))
    n.softmax = L.Softmax(fc8, include=dict(stage="deploy"))
    return with_second_data_layer(n, val, "AlexNet")


# ----------------------------------------------------------------------------------- other deploy-only nets
def vgg16() -> caffe_pb2.NetParameter:
    """VGG-16 (Simonyan & Zisserman, VGG_ILSVRC_16_layers_deploy.prototxt): 13 3x3 convs, 3 FC layers."""
    n = NetSpec()
    input_layer(n, 224)
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
    return named(n, "VGG_ILSVRC_16_layers")


def _bn_scale(n: NetSpec, bottom, name: str, relu: bool):
    """BatchNorm (statistics, lr_mult 0) + Scale with bias, in place, as ResNet's Caffe release writes them."""
    setattr(n, f"bn{name}", L.BatchNorm(bottom, in_place=True, batch_norm_param=dict(use_global_stats=True)))
    setattr(n, f"scale{name}", L.Scale(getattr(n, f"bn{name}"), in_place=True, bias_term=True))
    top = getattr(n, f"scale{name}")
    if relu:
        setattr(n, f"{name}_relu", L.ReLU(top, in_place=True))
        top = getattr(n, f"{name}_relu")
    return top


def resnet50() -> caffe_pb2.NetParameter:
    """ResNet-50 (He et al., KaimingHe/deep-residual-networks ResNet-50-deploy.prototxt): bottleneck blocks with
    BatchNorm + Scale, projection shortcuts at the first block of each stage."""
    n = NetSpec()
    input_layer(n, 224)
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
    return named(n, "ResNet-50")


def squeezenet11() -> caffe_pb2.NetParameter:
    """SqueezeNet v1.1 (Iandola et al., DeepScale/SqueezeNet deploy.prototxt): fire modules, global average pool."""
    n = NetSpec()
    input_layer(n, 227)
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
    return named(n, "SqueezeNet_v1.1")


def mobilenet_v1() -> caffe_pb2.NetParameter:
    """MobileNet v1 1.0/224 (Howard et al.; the shicai/MobileNet-Caffe deploy layout): depthwise 3x3
    convolutions (group = channels) each followed by a 1x1 pointwise convolution, BatchNorm + Scale + ReLU."""
    n = NetSpec()
    input_layer(n, 224)
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
    return named(n, "MobileNet-v1")


# --------------------------------------------------------------------------------------------------- solvers
def _step_solver(prefix: str, **overrides) -> caffe_pb2.SolverParameter:
    """BVLC's ImageNet recipe for CaffeNet and AlexNet: SGD, lr 0.01 divided by 10 every 100,000 iterations,
    momentum 0.9, weight decay 5e-4, 450,000 iterations, a 1,000-batch test every 1,000."""
    fields = dict(net="train_val.prototxt", test_iter=[1000], test_interval=1000, base_lr=0.01, lr_policy="step",
                  gamma=0.1, stepsize=100000, display=20, max_iter=450000, momentum=0.9, weight_decay=0.0005,
                  snapshot=10000, snapshot_prefix=prefix, solver_mode=caffe_pb2.SolverParameter.GPU)
    fields.update(overrides)
    return caffe_pb2.SolverParameter(**{k: v for k, v in fields.items() if v is not None})


def caffenet_solver():
    return _step_solver("caffenet_train")


def alexnet_solver():
    return _step_solver("caffe_alexnet_train")


def flickr_solver():
    # Fine-tuning: a tenth of the rate, stepped 5x sooner; BVLC leaves solver_mode at its default (GPU).
    return _step_solver("finetune_flickr_style", test_iter=[100], base_lr=0.001, stepsize=20000,
                        max_iter=100000, solver_mode=None)


def _googlenet_solver(prefix: str, **schedule) -> caffe_pb2.SolverParameter:
    return caffe_pb2.SolverParameter(net="train_val.prototxt", test_iter=[1000], test_interval=4000,
                                     test_initialization=False, display=40, average_loss=40, base_lr=0.01,
                                     max_iter=schedule.pop("max_iter"), momentum=0.9, weight_decay=0.0002,
                                     snapshot=40000, snapshot_prefix=prefix,
                                     solver_mode=caffe_pb2.SolverParameter.GPU, **schedule)


def googlenet_solver():
    return _googlenet_solver("bvlc_googlenet", lr_policy="step", stepsize=320000, gamma=0.96, max_iter=10000000)


def googlenet_quick_solver():
    return _googlenet_solver("bvlc_googlenet_quick", lr_policy="poly", power=0.5, max_iter=2400000)


# ------------------------------------------------------------------------------------------------- the files
# relative path -> builder.  The deploy files of the nets that had no other file keep their one-word labels.
FILES = {
    "caffenet/deploy.prototxt": caffenet_deploy,
    "caffenet/train_val.prototxt": caffenet_train_val,
    "caffenet/solver.prototxt": caffenet_solver,
    "alexnet/deploy.prototxt": alexnet_deploy,
    "alexnet/train_val.prototxt": alexnet_train_val,
    "alexnet/solver.prototxt": alexnet_solver,
    "googlenet/deploy.prototxt": googlenet_deploy,
    "googlenet/train_val.prototxt": googlenet_train_val,
    "googlenet/solver.prototxt": googlenet_solver,
    "googlenet/quick_solver.prototxt": googlenet_quick_solver,
    "rcnn_ilsvrc13/deploy.prototxt": rcnn_deploy,
    "flickr_style/deploy.prototxt": flickr_deploy,
    "flickr_style/train_val.prototxt": flickr_train_val,
    "flickr_style/solver.prototxt": flickr_solver,
    "digits-alexnet/alexnet.prototxt": digits_alexnet,
    "digits-googlenet/googlenet.prototxt": digits_googlenet,
    "vgg16/deploy.prototxt": vgg16,
    "resnet50/deploy.prototxt": resnet50,
    "squeezenet1.1/deploy.prototxt": squeezenet11,
    "mobilenet_v1/deploy.prototxt": mobilenet_v1,
}

NOTES = {
    "caffenet/solver.prototxt": "BVLC's models/bvlc_reference_caffenet/solver.prototxt; paths relative to this folder.",
    "alexnet/solver.prototxt": "BVLC's models/bvlc_alexnet/solver.prototxt; paths relative to this folder.",
    "googlenet/solver.prototxt": "BVLC's models/bvlc_googlenet/solver.prototxt; paths relative to this folder.",
    "googlenet/quick_solver.prototxt": "BVLC's models/bvlc_googlenet/quick_solver.prototxt: the poly schedule, "
                                       "4x fewer iterations.",
    "flickr_style/solver.prototxt": "BVLC's models/finetune_flickr_style/solver.prototxt; start from CaffeNet's "
                                    "weights (--weights).",
    "digits-alexnet/alexnet.prototxt": "DIGITS fills the data sources, the mean and fc8's num_output (the number "
                                       "of classes).",
    "digits-googlenet/googlenet.prototxt": "DIGITS fills the data sources, the mean and the three classifiers' "
                                           "num_output (the number of classes).",
}

NET_FILES = [p for p in FILES if not p.endswith("solver.prototxt")]
SOLVER_FILES = [p for p in FILES if p.endswith("solver.prototxt")]


def build(path: str):
    """The message (NetParameter or SolverParameter) FILES[path] describes."""
    return FILES[path]()


def render(path: str) -> str:
    folder, name = path.split("/")
    label = folder if name == "deploy.prototxt" else path
    header = f"# Generated by zoo/generate.py ({label}); do not edit by hand.\n"
    if path in NOTES:
        header += f"# {NOTES[path]}\n"
    return header + str(build(path))


# ---------------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    stale = []
    for rel in FILES:
        text = render(rel)
        path = ROOT / rel
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
