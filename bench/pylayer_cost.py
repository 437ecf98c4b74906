"""What a Python layer costs: DIGITS' occlusion LeNet (zoo/digits-occlusion) on a batch of the bundled digits,
forward and forward+backward, three ways:

  none         the net without its Python layer
  BlankSquare  with the tutorial's BlankSquareLayer, a pycaffe `caffe.Layer` that works on host numpy arrays
               (caffelike copies its bottom to the host, calls reshape and forward, and copies the top back)
  TorchLayer   with BlankSquareTorch below, the same blanking as a caffelike.TorchLayer on torch tensors

The Data layers are replaced by Input layers (data, label) so only the net is timed; the loss is the net's
SoftmaxWithLoss.  Nothing below the blanking needs a gradient, so neither Python layer runs a backward: the
fwd+bwd cost of the layer is its forward.  Before timing, the two blanking layers are checked to give the
same loss when Python's `random` is seeded alike (they draw the square the same way).
"""
from __future__ import annotations

import random

import torch
from caffelike.layers.python_base import TorchLayer

from bench import timing

PROTOTXT = ("digits-occlusion", "lenet_blank_square.prototxt")  # under caffelike.zoo


class BlankSquareTorch(TorchLayer):
    """BlankSquareLayer's forward on tensors: zero one (H//2) x (W//2) square at a random position (Python's
    `random`), the same for the whole batch."""

    def forward(self, x):
        height, width = x.shape[-2:]
        side_h, side_w = height // 2, width // 2
        row, col = random.randrange(side_h), random.randrange(side_w)
        y = x.clone()
        y[..., row:row + side_h, col:col + side_w] = 0
        return y


def net_param(variant: str, batch: int):
    """The occlusion LeNet for `variant` ('none', 'BlankSquare', 'TorchLayer') with Input layers."""
    from caffelike.proto import caffe_pb2

    from caffelike import zoo
    from caffelike.format.prototxt import read_net

    source = read_net(zoo.path(*PROTOTXT))
    param = caffe_pb2.NetParameter(name=source.name)
    data = param.layer.add(name="data", type="Input", top=["data", "label"])
    data.input_param.shape.add(dim=[batch, 1, 28, 28])
    data.input_param.shape.add(dim=[batch])
    for layer in source.layer:
        if layer.type == "Data" or (layer.type == "Python" and variant == "none"):
            continue
        added = param.layer.add()
        added.CopyFrom(layer)
        if layer.type == "Python" and variant == "TorchLayer":
            added.python_param.module, added.python_param.layer = __name__, BlankSquareTorch.__name__
        if layer.name == "ip2":
            added.inner_product_param.num_output = 10  # DIGITS fills it in from the dataset's classes
    return param


def build(variant: str, batch: int):
    from caffelike.proto import caffe_pb2

    from caffelike import zoo
    from caffelike.net.graph import NetGraph

    torch.manual_seed(1701)  # the fillers: every variant starts from the same weights
    return NetGraph(net_param(variant, batch), caffe_pb2.TRAIN, stages=("train",), source=zoo.path(*PROTOTXT),
                    trust_python=True)  # the zoo's own BlankSquare module, beside its prototxt


def digits(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    from caffelike.data.bundled import mnist_5k

    images, labels = mnist_5k()
    pick = torch.linspace(0, len(images) - 1, batch).long().numpy()  # spans every class
    return (torch.from_numpy(images[pick]).float().unsqueeze(1), torch.from_numpy(labels[pick]).float())


def run(batch: int, repeat: int, warmup: int, device: str) -> dict:
    x, y = digits(batch)
    x, y = x.to(device), y.to(device)
    nets = {v: build(v, batch).to(device) for v in ("none", "BlankSquare", "TorchLayer")}

    def loss(net):
        return net.loss(net(data=x, label=y))

    losses = {}
    for variant in ("BlankSquare", "TorchLayer"):
        random.seed(11)
        with torch.no_grad():
            losses[variant] = float(loss(nets[variant]))
    if abs(losses["BlankSquare"] - losses["TorchLayer"]) > 1e-5 * max(1.0, abs(losses["BlankSquare"])):
        raise AssertionError(f"the TorchLayer blanking gives loss {losses['TorchLayer']}, BlankSquare "
                             f"{losses['BlankSquare']}: they do not compute the same function")

    def forward(net):
        def run_once():
            with torch.no_grad():
                loss(net)
        return run_once

    def forward_backward(net):
        params = list(net.parameters())

        def run_once():
            for p in params:
                p.grad = None
            loss(net).backward()
        return run_once

    rows = []
    for pass_name, make in (("forward", forward), ("fwd+bwd", forward_backward)):
        t = timing.interleaved({v: make(n) for v, n in nets.items()}, repeat, warmup, device)
        base = t["none"].median_ms
        for variant, tv in t.items():
            rows.append({"variant": variant, "pass": pass_name, "batch": batch, "ms": tv.median_ms,
                         "iqr_ms": [tv.q1_ms, tv.q3_ms], "vs_none": tv.median_ms / base,
                         "cost_ms": tv.median_ms - base})
    # The layer alone, many calls: the per-call cost that the whole-net medians above cannot resolve.
    scaled = x * 0.0125
    alone = {}
    for variant in ("BlankSquare", "TorchLayer"):
        layer = next(layer for layer in nets[variant].layer_list if layer.type == "Python")
        alone[variant] = forward_only(layer, scaled)
    t = timing.interleaved(alone, repeat * 10, warmup * 10, device)
    return {"net": "zoo/" + "/".join(PROTOTXT), "batch": batch, "rows": rows, "loss_check": losses,
            "layer_alone_us": {v: tv.median_ms * 1e3 for v, tv in t.items()}}


def forward_only(layer, x):
    def run_once():
        with torch.no_grad():
            layer(x)
    return run_once
