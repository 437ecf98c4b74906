"""The benchmark's zoo nets written by hand in PyTorch, the way one would write them without caffelike.

Each module's parts carry the Caffe layer names ("conv1", and "inception_3a.1x1" for "inception_3a/1x1"), so
`load_from(net)` copies caffelike's parameters by layer name and `check_against(net, ...)` compares every blob
the two compute.  Caffe's semantics, kept by hand: max and average pooling round up (ceil_mode=True; Caffe's
average divisor clips the window at the padded border, as torch's does), LRN is torch's local_response_norm
(k + alpha / size * sum of squares across `size` channels, Caffe's ACROSS_CHANNELS; `check_lrn` verifies it
numerically), grouped convolutions use `groups`, GoogLeNet's branches are concatenated on the channel axis,
and dropout is off in TEST (the modules are used in eval mode).  ReLUs run in place, as torchvision writes them.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, groups=groups)


def relu() -> nn.ReLU:
    return nn.ReLU(inplace=True)


def max_pool(k: int, stride: int, pad: int = 0) -> nn.MaxPool2d:
    return nn.MaxPool2d(k, stride, pad, ceil_mode=True)


def lrn(size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size, alpha, beta, k)


class LeNet(nn.Module):
    """zoo/lenet/lenet.prototxt: input (N, 1, 28, 28)."""

    logits = "ip2"

    def __init__(self):
        super().__init__()
        self.conv1 = conv(1, 20, 5)
        self.pool1 = max_pool(2, 2)
        self.conv2 = conv(20, 50, 5)
        self.pool2 = max_pool(2, 2)
        self.ip1 = nn.Linear(800, 500)
        self.relu1 = relu()
        self.ip2 = nn.Linear(500, 10)
        self.prob = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        x = self.relu1(self.ip1(x.flatten(1)))
        return self.prob(self.ip2(x))


class Cifar10Quick(nn.Module):
    """zoo/cifar10_quick/cifar10_quick.prototxt: input (N, 3, 32, 32)."""

    logits = "ip2"

    def __init__(self):
        super().__init__()
        self.conv1 = conv(3, 32, 5, pad=2)
        self.pool1 = max_pool(3, 2)
        self.relu1 = relu()
        self.conv2 = conv(32, 32, 5, pad=2)
        self.relu2 = relu()
        self.pool2 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.conv3 = conv(32, 64, 5, pad=2)
        self.relu3 = relu()
        self.pool3 = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.ip1 = nn.Linear(64 * 4 * 4, 64)
        self.ip2 = nn.Linear(64, 10)
        self.prob = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.relu1(self.pool1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.pool3(self.relu3(self.conv3(x)))
        return self.prob(self.ip2(self.ip1(x.flatten(1))))


class CaffeNet(nn.Module):
    """zoo/caffenet/deploy.prototxt (AlexNet with pooling before LRN): input (N, 3, 227, 227)."""

    logits = "fc8"

    def __init__(self):
        super().__init__()
        self.conv1, self.relu1, self.pool1, self.norm1 = conv(3, 96, 11, stride=4), relu(), max_pool(3, 2), lrn()
        self.conv2, self.relu2, self.pool2, self.norm2 = conv(96, 256, 5, pad=2, groups=2), relu(), max_pool(3, 2), lrn()
        self.conv3, self.relu3 = conv(256, 384, 3, pad=1), relu()
        self.conv4, self.relu4 = conv(384, 384, 3, pad=1, groups=2), relu()
        self.conv5, self.relu5, self.pool5 = conv(384, 256, 3, pad=1, groups=2), relu(), max_pool(3, 2)
        self.fc6, self.relu6, self.drop6 = nn.Linear(256 * 6 * 6, 4096), relu(), nn.Dropout(0.5)
        self.fc7, self.relu7, self.drop7 = nn.Linear(4096, 4096), relu(), nn.Dropout(0.5)
        self.fc8 = nn.Linear(4096, 1000)
        self.prob = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        x = self.norm2(self.pool2(self.relu2(self.conv2(x))))
        x = self.relu3(self.conv3(x))
        x = self.relu4(self.conv4(x))
        x = self.pool5(self.relu5(self.conv5(x)))
        x = self.drop6(self.relu6(self.fc6(x.flatten(1))))
        x = self.drop7(self.relu7(self.fc7(x)))
        return self.prob(self.fc8(x))


class Inception(nn.Module):
    """GoogLeNet's inception block: 1x1, 1x1 -> 3x3, 1x1 -> 5x5 and 3x3 max pool -> 1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int):
        super().__init__()
        parts = [("1x1", conv(cin, c1, 1)), ("relu_1x1", relu()),
                 ("3x3_reduce", conv(cin, c3r, 1)), ("relu_3x3_reduce", relu()),
                 ("3x3", conv(c3r, c3, 3, pad=1)), ("relu_3x3", relu()),
                 ("5x5_reduce", conv(cin, c5r, 1)), ("relu_5x5_reduce", relu()),
                 ("5x5", conv(c5r, c5, 5, pad=2)), ("relu_5x5", relu()),
                 ("pool", max_pool(3, 1, 1)),
                 ("pool_proj", conv(cin, pool_proj, 1)), ("relu_pool_proj", relu())]
        for name, module in parts:  # Caffe's names ("3x3") are not Python identifiers
            self.add_module(name, module)

    def forward(self, x):
        m = self._modules
        b1 = m["relu_1x1"](m["1x1"](x))
        b3 = m["relu_3x3"](m["3x3"](m["relu_3x3_reduce"](m["3x3_reduce"](x))))
        b5 = m["relu_5x5"](m["5x5"](m["relu_5x5_reduce"](m["5x5_reduce"](x))))
        bp = m["relu_pool_proj"](m["pool_proj"](m["pool"](x)))
        return torch.cat([b1, b3, b5, bp], 1)


