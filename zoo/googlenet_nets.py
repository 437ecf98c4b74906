"""The GoogLeNet family for zoo/generate.py: BVLC's bvlc_googlenet (deploy and train_val, with the two
auxiliary classifiers) and DIGITS' standard GoogLeNet."""
from __future__ import annotations

from caffelike.proto import caffe_pb2
from caffelike.zoo.build_helpers import (
    IMAGENET_TRAIN_LMDB,
    IMAGENET_VAL_LMDB,
    input_layer,
    mults,
    named,
    with_second_data_layer,
)

from caffelike.net_spec import NetSpec
from caffelike.net_spec import layers as L
from caffelike.net_spec import params as P

GOOGLENET_MODULES = [("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "pool3",
                     ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
                     ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
                     ("4e", 256, 160, 320, 32, 128, 128), "pool4", ("5a", 256, 160, 320, 32, 128, 128),
                     ("5b", 384, 192, 384, 48, 128, 128)]
AUX_HEADS = {"4a": 1, "4d": 2}  # the auxiliary classifiers branch off these modules' outputs


def _xavier(std=None):
    # BVLC writes a std into most xavier fillers; Caffe's XavierFiller ignores it, the files keep it.
    return dict(type="xavier") if std is None else dict(type="xavier", std=std)


def _googlenet_body(n: NetSpec, bottom, *, aux=None, classes: int | None = 1000):
    """BVLC GoogLeNet from the stem to loss3/classifier: every convolution xavier + bias 0.2 with BVLC's
    multipliers; `aux(n, top, k)` adds auxiliary head k after inception_4a (k=1) and inception_4d (k=2)."""

    def conv_relu(bottom, name, relu, num_output, kernel, std, pad=0, stride=1):
        kw = dict(param=mults(), num_output=num_output, kernel_size=kernel, weight_filler=_xavier(std),
                  bias_filler=dict(type="constant", value=0.2))
        if pad:
            kw["pad"] = pad
        if stride != 1:
            kw["stride"] = stride
        n[name] = L.Convolution(bottom, **kw)
        n[relu] = L.ReLU(n[name], in_place=True)
        return n[relu]

    def lrn(bottom):
        return L.LRN(bottom, local_size=5, alpha=0.0001, beta=0.75)

    top = conv_relu(bottom, "conv1/7x7_s2", "conv1/relu_7x7", 64, 7, 0.1, pad=3, stride=2)
    n["pool1/3x3_s2"] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2)
    n["pool1/norm1"] = lrn(n["pool1/3x3_s2"])
    top = conv_relu(n["pool1/norm1"], "conv2/3x3_reduce", "conv2/relu_3x3_reduce", 64, 1, 0.1)
    top = conv_relu(top, "conv2/3x3", "conv2/relu_3x3", 192, 3, 0.03, pad=1)
    n["conv2/norm2"] = lrn(top)
    n["pool2/3x3_s2"] = L.Pooling(n["conv2/norm2"], pool=P.Pooling.MAX, kernel_size=3, stride=2)
    top = n["pool2/3x3_s2"]
    for m in GOOGLENET_MODULES:
        if isinstance(m, str):
            n[f"{m}/3x3_s2"] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=2)
            top = n[f"{m}/3x3_s2"]
            continue
        tag, c1, r3, c3, r5, c5, pp = m
        b = f"inception_{tag}"
        b1 = conv_relu(top, f"{b}/1x1", f"{b}/relu_1x1", c1, 1, 0.03)
        b3 = conv_relu(top, f"{b}/3x3_reduce", f"{b}/relu_3x3_reduce", r3, 1, 0.09)
        b3 = conv_relu(b3, f"{b}/3x3", f"{b}/relu_3x3", c3, 3, 0.03, pad=1)
        b5 = conv_relu(top, f"{b}/5x5_reduce", f"{b}/relu_5x5_reduce", r5, 1, 0.2)
        b5 = conv_relu(b5, f"{b}/5x5", f"{b}/relu_5x5", c5, 5, 0.03, pad=2)
        n[f"{b}/pool"] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
        bp = conv_relu(n[f"{b}/pool"], f"{b}/pool_proj", f"{b}/relu_pool_proj", pp, 1, 0.1)
        n[f"{b}/output"] = L.Concat(b1, b3, b5, bp)
        top = n[f"{b}/output"]
        if aux is not None and tag in AUX_HEADS:
            aux(n, top, AUX_HEADS[tag])
    n["pool5/7x7_s1"] = L.Pooling(top, pool=P.Pooling.AVE, kernel_size=7, stride=1)
    n["pool5/drop_7x7_s1"] = L.Dropout(n["pool5/7x7_s1"], in_place=True, dropout_ratio=0.4)
    kw = dict(param=mults(), weight_filler=_xavier(), bias_filler=dict(type="constant", value=0))
    if classes is not None:
        kw["num_output"] = classes
    n["loss3/classifier"] = L.InnerProduct(n["pool5/drop_7x7_s1"], **kw)
    return n["loss3/classifier"]


