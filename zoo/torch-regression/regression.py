"""A small regression model for caffelike's DIGITS model-file contract (docs/torch_models.md): any C x H x W
input, K values out, trained with the default loss of a generic dataset (MSE against its label vectors)."""
import math

from torch import nn


def network(params):
    # On a generic dataset params.nclasses is K, the length of the label vectors.
    features = math.prod(params.input_shape) if params.input_shape is not None else 784
    model = nn.Sequential(nn.Flatten(), nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, params.nclasses))
    return {"model": model, "loss": nn.MSELoss(), "train_batch_size": 32, "validation_batch_size": 100}
