"""Train the weights zoo/lenet/lenet_mnist5k.caffemodel ships with, on the bundled digits.

    python zoo/lenet/train_weights.py [--iterations 1500] [--out zoo/lenet/lenet_mnist5k.caffemodel]

The net is lenet.prototxt with its Softmax swapped for SoftmaxWithLoss; the update is Caffe's SGD
(history = momentum*history + lr*lr_mult*(grad + weight_decay*decay_mult*w); w -= history) with
examples/mnist/lenet_solver.prototxt's settings (base_lr 0.01, momentum 0.9, weight_decay 5e-4, inv policy
gamma 1e-4 power 0.75, batch 64).  Only the 4,000 training digits are used; the held-out 1,000 are what
`caffelike digits` scores.
"""
import argparse
import pathlib

import numpy as np
import torch

import caffelike as caffe
from caffelike.data.bundled import mnist_5k, mnist_split
from caffelike.net.graph import NetGraph
from caffelike.format.prototxt import read_net

HERE = pathlib.Path(__file__).resolve().parent


def train_net_param():
    net = read_net(str(HERE / "lenet.prototxt"))
    net.layer[0].top.append("label")
    net.layer[0].input_param.shape.add().dim.append(64)
    last = net.layer[-1]
    last.type = "SoftmaxWithLoss"
    last.bottom.append("label")
    last.top[0] = "loss"
    return net


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--out", default=str(HERE / "lenet_mnist5k.caffemodel"))
    args = ap.parse_args()
    caffe.set_random_seed(1701)
    graph = NetGraph(train_net_param(), caffe.TRAIN)
    images, labels = mnist_5k()
    train, _ = mnist_split()
    x = torch.from_numpy(images[train].astype(np.float32)[:, None] * 0.00390625)
    y = torch.from_numpy(labels[train].astype(np.float32))
    history = {id(p.param): torch.zeros_like(p.param) for p in graph.learnable}
    order = torch.randperm(len(x))
    for it in range(args.iterations):
        idx = order[(torch.arange(64) + it * 64) % len(x)]
        graph.zero_grad(set_to_none=False)
        outs = graph(data=x[idx], label=y[idx])
        graph.loss(outs).backward()
        lr = 0.01 * (1 + 1e-4 * it) ** -0.75
        with torch.no_grad():
            for entry in graph.learnable:
                p = entry.param
                v = history[id(p)]
                v.mul_(0.9).add_(lr * entry.lr_mult * (p.grad + 5e-4 * entry.decay_mult * p))
                p.sub_(v)
        if it % 100 == 0:
            print(f"iteration {it}: loss {float(outs['loss']):.4f} lr {lr:.6f}")
    # Save under the deploy net's layer names, so lenet.prototxt loads it directly.
    deploy = caffe.Net(str(HERE / "lenet.prototxt"), caffe.TEST)
    for layer in deploy.layer_list:
        src = graph.layer_list[graph.layer_index(layer.layer_name)]
        for mine, theirs in zip(layer.blobs, src.blobs):
            mine.data.copy_(theirs.data)
    deploy.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
