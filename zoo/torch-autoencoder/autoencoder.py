"""An autoencoder for caffelike's DIGITS model-file contract (docs/torch_models.md), after DIGITS' Torch
autoencoder example: the label_hook makes the (scaled) input the target, so any dataset's labels are ignored.

Encoder: flatten, x/255, linear to 128, ReLU, linear to 32.  Decoder: linear to 128, ReLU, linear back to
C*H*W, reshaped to the input's shape.  MSE against input/255."""
import math

from torch import nn

SCALE = 1 / 255.0


class AutoEncoder(nn.Module):
    def __init__(self, shape, code=32, hidden=128):
        super().__init__()
        features = math.prod(shape)
        self.shape = tuple(shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, features))

    def forward(self, x):
        return self.decoder(self.encoder(x * SCALE)).view(x.shape[0], *self.shape)


def label_hook(input, label):
    return input * SCALE  # the target is the input itself


def network(params):
    shape = params.input_shape if params.input_shape is not None else (1, 28, 28)
    return {"model": AutoEncoder(shape), "loss": nn.MSELoss(), "label_hook": label_hook,
            "train_batch_size": 64, "validation_batch_size": 100}
