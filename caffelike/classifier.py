"""pycaffe's `caffe.Classifier`: a deploy net in TEST phase with its weights, plus the preprocessing that turns
HxWxK images into class scores.

`predict` resizes every image to `image_dims`, takes the ten `oversample` crops (or the centre crop) of the
net's input size, preprocesses them with a `Transformer` (transpose (2, 0, 1), then the optional channel swap,
raw scale, mean and input scale), runs them through `forward_all` in batches, and returns the first output,
averaged over the ten crops of each image.

Deliberate differences from pycaffe: the net is built with the keyword form `Net(model, TEST, weights=...)`
(pycaffe uses the legacy form, which logs a deprecation warning); `pretrained_file` may be None (the net keeps
its fillers' values); images of mixed channel counts, a crop larger than `image_dims` and a net without a 4-D
input raise a CaffeError saying so.
"""
from __future__ import annotations

import numpy as np

from caffelike.errors import CaffeError
from caffelike.io import Transformer, resize_image
from caffelike.io import oversample as ten_crops
from caffelike.net import Net, batching
from caffelike.proto import caffe_pb2


class Classifier(Net):
    """Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None).  `image_dims` (H, W) is the size images are resized to before cropping; it defaults to
    the net's input size (then the crops are the whole image).  `trust_python` lets a Python layer import its
    module from the model's folder, as for Net (docs/python_layers.md)."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, trust_python=False):
        super().__init__(model_file, caffe_pb2.TEST, weights=pretrained_file, trust_python=trust_python)
        if not self.inputs:
            raise CaffeError(f"Classifier needs a deploy net with an input blob; {model_file} declares none")
        in_ = self.inputs[0]
        shape = tuple(self.blobs[in_].data.shape)
        if len(shape) != 4:
            raise CaffeError(f"Classifier needs a 4-D (N, C, H, W) input; input '{in_}' has shape {shape}")
        self.transformer = Transformer({in_: shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = np.array(shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims
        if any(int(i) < int(c) for i, c in zip(image_dims, self.crop_dims)):
            raise CaffeError(f"Classifier: image_dims {tuple(int(d) for d in image_dims)} are smaller than the "
                             f"net's input {tuple(int(d) for d in self.crop_dims)}; the crops would not fit")

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class scores (the net's first output) for a list of HxWxK images: (N, classes), each row the mean
        over the image's ten crops when `oversample`, else the scores of its centre crop."""
        inputs = list(inputs)
        if not inputs:
            raise CaffeError("Classifier.predict needs at least one image")
        shapes = [np.shape(im) for im in inputs]
        if any(len(s) != 3 for s in shapes) or len({s[2] for s in shapes}) != 1:
            raise CaffeError(f"Classifier.predict needs H x W x K images with one channel count K, got shapes "
                             f"{sorted(set(shapes))}")
        height, width = (int(d) for d in self.image_dims)
        images = np.zeros((len(inputs), height, width, shapes[0][2]), dtype=np.float32)
        for ix, im in enumerate(inputs):
            images[ix] = resize_image(im, (height, width))

        if oversample:
            crops = ten_crops(images, self.crop_dims)
        else:
            # pycaffe's centre crop: int(centre -+ crop/2) on both ends
            center = np.array([height, width]) / 2.0
            box = np.concatenate([center - self.crop_dims / 2.0, center + self.crop_dims / 2.0]).astype(int)
            crops = images[:, box[0]:box[2], box[1]:box[3], :]

        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops.shape[3]) + crops.shape[1:3], dtype=np.float32)
        for ix, crop in enumerate(crops):
            caffe_in[ix] = self.transformer.preprocess(in_, crop)
        run = getattr(type(self), "forward_all", None)
        out = run(self, **{in_: caffe_in}) if run is not None else batching.forward_all(self, **{in_: caffe_in})
        predictions = out[self.outputs[0]]

        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
