"""`caffelike classify --network model.py --weights snapshot.pt --dataset DIR IMAGE`: one image through a
PyTorch model file (docs/torch_models.md), preprocessed as its training's validation pass saw its inputs.

The dataset folder gives what the model was trained against: the input's channels, height and width, the
number of classes (params.nclasses), the labels and the mean.  The image is read as caffelike.digits.classify
reads it (gray or BGR by the channel count, squashed to the dataset's size; a .npy array of the dataset's
C x H x W or H x W shape is taken as it is), then transformed by the DataTransformer that training's TEST Data
layer uses (caffelike.digits.torch_model.transform_param): the mean image, its per-channel values, or nothing
subtracted, then the centre crop when the model file (or --crop-size) names one.  The weights must fit the
model exactly (as network(params) builds it, or as its fine_tune_hook adapts it, the model a fine-tuned run
trained and snapshotted).

The output's first row is read as class scores on a classification dataset: log-probabilities (all <= 0,
logsumexp 0: the default NLL loss's LogSoftmax) are exponentiated, probabilities (>= 0, summing to 1) kept,
anything else softmaxed with a warning.  On a generic dataset, or with a label_hook (the target is not the
class), the output is a vector of values and has no top 5.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from caffelike.data.transformer import DataTransformer
from caffelike.digits import classify
from caffelike.digits.torch_model import (
    TorchModelSpec,
    dataset_mean_file,
    input_shape,
    is_generic,
    label_count,
    load_model_file,
    load_weights,
    read_dataset,
    transform_param,
)
from caffelike.errors import CaffeError, shape_str
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")

MEAN_MODES = ("image", "pixel", "none")
ADVICE = "give a snapshot (.pt) of this model file trained on this dataset"


class Prepared:
    """A model file with its weights and one preprocessed image: `x` (1, C, h, w) on the model's device,
    `pixels` the uint8 (C, h, w) image as cropped for it (None for a float .npy input)."""

    def __init__(self, spec: TorchModelSpec, dataset: dict, x: torch.Tensor, pixels: np.ndarray | None,
                 labels: list[str] | None, crop: int, mean: str):
        self.spec, self.dataset, self.x, self.pixels = spec, dataset, x, pixels
        self.labels, self.crop, self.mean = labels, crop, mean

    @property
    def model(self) -> torch.nn.Module:
        return self.spec.model

    @property
    def classifies(self) -> bool:
        """Whether the output is class scores (a classification dataset and the label as the target)."""
        return not is_generic(self.dataset) and self.spec.label_hook is None


def prepare(network: str, weights: str, dataset: str, image: str, *, labels: str | None = None,
            mean_file: str | None = None, mean: str = "image", crop_size: int | None = None,
            color: bool | None = None, device: torch.device | str = "cpu") -> Prepared:
    """Load the model file against the dataset folder, its weights, and `image` preprocessed for it."""
    if mean not in MEAN_MODES:
        raise CaffeError(f"the mean mode must be image, pixel or none, got {mean!r}")
    data = read_dataset(dataset)
    spec = load_model_file(network, nclasses=label_count(data), input_shape=input_shape(data, crop_size or 0),
                           ngpus=0)
    crop = crop_size or spec.crop_size or 0
    _load_exactly(spec, weights)
    spec.model.to(device).eval()

    mean_path = mean_file or dataset_mean_file(data)
    if mean != "none" and not os.path.isfile(mean_path):
        raise CaffeError(f"{mean_path}: no such mean file (the dataset's mean is subtracted as in training; "
                         "give --mean FILE, or --mean-mode none if the model was trained without one)")
    transformer = DataTransformer(transform_param(mean, mean_path, crop), caffe_pb2.TEST, where="classify")
    shape = (int(data["channels"]), int(data["height"]), int(data["width"]))
    pixels = _read_input(image, shape, color)
    x = transformer(pixels)
    if crop:  # the part of the image the model sees, for the report's input picture
        top, left = (shape[1] - crop) // 2, (shape[2] - crop) // 2
        pixels = pixels[:, top:top + crop, left:left + crop]
    shown = pixels if pixels.dtype == np.uint8 else None
    return Prepared(spec, data, torch.from_numpy(x)[None].to(device), shown, _labels(data, labels), crop, mean)


def _read_input(path: str, shape: tuple[int, int, int], color: bool | None) -> np.ndarray:
    if os.fspath(path).lower().endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise CaffeError(f"{path}: cannot read the array ({e})") from None
        if array.ndim == 2:
            array = array[None]
        if tuple(array.shape) != shape:
            raise CaffeError(f"{path}: the array is {shape_str(array.shape)} but the dataset's inputs are "
                             f"{shape_str(shape)} (C, H, W); arrays are not resized")
        return array if array.dtype == np.uint8 else array.astype(np.float32)
    c, h, w = shape
    return classify.load_image(path, h, w, classify.image_mode(c, color, "input"))


def _labels(data: dict, labels: str | None) -> list[str] | None:
    if labels:
        return classify.read_labels(labels)
    if is_generic(data):
        return None
    listed = os.path.join(data["path"], data.get("files", {}).get("labels", "labels.txt"))
    return classify.read_labels(listed) if os.path.isfile(listed) else [str(n) for n in data["labels"]]


def _load_exactly(spec: TorchModelSpec, weights: str) -> None:
    """load_weights without partial loading: a fine-tuned model's snapshot fits the model its hook made."""
    hook, spec.fine_tune_hook = spec.fine_tune_hook, None
    try:
        load_weights(spec, weights, ADVICE)
    except CaffeError:
        if hook is None or not os.path.isfile(weights):
            raise
        try:
            adapted = hook(spec.model)
        except Exception as e:  # noqa: BLE001 (the user's hook: any fault is reported as one line)
            spec.fail(f"fine_tune_hook raised {type(e).__name__}: {e}")
        spec.model = spec.model if adapted is None else adapted
        load_weights(spec, weights, ADVICE)  # the adapted model must take the file whole
    finally:
        spec.fine_tune_hook = hook