def stage(*parts) -> nn.Sequential:
    return nn.Sequential(OrderedDict(parts))


class GoogLeNet(nn.Module):
    """zoo/googlenet/deploy.prototxt (BVLC GoogLeNet without the auxiliary heads): input (N, 3, 224, 224)."""

    logits = "loss3/classifier"

    def __init__(self):
        super().__init__()
        self.conv1 = stage(("7x7_s2", conv(3, 64, 7, stride=2, pad=3)), ("relu_7x7", relu()))
        self.pool1 = stage(("3x3_s2", max_pool(3, 2)), ("norm1", lrn()))
        self.conv2 = stage(("3x3_reduce", conv(64, 64, 1)), ("relu_3x3_reduce", relu()),
                           ("3x3", conv(64, 192, 3, pad=1)), ("relu_3x3", relu()), ("norm2", lrn()))
        self.pool2 = stage(("3x3_s2", max_pool(3, 2)))
        self.inception_3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception_3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.pool3 = stage(("3x3_s2", max_pool(3, 2)))
        self.inception_4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception_4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception_4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception_4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception_4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.pool4 = stage(("3x3_s2", max_pool(3, 2)))
        self.inception_5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception_5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.pool5 = stage(("7x7_s1", nn.AvgPool2d(7, 1, ceil_mode=True)), ("drop_7x7_s1", nn.Dropout(0.4)))
        self.loss3 = stage(("classifier", nn.Linear(1024, 1000)))
        self.prob = nn.Softmax(dim=1)

    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        x = self.pool3(self.inception_3b(self.inception_3a(x)))
        x = self.inception_4c(self.inception_4b(self.inception_4a(x)))
        x = self.pool4(self.inception_4e(self.inception_4d(x)))
        x = self.pool5(self.inception_5b(self.inception_5a(x)))
        return self.prob(self.loss3(x.flatten(1)))


MODULES = {"lenet": LeNet, "cifar10_quick": Cifar10Quick, "caffenet": CaffeNet, "googlenet": GoogLeNet}


def caffe_layer(module_name: str) -> str:
    """The Caffe layer a part stands for: "inception_3a.1x1" -> "inception_3a/1x1"."""
    return module_name.replace(".", "/")


def _caffe_layers(net) -> dict:
    return {layer.layer_name: layer for layer in net.layer_list}


def load_from(hand: nn.Module, net) -> nn.Module:
    """Copy caffelike's parameters into `hand` by layer name (weight = blob 0, bias = blob 1); every
    parameterised layer of the net must be used, with the same shapes."""
    layers = _caffe_layers(net)
    used = set()
    with torch.no_grad():
        for name, module in hand.named_modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            caffe_name = caffe_layer(name)
            if caffe_name not in layers:
                raise KeyError(f"{type(hand).__name__}.{name}: the net has no layer {caffe_name!r}")
            blobs = layers[caffe_name].blobs
            for attr, blob in zip(("weight", "bias"), blobs):
                target = getattr(module, attr)
                if tuple(target.shape) != tuple(blob.shape):
                    raise ValueError(f"{type(hand).__name__}.{name}.{attr} has shape {tuple(target.shape)}, Caffe "
                                     f"layer {caffe_name!r} blob has {tuple(blob.shape)}")
                target.copy_(blob.detach())
            used.add(caffe_name)
    missing = [n for n, layer in layers.items() if len(layer.blobs) and n not in used]
    if missing:
        raise KeyError(f"{type(hand).__name__} has no part for the net's layers {missing}")
    return hand.eval()


