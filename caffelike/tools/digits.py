"""`caffelike digits`: classify the bundled MNIST digits with the zoo's LeNet and print what it says.

The net is zoo/lenet/lenet.prototxt (BVLC's LeNet in deploy form) and the weights zoo/lenet's
lenet_mnist5k.caffemodel, trained on the other 4,000 bundled digits (zoo/lenet/train_weights.py).  It reads the
same files a Caffe user would pass to pycaffe, and feeds the digits as BVLC's LeNet expects: pixel / 256.
"""
from __future__ import annotations

import logging
import numpy as np

from caffelike import runtime, zoo
from caffelike.proto import caffe_pb2
from caffelike.data import mnist_5k, mnist_split

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("--count", type=int, default=1000, help="how many held-out digits to classify (max 1000)")
    p.add_argument("--model", default="", help="deploy prototxt (default: zoo/lenet/lenet.prototxt)")
    p.add_argument("--weights", default="", help="caffemodel (default: zoo/lenet/lenet_mnist5k.caffemodel)")
    p.add_argument("--gpu", default="", help="GPU id to use; omit for the CPU")


def run(args) -> int:
    from caffelike.net import Net

    device = runtime.parse_gpu_flag(args.gpu)
    if device.type == "cuda":
        runtime.set_device(device.index)
        runtime.set_mode_gpu()
    model = args.model or zoo.path("lenet", "lenet.prototxt")
    weights = args.weights or zoo.path("lenet", "lenet_mnist5k.caffemodel")
    net = Net(model, caffe_pb2.TEST, weights=weights)
    images, labels = mnist_5k()
    _, held_out = mnist_split()
    images, labels = images[held_out][: args.count], labels[held_out][: args.count]
    batch = net.blobs["data"].shape[0]
    predictions = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].astype(np.float32)[:, None] * 0.00390625
        net.blobs["data"].reshape(len(chunk), 1, 28, 28)
        net.blobs["data"].data[...] = chunk
        probs = net.forward()["prob"]
        predictions.append(probs.argmax(axis=1))
    predictions = np.concatenate(predictions)
    print(f"LeNet ({model}) on {len(images)} bundled MNIST digits, weights {weights}, device {net.device}")
    sample = np.linspace(0, len(images) - 1, num=min(20, len(images))).astype(int)  # spans every class
    print("sample labels:      " + " ".join(str(int(v)) for v in labels[sample]))
    print("sample predictions: " + " ".join(str(int(v)) for v in predictions[sample]))
    accuracy = float((predictions == labels).mean())
    print(f"accuracy: {accuracy:.4f} ({int((predictions == labels).sum())}/{len(images)})")
    return 0

