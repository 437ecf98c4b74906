"""The occlusion layer of NVIDIA DIGITS' "Using Python layers" tutorial, written for Python 3 and caffelike.

BlankSquareLayer copies its bottom to its top and zeroes one square of (H//2) x (W//2) pixels - a quarter of
the image - at a random position that lies wholly inside the image.  The same square is used for every image
and channel of the batch, and a new one is drawn at every forward pass from Python's `random` module (not from
the solver's random_seed), exactly as the tutorial's layer behaves.  It has no backward: DIGITS uses it in place
between the input scaling and conv1, where nothing below needs a gradient.
"""
import random

import caffe


class BlankSquareLayer(caffe.Layer):

    def setup(self, bottom, top):
        if len(bottom) != 1 or len(top) != 1:
            raise ValueError("BlankSquareLayer takes one bottom and one top")
        if bottom[0].data.ndim < 3:
            raise ValueError(f"BlankSquareLayer needs image blobs (N, C, H, W); got {bottom[0].data.ndim} axes")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data
        height, width = top[0].data.shape[-2:]
        side_h, side_w = height // 2, width // 2
        row = random.randrange(side_h)
        col = random.randrange(side_w)
        top[0].data[..., row:row + side_h, col:col + side_w] = 0

    def backward(self, top, propagate_down, bottom):
        pass
