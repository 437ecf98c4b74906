"""What a caffelike solver iteration costs on top of the forward and backward passes it contains, beside the same
training step written by hand in PyTorch (torch.optim.SGD with momentum and weight decay, foreach).

The net is zoo/lenet's deploy body fed by Input layers (a fixed batch of 64 and its labels) with SoftmaxWithLoss,
so no data loading is timed.  Four interleaved measurements, median ms:
  caffelike fwd+bwd     net.run, Caffe's weighted loss, backward (param diffs cleared first)
  caffelike step        Solver.step(1): the same, plus lr policy, the update of every parameter, bookkeeping
  torch fwd+bwd         the hand-written LeNet, cross-entropy on its logits, backward
  torch step            the same plus optimizer.step()
The step's overhead is step / fwd+bwd - 1 for each side.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from google.protobuf import text_format

from bench import handwritten, timing
from caffelike.core import layout

BODY = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: %(batch)d dim: 1 dim: 28 dim: 28 } shape { dim: %(batch)d } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


class _LeNetLogits(handwritten.LeNet):
    def forward(self, x):
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.ip2(self.relu1(self.ip1(x.flatten(1))))


def run(batch: int = 64, repeat: int = 50, warmup: int = 5, device: str = "cpu") -> dict:
    from caffelike.proto import caffe_pb2

    from caffelike.train.solver import Solver

    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="inv", gamma=1e-4,
                                      power=0.75, max_iter=10 ** 6, display=0, snapshot_after_train=False,
                                      random_seed=1701)
    text_format.Merge(BODY % {"batch": batch}, param.net_param)
    solver = Solver(param)
    net = solver.net.to(device)
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
    labels = torch.randint(0, 10, (batch,), generator=gen).to(device)
    net.blobs["data"].set_tensor(x)
    net.blobs["label"].set_tensor(labels.float())

    hand = handwritten.load_from(_LeNetLogits(), net).train().to(device)
    if layout.channels_last_enabled(device):  # caffelike's activations are channels_last: the same for torch's
        hand = hand.to(memory_format=torch.channels_last)
    # Caffe's multipliers: biases learn at twice the rate and, as in zoo/lenet, decay like the weights.
    groups = [{"params": [m.weight for m in (hand.conv1, hand.conv2, hand.ip1, hand.ip2)]},
              {"params": [m.bias for m in (hand.conv1, hand.conv2, hand.ip1, hand.ip2)], "lr": 0.02}]
    optimizer = torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)

    def caffelike_fwd_bwd():
        net.clear_param_diffs()
        net.loss(net.run()).backward()

    def torch_fwd_bwd():
        optimizer.zero_grad(set_to_none=False)
        F.cross_entropy(hand(x), labels).backward()

    def torch_step():
        torch_fwd_bwd()
        optimizer.step()

    times = timing.interleaved({"caffelike fwd+bwd": caffelike_fwd_bwd, "caffelike step": lambda: solver.step(1),
                                "torch fwd+bwd": torch_fwd_bwd, "torch step": torch_step},
                               repeat, warmup, device)
    ms = {name: t.median_ms for name, t in times.items()}
    return {"net": "zoo/lenet body, Input-fed, SoftmaxWithLoss, SGD momentum 0.9 wd 5e-4", "batch": batch,
            "ms": ms, "quartiles_ms": {name: [t.q1_ms, t.q3_ms] for name, t in times.items()},
            "caffelike_step_overhead": ms["caffelike step"] / ms["caffelike fwd+bwd"] - 1,
            "torch_step_overhead": ms["torch step"] / ms["torch fwd+bwd"] - 1,
            "step_ratio": ms["caffelike step"] / ms["torch step"]}
