"""The fuzz suites' machinery (tests/test_fuzz.py, tests/test_fuzz_files.py): hypothesis settings, running each
case in a forked child with a hard timeout, the check that an error is caffelike's own and names what is at
fault, byte corruptions, and the tiny net shared by the solver cases.  The docstring of tests/test_fuzz.py says
what is generated and which environment variables set the number of examples.
"""
from __future__ import annotations

import glob
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import traceback
import warnings
from datetime import timedelta

import caffelike.zoo
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

import caffelike as caffe
from caffelike.errors import CaffeError

EXAMPLES = int(os.environ.get("CAFFELIKE_FUZZ_EXAMPLES", "20"))
CASE_TIMEOUT_S = 30.0
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=os.environ.get("CAFFELIKE_FUZZ_RANDOM", "") != "1",
    database=None,
    deadline=timedelta(seconds=15),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
FORK = hasattr(os, "fork") and sys.platform.startswith("linux")

LENET = caffelike.zoo.path("lenet", "lenet.prototxt")
LENET_WEIGHTS = caffelike.zoo.path("lenet", "lenet_mnist5k.caffemodel")


# ------------------------------------------------------------------------------------------------ running a case
class CaseTimeout(BaseException):
    """Raised by the alarm in the in-process fallback (a BaseException, so no `except Exception` swallows it)."""


def _outcome(fn) -> tuple:
    try:
        fn()
    except CaseTimeout:
        return ("hang", "", "", "")
    except BaseException as e:  # noqa: BLE001 - the point is to see every exception type
        return ("error", isinstance(e, CaffeError), f"{type(e).__module__}.{type(e).__qualname__}: {e}",
                traceback.format_exc())
    return ("ok", True, "", "")


def _child(fn, conn) -> None:
    conn.send(_outcome(fn))
    conn.close()


def run_case(fn, timeout: float = CASE_TIMEOUT_S) -> tuple:
    """fn()'s outcome: ("ok", ...), ("error", is_caffe_error, "type: message", traceback), ("hang", ...) or
    ("crash", ...), with a hard timeout: a forked child is killed, in-process a SIGALRM interrupts it."""
    if not FORK:
        def alarm(signum, frame):
            raise CaseTimeout()

        old = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return _outcome(fn)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, send), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout):
            proc.kill()
            proc.join()
            return ("hang", False, f"no result after {timeout:g} s", "")
        try:
            result = recv.recv()
        except EOFError:
            proc.join()
            return ("crash", False, f"the case's process died (exit code {proc.exitcode})", "")
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
        return result
    finally:
        recv.close()


# Errors found by this file whose fix lies outside the modules it may change, each with where it is to be fixed;
# a case that raises one of them (a CaffeError still) passes with a warning, so the gap stays visible in the report.
KNOWN_OPEN: list = []  # (pattern, where it is to be fixed): messages let through with a warning


def layer_names(names) -> list[str]:
    """How messages quote a layer's name: "conv1" (Type layer "conv1") or 'conv1' (the net's own messages)."""
    return [f'"{n}"' for n in names] + [f"'{n}'" for n in names]


def check(fn, names, what: str = "") -> None:
    """Run fn as a case; fail unless it succeeds or raises a CaffeError that names one of `names`."""
    kind, is_caffe, message, tb = run_case(fn)
    event(kind if kind != "error" else message.split(":")[0])  # --hypothesis-show-statistics tallies outcomes
    if kind == "ok":
        return
    if kind in ("hang", "crash"):
        pytest.fail(f"{what}: {kind}: {message}")
    if not is_caffe:
        pytest.fail(f"{what}: unexpected exception {message}\n{tb}")
    names = [n for n in names if n]
    if not any(n in message for n in names):
        for pattern, where in KNOWN_OPEN:
            if pattern.search(message):
                warnings.warn(f"known open issue ({where}): {message[:200]}", stacklevel=2)
                return
        pytest.fail(f"{what}: the error does not name any of {names}: {message}")


def no_leftovers(folder: str) -> None:
    left = glob.glob(os.path.join(folder, "**", ".tmp-*"), recursive=True)
    assert not left, f"half-written files left behind: {left}"


# ------------------------------------------------------------------------------------------------- corruptions
def _position(size: int):
    # Protobuf headers and varints sit at the start, and truncations matter at the end, so weight those.
    return st.one_of(st.integers(0, 64), st.integers(0, max(size, 1)), st.integers(max(size - 64, 0), max(size, 1)))


def corruptions(size: int):
    pos = _position(size)
    op = st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("set"), pos, st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x22, 0x08])),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
    )
    return st.lists(op, min_size=1, max_size=4)


def corrupt(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for op in ops:
        at = op[1] % (len(buf) + 1)
        if op[0] == "flip" and at < len(buf):
            buf[at] ^= 1 << op[2]
        elif op[0] == "set" and at < len(buf):
            buf[at] = op[2]
        elif op[0] == "truncate":
            del buf[at:]
        elif op[0] == "insert":
            buf[at:at] = op[2]
        elif op[0] == "delete":
            del buf[at:at + op[2]]
    return bytes(buf)


class Quiet(bytes):
    """Bytes a fixture hands to a test, shown by their length in hypothesis' report of a failing example."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


def write(folder: str, name: str, data: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def case_dir():
    """A fresh folder per hypothesis example (tmp_path is one per test, shared by all its examples)."""
    folders = []

    def make() -> str:
        folders.append(tempfile.mkdtemp(prefix="caffelike-fuzz-"))
        return folders[-1]

    yield make
    for f in folders:
        shutil.rmtree(f, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ a tiny net
TINY_NET = """
name: "tiny"
layer { name: "x" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny net's file, and a solverstate (+ caffemodel) of it after 2 SGD iterations with momentum."""
    from caffelike.train.solver import Solver

    folder = str(tmp_path_factory.mktemp("tiny"))
    net = write(folder, "tiny.prototxt", TINY_NET.encode())
    solver = write(folder, "solver.prototxt", (f'net: "{net}" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" '
                                               f'max_iter: 2 snapshot: 2 snapshot_prefix: "{folder}/snap" '
                                               'random_seed: 3 display: 0 snapshot_after_train: false').encode())
    s = Solver(solver)
    s.step(2)
    no_leftovers(folder)
    return net, solver, s, f"{folder}/snap_iter_2.solverstate", f"{folder}/snap_iter_2.caffemodel"


def _build_and_run(path: str, phase: int):
    def case():
        net = caffe.Net(path, phase)
        net.forward()
    return case
