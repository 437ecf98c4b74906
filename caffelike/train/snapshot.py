"""Solver snapshots: `<prefix>_iter_<N>.caffemodel` + `.solverstate` (binary protos, as Caffe writes them) or
the `.caffemodel.h5` + `.solverstate.h5` pair (snapshot_format: HDF5, needs h5py).  Every file is written to a
temporary name and renamed, so an interrupted snapshot never leaves a half-written file.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from caffelike.errors import CaffeError
from caffelike.format.blobproto import array_to_blob, blob_to_array
from caffelike.format.files import atomic_write, atomic_write_with
from caffelike.format.weights import net_to_proto, write_hdf5_weights
from caffelike.proto import caffe_pb2

log = logging.getLogger("caffelike")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise CaffeError("snapshot_format: HDF5 needs the h5py package (pip install h5py)") from None
    return h5py


def _atomic_h5(path: str, fill) -> None:
    h5py = _h5py()

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            fill(f)

    atomic_write_with(path, write, suffix=".h5")


def _history_arrays(solver) -> list[np.ndarray]:
    return [h.detach().cpu().numpy() for h in solver.rule.history]


def write_snapshot(solver, hdf5: bool = False) -> tuple[str, str]:
    net, diff = solver.net, solver.param.snapshot_diff
    net.sync.push()
    if hdf5:
        model = solver.snapshot_filename(".caffemodel.h5")
        log.info("Snapshotting to HDF5 file %s", model)
        _h5py()
        write_hdf5_weights(net, model, write_diff=diff)  # Net::ToHDF5: a shared blob's data once, by its owner
        state = solver.snapshot_filename(".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", state)

        def fill_state(f):
            f.create_dataset("iter", data=np.array([solver.iter], np.int32))
            f.create_dataset("learned_net", data=np.bytes_(model))
            f.create_dataset("current_step", data=np.array([solver.current_step], np.int32))
            history = f.create_group("history")
            for i, h in enumerate(_history_arrays(solver)):
                history.create_dataset(str(i), data=h)

        _atomic_h5(state, fill_state)
        return model, state

    model = solver.snapshot_filename(".caffemodel")
    log.info("Snapshotting to binary proto file %s", model)
    atomic_write(model, net_to_proto(net, write_diff=diff).SerializeToString())
    state = solver.snapshot_filename(".solverstate")
    msg = caffe_pb2.SolverState(iter=solver.iter, learned_net=model, current_step=solver.current_step)
    for h in _history_arrays(solver):
        array_to_blob(h, msg.history.add())
    log.info("Snapshotting solver state to binary proto file %s", state)
    atomic_write(state, msg.SerializeToString())
    return model, state


def read_state(path: str) -> tuple[int, str, int, list[np.ndarray]]:
    """(iter, learned_net, current_step, history arrays) from a .solverstate or .solverstate.h5 file."""
    if not os.path.isfile(path):
        raise CaffeError(f"Could not open solver state {path!r}: no such file")
    if path.endswith(".h5"):
        h5py = _h5py()
        try:
            with h5py.File(path, "r") as f:
                learned = f["learned_net"][()] if "learned_net" in f else b""
                learned = learned.decode() if isinstance(learned, bytes) else str(learned)
                history = [np.asarray(f["history"][str(i)]) for i in range(len(f["history"]))]
                return int(f["iter"][0]), learned, int(f["current_step"][0]), history
        except (OSError, KeyError, ValueError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise CaffeError(f"{path!r} is not a valid .solverstate.h5 (needs datasets iter, current_step and a "
                             f"history group holding 0, 1, ...: {type(e).__name__}: {e})") from None
    msg = caffe_pb2.SolverState()
    try:
        with open(path, "rb") as f:
            msg.ParseFromString(f.read())
    except Exception as e:
        raise CaffeError(f"{path!r} is not a valid .solverstate ({e})") from None
    history = [blob_to_array(b, where=f"{path}: history blob {i}") for i, b in enumerate(msg.history)]
    for field in ("iter", "current_step"):
        if getattr(msg, field) < 0:  # Caffe never writes one: the file is corrupt
            raise CaffeError(f"{path}: {field} is {getattr(msg, field)}, a negative count (the .solverstate is "
                             "corrupt)")
    return msg.iter, msg.learned_net, msg.current_step, history


def restore(solver, path: str) -> None:
    """Caffe's Solver::Restore: iteration, weights from the stored learned_net path, current step, history."""
    it, learned_net, current_step, history = read_state(path)
    if learned_net:
        try:
            solver.net.copy_from(learned_net)
        except CaffeError as e:
            raise type(e)(f"{path}: cannot restore the weights from its learned_net {learned_net!r}: {e}") \
                from None
    restore_progress(solver, path, it, current_step, history)


def restore_progress(solver, path: str, it: int, current_step: int, history: list[np.ndarray]) -> None:
    """The rest of a restore once the weights are back: the iteration, the lr policy's step, the update rule's
    history and the data layers' positions (`path` names the state file in errors)."""
    solver.iter = it
    solver.current_step = current_step
    mine = solver.rule.history
    if len(history) != len(mine):
        raise CaffeError(f"{path}: Incorrect length of history blobs: the file has {len(history)}, the "
                         f"{solver.param.type} solver keeps {len(mine)} for this net")
    fast_forward_data(solver)
    log.info("SGDSolver: restoring history")
    with torch.no_grad():
        for i, (target, values) in enumerate(zip(mine, history)):
            if values.size != target.numel():
                raise CaffeError(f"{path}: history blob {i} has {values.size} values, the parameter has "
                                 f"{target.numel()}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(values).reshape(tuple(target.shape))))


def fast_forward_data(solver) -> None:
    """Move every data layer to where an uninterrupted run would be at `solver.iter`, so that resuming gives the
    uninterrupted run's batches and weights.  (Caffe restarts its databases from the start on restore; skipping
    is cheap: no record is decoded.)"""
    p = solver.param
    if solver.iter >= p.max_iter:
        return  # nothing left to train (a state from a longer run): Caffe finishes at once, so does this
    tests_done = 0  # test passes at t in [0, iter) with t % test_interval == 0, t = 0 only with test_initialization
    if p.test_interval and solver.iter > 0:
        tests_done = (solver.iter - 1) // p.test_interval + (1 if p.test_initialization else 0)
    targets = [(solver.net, solver.iter * p.iter_size)]
    targets += [(net, tests_done * p.test_iter[i]) for i, net in enumerate(solver.test_nets)]
    for net, batches in targets:
        for layer in net.layer_list:
            if hasattr(layer, "skip_batches"):
                behind = batches - layer.batches_served
                if behind > 0:
                    layer.skip_batches(behind)
