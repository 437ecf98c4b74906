"""One linear layer for caffelike's DIGITS model-file contract (docs/torch_models.md): any C x H x W input,
nclasses log-probabilities out (multinomial logistic regression)."""
import math

from torch import nn


def network(params):
    features = math.prod(params.input_shape) if params.input_shape is not None else 784
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, params.nclasses), nn.LogSoftmax(dim=1))
    return {"model": model, "train_batch_size": 64, "validation_batch_size": 100}
