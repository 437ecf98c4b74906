"""The zoo nets the benchmarks run, at benchmark batch sizes, with one set of seeded weights that every contender
(caffelike, the hand-written torch modules, OpenCV's dnn) computes with.

The batch is changed in the parsed NetParameter (the Input layer's shape), never by editing files.  The net is
built with `force_backward: true`: deploy nets have no loss, and Caffe plans no backward for layers that do not
reach one, so without it a forward+backward of the output would have nothing to differentiate.

Weights are drawn once from a seeded generator: Gaussian with std sqrt(2 / fan_in) for weight blobs (He/MSRA)
and 0.01 for biases.  With a flat std of 0.01 everywhere (Caffe's usual gaussian filler) the signal dies out in
CaffeNet and GoogLeNet: their logits are the last layer's biases (std 0.01) and every probability is 1/1000
within 5%, so the outputs-match check would pass whatever the layers computed.  With He scaling the logits have
a std of about 5 and the check means something.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from caffelike.proto import caffe_pb2

from caffelike.format.prototxt import read_net
from caffelike.format.weights import save_caffemodel
from caffelike.net.graph import NetGraph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class ZooNet:
    name: str
    prototxt: tuple[str, ...]  # candidate paths under the repository root, the first that exists wins
    batch: int                 # the batch of the table
    quick_batch: int           # the batch of --quick
    image: tuple[int, int, int]
    logits: str                # the blob before the final Softmax (compared as well as the probabilities)

    @property
    def path(self) -> str:
        for rel in self.prototxt:
            full = os.path.join(ROOT, rel)
            if os.path.exists(full):
                return full
        raise FileNotFoundError(f"{self.name}: none of {', '.join(self.prototxt)} exists under {ROOT}")


NETS = {
    "lenet": ZooNet("lenet", ("zoo/lenet/lenet.prototxt",), 64, 64, (1, 28, 28), "ip2"),
    # zoo/cifar10_quick is new; the fixture holds the same deploy net (with force_backward already on).
    "cifar10_quick": ZooNet("cifar10_quick", ("zoo/cifar10_quick/cifar10_quick.prototxt",
                                              "tests/fixtures/nets/cifar10_quick/net.prototxt"),
                            100, 100, (3, 32, 32), "ip2"),
    "caffenet": ZooNet("caffenet", ("zoo/caffenet/deploy.prototxt",), 16, 4, (3, 227, 227), "fc8"),
    "googlenet": ZooNet("googlenet", ("zoo/googlenet/deploy.prototxt",), 16, 4, (3, 224, 224), "loss3/classifier"),
}
QUICK_NETS = ("lenet", "cifar10_quick", "caffenet")


def net_param(spec: ZooNet, batch: int, force_backward: bool = True) -> caffe_pb2.NetParameter:
    """The deploy NetParameter with the Input layer's batch set to `batch` and force_backward on (off: the deploy
    net as users run inference with it, where no layer records a graph for backward)."""
    param = read_net(spec.path)
    inputs = [layer for layer in param.layer if layer.type == "Input"]
    if not inputs:
        raise ValueError(f"{spec.path}: no Input layer to set the batch on")
    for layer in inputs:
        for shape in layer.input_param.shape:
            shape.dim[0] = batch
    param.force_backward = force_backward
    return param


def seed_weights(net: NetGraph, seed: int = 1701) -> None:
    """Overwrite every parameter blob, in layer order, from one seeded generator (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layer_list:
            for i, p in enumerate(layer.blobs):
                fan_in = p[0].numel() if i == 0 and p.dim() > 1 else 0
                std = math.sqrt(2.0 / fan_in) if fan_in else 0.01
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def build(spec: ZooNet, batch: int, seed: int = 1701) -> NetGraph:
    """caffelike's net for `spec` at `batch` (TEST phase), with the seeded weights."""
    net = NetGraph(net_param(spec, batch), caffe_pb2.TEST, source=spec.path)
    seed_weights(net, seed)
    return net


def write_files(spec: ZooNet, net: NetGraph, folder: str, force_backward: bool = True) -> tuple[str, str]:
    """The prototxt (with the batch set) and a .caffemodel of `net`'s weights, for tools that read files."""
    prototxt = os.path.join(folder, f"{spec.name}.prototxt")
    with open(prototxt, "w") as f:
        f.write(str(net_param(spec, int(net.blobs["data"].tensor.shape[0]), force_backward)))
    caffemodel = os.path.join(folder, f"{spec.name}.caffemodel")
    save_caffemodel(net, caffemodel)
    return prototxt, caffemodel


def sample_input(spec: ZooNet, batch: int, seed: int = 7) -> torch.Tensor:
    return torch.randn((batch, *spec.image), generator=torch.Generator().manual_seed(seed))
