"""Data bundled with caffelike: 5,000 MNIST digits (see README.md here for the attribution)."""
from __future__ import annotations

import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels uint8 (5000,)), sorted by label, 500 per digit."""
    with np.load(HERE / "mnist_5k.npz") as f:
        return f["images"], f["labels"]


def mnist_split() -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, held_out) over mnist_5k: every fifth digit is held out (1,000, 100 per class)."""
    held_out = np.arange(5000) % 5 == 0
    return ~held_out, held_out