def close_enough(a: torch.Tensor, b: torch.Tensor, rtol: float) -> tuple[bool, float]:
    """allclose with an absolute tolerance scaled to the reference's magnitude; also the max abs difference."""
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-6))), diff


def check_against(net, hand: nn.Module, x: torch.Tensor, rtol: float = 1e-3) -> dict:
    """Run both on `x` and compare every blob after its last writer (in-place layers overwrite their bottom), each
    against the output of `hand`'s part of that layer's name, plus the outputs.  Every layer but Input and Split
    must have its part.  Raises AssertionError, with the layer and the numbers, on the first mismatch in shape
    or value; returns what was compared."""
    last_writer = {}
    for layer, plan in zip(net.layer_list, net.plans):
        for top in plan.tops:
            last_writer[top] = layer.layer_name
    wanted = {writer: top for top, writer in last_writer.items()}
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in hand.named_modules():
        caffe_name = caffe_layer(name)
        if name and caffe_name not in wanted and caffe_name + "/output" in wanted:
            caffe_name += "/output"  # an inception block's concatenation
        if name and caffe_name in wanted:
            hooks.append(module.register_forward_hook(
                lambda m, i, out, key=caffe_name: seen.__setitem__(key, out.detach().clone())))
    failure = None
    try:
        with torch.no_grad():
            outs = net(data=x)
            try:
                mine = hand(x)
            except Exception as e:  # noqa: BLE001 - a wrong shape surfaces later; name the first bad blob
                failure = e
    finally:
        for h in hooks:
            h.remove()
    worst = 0.0
    for layer_name, blob in wanted.items():  # in the net's order: the first mismatch is the one to fix
        if layer_name not in seen:
            continue
        value = seen[layer_name]
        ref = net.blobs[blob].tensor.detach()
        if tuple(value.shape) != tuple(ref.shape):
            raise AssertionError(f"{type(hand).__name__}: layer {layer_name!r} gives blob {blob!r} of shape "
                                 f"{tuple(value.shape)}, caffelike's is {tuple(ref.shape)}")
        ok, diff = close_enough(value, ref, rtol)
        if not ok:
            raise AssertionError(f"{type(hand).__name__}: blob {blob!r} (layer {layer_name!r}) differs from "
                                 f"caffelike's by up to {diff:.3g} (max |value| {float(ref.abs().max()):.3g})")
        worst = max(worst, diff / max(float(ref.abs().max()), 1e-12))
    if failure is not None:
        raise AssertionError(f"{type(hand).__name__} failed on input {tuple(x.shape)}: {failure}") from failure
    types = {layer.layer_name: layer.type for layer in net.layer_list}
    uncovered = [n for n in wanted if n not in seen and types[n] not in ("Input", "Split")]
    if uncovered:  # a part named differently from its Caffe layer would silently go unchecked
        raise AssertionError(f"{type(hand).__name__} has no part for the net's layers {uncovered}")
    (out_name, out), = outs.items()
    ok, diff = close_enough(mine, out.detach(), rtol)
    if not ok:
        raise AssertionError(f"{type(hand).__name__}: output {out_name!r} differs by up to {diff:.3g}")
    logits = net.blobs[hand.logits].tensor.detach()
    return {"blobs_compared": len(seen), "output": out_name, "max_abs_diff_output": diff,
            "max_rel_diff_blobs": worst, "logits_std": float(logits.std()), "output_max": float(out.max()),
            "rtol": rtol}


def check_lrn(seed: int = 3) -> float:
    """Max |difference| between caffelike's LRN layer (Caffe's ACROSS_CHANNELS) and torch's
    local_response_norm on inputs large enough (|x| ~ 30) for the normalisation to matter."""
    from caffelike.layers import layer_class
    from caffelike.proto import caffe_pb2

    param = caffe_pb2.LayerParameter(name="norm", type="LRN", bottom=["x"], top=["y"])
    param.lrn_param.local_size, param.lrn_param.alpha, param.lrn_param.beta = 5, 1e-4, 0.75
    x = torch.randn((2, 16, 6, 6), generator=torch.Generator().manual_seed(seed)) * 30
    layer = layer_class("LRN")(param, caffe_pb2.TEST)
    layer.setup([tuple(x.shape)])
    with torch.no_grad():
        caffe_y = layer(x)
    torch_y = F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)
    assert not torch.allclose(torch_y, x, rtol=1e-2), "LRN input too small to test the normalisation"
    diff = float((caffe_y - torch_y).abs().max())
    assert torch.allclose(caffe_y, torch_y, rtol=1e-5, atol=1e-5), f"LRN differs from Caffe's by {diff:.3g}"
    return diff
