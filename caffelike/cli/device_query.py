"""`caffelike device_query`: what Caffe's DeviceQuery prints, for the CUDA devices torch sees."""
from __future__ import annotations

import logging

import torch

from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("--gpu", default="", help="device id(s) to query ('0', '0,1' or 'all'; default all)")


def run(args) -> int:
    if not torch.cuda.is_available():
        raise CaffeError("device_query: torch sees no CUDA device on this machine (caffelike runs on the CPU here)")
    n = torch.cuda.device_count()
    ids = range(n) if args.gpu in ("", "all") else [int(x) for x in args.gpu.split(",")]
    for i in ids:
        if not 0 <= i < n:
            raise CaffeError(f"device_query: device {i} does not exist ({n} CUDA devices)")
        p = torch.cuda.get_device_properties(i)
        log.info("Querying GPUs %d", i)
        log.info("Device id:                     %d", i)
        log.info("Major revision number:         %d", p.major)
        log.info("Minor revision number:         %d", p.minor)
        log.info("Name:                          %s", p.name)
        log.info("Total global memory:           %d", p.total_memory)
        log.info("Number of multiprocessors:     %d", p.multi_processor_count)
    return 0
