"""LeNet for caffelike's DIGITS model-file contract (docs/torch_models.md): DIGITS' Torch LeNet in PyTorch.

The same layers as Caffe's LeNet (zoo/lenet): scale by 1/256, conv 20 5x5, max-pool 2, conv 50 5x5, max-pool 2,
flatten, linear 800->500, ReLU, linear 500->10 (nclasses), log-softmax; for 28x28 images, any channel count.
"""
from torch import nn


class Scale(nn.Module):
    """y = x * factor (Torch7's nn.MulConstant)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def network(params):
    channels = params.input_shape[0] if params.input_shape is not None else 1
    model = nn.Sequential(
        Scale(0.00390625),  # 1/256, exactly Caffe's LeNet transform_param scale
        nn.Conv2d(channels, 20, 5),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, params.nclasses),
        nn.LogSoftmax(dim=1),
    )
    return {"model": model, "loss": nn.NLLLoss(), "train_batch_size": 64, "validation_batch_size": 100}
