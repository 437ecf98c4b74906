"""pycaffe's caffe.NCCL for scripts written after BVLC's python/train.py, on a torch.distributed process group.

    uid = caffe.NCCL.new_uid()                      # in the parent, handed to each worker process
    # in worker `rank` of `n`:
    caffe.set_mode_gpu(); caffe.set_device(gpus[rank])   # (or stay on the CPU: gloo)
    caffe.set_solver_count(n); caffe.set_solver_rank(rank); caffe.set_multiprocess(True)
    solver = caffe.SGDSolver("solver.prototxt")
    nccl = caffe.NCCL(solver, uid)                  # joins the group (every worker must construct one)
    nccl.bcast()                                    # rank 0's weights everywhere
    solver.add_callback(nccl)                       # gradients averaged before each update
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    solver.step(solver.param.max_iter)

Differences from BVLC: the uid is a b'tcp://host:port' rendezvous address (BVLC's is NCCL's opaque id); the
group is NCCL on GPUs and gloo on the CPU; when a process group is already initialised (torchrun, or the
script's own init_process_group) NCCL uses it and the uid is ignored; `after_backward` does not overlap the
reduction with the backward pass: the gradients are reduced in buckets at on_gradients_ready, once either way.
caffelike's additions: `timeout_s` (collectives waiting longer for a dead or hung rank fail) and `sync_bn`
(BatchNorm's running statistics averaged across the ranks, see caffelike.train.distributed).
"""
from __future__ import annotations

import torch.distributed as dist

from caffelike.core import runtime
from caffelike.errors import CaffeError
from caffelike.train.distributed import DEFAULT_TIMEOUT_S, Distributed, free_port

_SCHEME = "tcp://"


class NCCL:
    """pycaffe's caffe.NCCL(solver, uid): this process's place in the group that trains `solver`'s copies."""

    def __init__(self, solver, uid, timeout_s: float = DEFAULT_TIMEOUT_S, sync_bn: bool = False):
        self.solver = solver
        device = runtime.current_device()
        if dist.is_initialized():
            rank, count = dist.get_rank(), dist.get_world_size()
            runtime.set_solver_count(count)
            runtime.set_solver_rank(rank)
            self.group = Distributed(rank, count, device, timeout_s=timeout_s, sync_bn=sync_bn)
            self.group.quiet_log()
        else:
            host, port = self._address(uid)
            self.group = Distributed.start(runtime.solver_rank(), runtime.solver_count(), device, host, port,
                                           timeout_s=timeout_s, sync_bn=sync_bn)
        solver.distributed = self.group
        self.group.solver = solver
        self.layer_wise = False

    @staticmethod
    def _address(uid) -> tuple[str, int]:
        text = uid.decode() if isinstance(uid, bytes) else str(uid)
        if not text.startswith(_SCHEME) or ":" not in text[len(_SCHEME):]:
            raise CaffeError(f"NCCL: the uid must come from caffe.NCCL.new_uid() (b'tcp://host:port'), got {uid!r}")
        host, _, port = text[len(_SCHEME):].rpartition(":")
        try:
            return host, int(port)
        except ValueError:
            raise CaffeError(f"NCCL: the uid {uid!r} has no port number") from None

    @staticmethod
    def new_uid() -> bytes:
        """A rendezvous address on this machine (a port free now) for every worker's NCCL(solver, uid), as bytes
        like BVLC's uid (its python/caffe/test/test_nccl.py checks the type)."""
        return f"{_SCHEME}127.0.0.1:{free_port()}".encode()

    def bcast(self) -> None:
        """Every rank takes rank 0's parameters (call it on every rank, before training)."""
        self.group.broadcast_parameters(self.solver.net)

    # solver.add_callback(nccl): Caffe's Solver::Callback interface.
    def on_start(self) -> None:
        pass

    def on_gradients_ready(self) -> None:
        self.group.reduce_gradients(self.solver)

    def net_after_backward(self, net) -> None:
        """solver.net.after_backward(nccl) (BVLC's layer-wise reduce): recorded; the reduction stays whole."""
        self.layer_wise = True
