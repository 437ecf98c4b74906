"""Caffe's global mode (CPU or GPU), device and random seed, as pycaffe's set_mode_* functions set them."""
from __future__ import annotations

import random

import numpy as np
import torch

from caffelike.errors import CaffeError

_state = {"mode": "cpu", "device_id": 0, "version": 0}


def mode_version() -> int:
    """Bumped by every set_mode_*/set_device call, so nets know when to follow the global mode."""
    return _state["version"]


def set_mode_cpu() -> None:
    _state["mode"] = "cpu"
    _state["version"] += 1


def set_mode_gpu() -> None:
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available to torch on this machine")
    _state["mode"] = "gpu"
    _state["version"] += 1


def set_device(device_id: int) -> None:
    if torch.cuda.is_available() and not 0 <= device_id < torch.cuda.device_count():
        raise CaffeError(f"set_device: device {device_id} does not exist ({torch.cuda.device_count()} CUDA devices)")
    _state["device_id"] = int(device_id)
    _state["version"] += 1


def set_random_seed(seed: int) -> None:
    """Seed every generator caffelike draws from (fillers, dropout, data shuffles)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def current_device() -> torch.device:
    if _state["mode"] == "gpu":
        return torch.device("cuda", _state["device_id"])
    return torch.device("cpu")


def parse_gpu_flag(value: str | None) -> torch.device:
    """Caffe's --gpu flag: '0', '0,1' (first id used here), 'all', or empty / 'cpu' for the CPU."""
    if value in (None, "", "cpu", "-1"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise CaffeError(f"--gpu {value}: no CUDA device is available to torch on this machine")
    if value == "all":
        return torch.device("cuda", 0)
    try:
        first = int(str(value).split(",")[0])
    except ValueError:
        raise CaffeError(f"--gpu expects device ids like 0 or 0,1 or 'all', got {value!r}") from None
    if not 0 <= first < torch.cuda.device_count():
        raise CaffeError(f"--gpu {value}: device {first} does not exist ({torch.cuda.device_count()} devices)")
    return torch.device("cuda", first)