def _aux_head(n: NetSpec, top, k: int, *, classes: int | None, rule: dict):
    """loss{k}/: 5x5/3 average pool, 1x1 conv 128, fc 1024, dropout 0.7, classifier; `rule` (DIGITS' exclude
    from deploy, or nothing) goes on each layer.  Returns the classifier's top."""
    p = f"loss{k}"
    n[f"{p}/ave_pool"] = L.Pooling(top, pool=P.Pooling.AVE, kernel_size=5, stride=3, **rule)
    n[f"{p}/conv"] = L.Convolution(n[f"{p}/ave_pool"], param=mults(), num_output=128, kernel_size=1,
                                   weight_filler=_xavier(0.08), bias_filler=dict(type="constant", value=0.2), **rule)
    n[f"{p}/relu_conv"] = L.ReLU(n[f"{p}/conv"], in_place=True, **rule)
    n[f"{p}/fc"] = L.InnerProduct(n[f"{p}/relu_conv"], param=mults(), num_output=1024, weight_filler=_xavier(0.02),
                                  bias_filler=dict(type="constant", value=0.2), **rule)
    n[f"{p}/relu_fc"] = L.ReLU(n[f"{p}/fc"], in_place=True, **rule)
    n[f"{p}/drop_fc"] = L.Dropout(n[f"{p}/relu_fc"], in_place=True, dropout_ratio=0.7, **rule)
    kw = dict(param=mults(), weight_filler=_xavier(0.0009765625), bias_filler=dict(type="constant", value=0))
    if classes is not None:
        kw["num_output"] = classes
    n[f"{p}/classifier"] = L.InnerProduct(n[f"{p}/drop_fc"], **kw, **rule)
    return n[f"{p}/classifier"]


def googlenet_deploy() -> caffe_pb2.NetParameter:
    """BVLC GoogLeNet (models/bvlc_googlenet/deploy.prototxt; Szegedy et al. 2014): inception modules of 1x1,
    3x3 and 5x5 convolutions and a pooled projection, concatenated; LRN after the stem; global 7x7 average pool;
    the auxiliary heads are training-only and absent."""
    n = NetSpec()
    input_layer(n, 224, batch=10)
    n.prob = L.Softmax(_googlenet_body(n, n.data))
    return named(n, "GoogleNet")


def _googlenet_data(n: NetSpec, phase: str, batch_size: int, mirror: bool) -> None:
    n.data, n.label = L.Data(include=dict(phase=phase), ntop=2, source=IMAGENET_TRAIN_LMDB if phase == "TRAIN"
                             else IMAGENET_VAL_LMDB, batch_size=batch_size, backend=P.Data.LMDB,
                             transform_param=dict(mirror=mirror, crop_size=224, mean_value=[104, 117, 123]))


def googlenet_train_val() -> caffe_pb2.NetParameter:
    """BVLC GoogLeNet's train_val: LMDB data less the mean pixel (104, 117, 123), crop 224, batch 32/50; two
    auxiliary heads whose losses weigh 0.3; top-1 and top-5 Accuracy of all three classifiers in TEST."""

    def scores(n, classifier, prefix, loss_weight):
        # BVLC's names, quirks kept: layers loss1/loss, loss2/loss and loss3/loss3 with tops loss1/loss1,
        # loss2/loss1 and loss3/loss3.
        name, top = ("loss3/loss3", "loss3/loss3") if prefix == "loss3" else (f"{prefix}/loss", f"{prefix}/loss1")
        n[top] = L.SoftmaxWithLoss(classifier, n.label, name=name, loss_weight=loss_weight)
        n[f"{prefix}/top-1"] = L.Accuracy(classifier, n.label, include=dict(phase="TEST"))
        n[f"{prefix}/top-5"] = L.Accuracy(classifier, n.label, include=dict(phase="TEST"), top_k=5)

    def aux(n, top, k):
        scores(n, _aux_head(n, top, k, classes=1000, rule={}), f"loss{k}", 0.3)

    n, test = NetSpec(), NetSpec()
    _googlenet_data(n, "TRAIN", 32, True)
    _googlenet_data(test, "TEST", 50, False)
    scores(n, _googlenet_body(n, n.data, aux=aux), "loss3", 1)
    return with_second_data_layer(n, test, "GoogleNet")


def digits_googlenet() -> caffe_pb2.NetParameter:
    """DIGITS' standard GoogLeNet (digits/standard-networks/caffe/googlenet.prototxt): BVLC's GoogLeNet with
    stage-selected data layers (crop 224, no mean: DIGITS adds its own), every classifier's num_output left for
    DIGITS, the auxiliary heads excluded from deploy, Accuracy in stage val and a Softmax in deploy."""
    deploy_out = dict(exclude=dict(stage="deploy"))
    in_val = dict(include=dict(stage="val"))

    def scores(n, classifier, prefix, loss_top, loss_weight, accuracy_top, rule):
        n[loss_top] = L.SoftmaxWithLoss(classifier, n.label, name=f"{prefix}/loss", loss_weight=loss_weight, **rule)
        n[accuracy_top] = L.Accuracy(classifier, n.label, name=f"{prefix}/top-1", **in_val)
        n[f"{accuracy_top}-top5"] = L.Accuracy(classifier, n.label, name=f"{prefix}/top-5", top_k=5, **in_val)

    def aux(n, top, k):
        classifier = _aux_head(n, top, k, classes=None, rule=deploy_out)
        scores(n, classifier, f"loss{k}", f"loss{k}/loss", 0.3, f"loss{k}/accuracy", deploy_out)

    n, val = NetSpec(), NetSpec()
    n.data, n.label = L.Data(name="train-data", ntop=2, batch_size=32, include=dict(stage="train"),
                             transform_param=dict(mirror=True, crop_size=224))
    val.data, val.label = L.Data(name="val-data", ntop=2, batch_size=16, include=dict(stage="val"),
                                 transform_param=dict(mirror=False, crop_size=224))
    classifier = _googlenet_body(n, n.data, aux=aux, classes=None)
    scores(n, classifier, "loss3", "loss", 1, "accuracy", deploy_out)
    n.softmax = L.Softmax(classifier, include=dict(stage="deploy"))
    return with_second_data_layer(n, val, "GoogleNet")