def forward(prepared: Prepared) -> torch.Tensor:
    """The model's output on the prepared image (eval mode, no gradients); a failing model is a one-line
    error naming its file."""
    prepared.model.eval()
    try:
        with torch.no_grad():
            output = prepared.model(prepared.x)
    except Exception as e:  # noqa: BLE001 (the user's model: any fault is reported as one line)
        text = str(e).strip().splitlines()
        prepared.spec.fail(f"the model raised {type(e).__name__}{': ' + text[0] if text else ''} on the input "
                           f"of shape {shape_str(prepared.x.shape)}")
    if not isinstance(output, torch.Tensor):
        prepared.spec.fail(f"the model returned a {type(output).__name__}, not one tensor")
    return output


def output_values(output: torch.Tensor) -> np.ndarray:
    """The first sample's output, flattened, as float64."""
    values = output.detach().cpu().double().numpy()
    return values.reshape(values.shape[0], -1)[0] if values.ndim else values.reshape(1)


def probabilities(scores: np.ndarray, where: str = "the model") -> np.ndarray:
    """Class scores as probabilities: log-probabilities exponentiated, probabilities kept, else softmax."""
    s = np.asarray(scores, dtype=np.float64)
    if not s.size:
        return s
    top = s.max()
    if np.isfinite(top) and top <= 1e-6 and abs(top + np.log(np.exp(s - top).sum())) < 1e-3:
        return np.exp(s)
    if s.min() >= 0 and abs(s.sum() - 1) < 1e-3:
        return s
    log.warning("the output of %s is neither log-probabilities nor probabilities; showing its softmax", where)
    e = np.exp(s - top)
    return e / e.sum()


def predictions(prepared: Prepared, output: torch.Tensor) -> list[classify.Prediction]:
    """The top 5 of a classifying model's output, labelled."""
    scores = output_values(output)
    if prepared.labels is not None and len(prepared.labels) != scores.size:
        log.warning("%d labels but the model's output has %d values", len(prepared.labels), scores.size)
    where = os.path.basename(prepared.spec.path)
    return classify.top_predictions(probabilities(scores, where), prepared.labels)
