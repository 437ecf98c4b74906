"""Batches built in worker processes (caffelike.data.build_pool): the same batches as a synchronous read, the
same errors, a clear one when a worker dies, and no processes left behind."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import Case, assert_blob_close
from test_layers_data import data_net, forward, raw_images, write_lmdb
from test_layers_window_data import batch, mixed_file, scene, window_net  # noqa: F401 (scene: a fixture)

import caffelike as caffe
from caffelike.data import build_pool
from caffelike.data.datum import array_to_datum
from caffelike.errors import CaffeError


@pytest.fixture
def processes(monkeypatch):
    """Set how many worker processes data layers get (build_pool.PROCESSES) for one test."""
    def set_to(n):
        monkeypatch.setattr(build_pool, "PROCESSES", n)
    return set_to


def layer_of(net):
    return net.layer_list[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_process_built_batches_equal_synchronous_ones_with_random_transforms(tmp_path, processes, workers):
    images = raw_images(7, shape=(3, 8, 8))
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, i) for i, im in enumerate(images)])
    runs = []
    for prefetch, n in ((0, 0), (3, workers)):
        processes(n)
        caffe.set_random_seed(99)
        net = data_net(source, batch=3, transform="crop_size: 5 mirror: true scale: 0.5",
                       extra=f"prefetch: {prefetch}", phase=caffe.TRAIN)
        runs.append([forward(net) for _ in range(6)])
        pool = layer_of(net)._pool
        assert (pool is not None and pool.processes == n) if n else pool is None
        if n and build_pool._can_fork():
            assert pool._slots is not None  # the batches came back through shared memory
        layer_of(net).close()
    for (a, la), (b, lb) in zip(*runs):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="processes are the default only where they fork")
@pytest.mark.parametrize("name", ["data_lmdb_transform", "imagedata"])
def test_caffe_fixture_cases_through_worker_processes(name, processes, monkeypatch):
    """Real Caffe's Data (LMDB, mean file, centre crop) and ImageData outputs, reproduced by batches built in
    a worker process (asked for explicitly: a TEST net has none by default)."""
    processes(1)
    case = Case.load("layers", name)
    monkeypatch.chdir(case.path)
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST)
    net.forward()
    assert layer_of(net)._pool is not None and layer_of(net)._pool.processes == 1
    for blob in case.meta["blobs"]:
        assert_blob_close(net.blobs[blob].data, case.data(blob), name=blob, **case.tolerance)
    layer_of(net).close()


def test_training_nets_use_a_process_and_test_nets_threads(tmp_path, monkeypatch):
    monkeypatch.delenv(build_pool.ENV, raising=False)
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, 0) for im in raw_images(4)])
    train, test = data_net(source, phase=caffe.TRAIN), data_net(source, phase=caffe.TEST)
    train.forward()
    test.forward()
    assert layer_of(train)._pool.processes == 1
    assert layer_of(test)._pool is None
    layer_of(train).close()
    assert layer_of(train)._pool is None


def test_no_process_when_torch_threads_take_every_core(tmp_path, monkeypatch):
    """The worker would have no core of its own, and the pipe costs more than the GIL it spares; a net computing
    on a GPU leaves the cores to the decoding and keeps its process."""
    monkeypatch.delenv(build_pool.ENV, raising=False)
    monkeypatch.setattr(build_pool, "_usable_cores", lambda: 1)
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, 0) for im in raw_images(4)])
    train = data_net(source, phase=caffe.TRAIN)
    train.forward()
    assert layer_of(train)._pool is None
    assert build_pool.processes_for(True, 4, 784, computing_on_cpu=False) == (1 if build_pool._can_fork() else 0)
    monkeypatch.setattr(build_pool, "_usable_cores", lambda: 2)
    assert build_pool.processes_for(True, 4, 784) == (1 if build_pool._can_fork() else 0)


def test_environment_sets_the_processes_and_a_bad_value_is_named(tmp_path, monkeypatch):
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, 0) for im in raw_images(4)])
    monkeypatch.setenv(build_pool.ENV, "0")
    net = data_net(source, phase=caffe.TRAIN)
    net.forward()
    assert layer_of(net)._pool is None
    monkeypatch.setenv(build_pool.ENV, "two")
    with pytest.raises(CaffeError, match=f"{build_pool.ENV} must be a whole number.*'two'"):
        data_net(source, phase=caffe.TRAIN).forward()


def test_a_bad_record_names_its_key_from_the_worker_process(tmp_path, processes):
    processes(1)
    good = array_to_datum(raw_images(1)[0])
    source = write_lmdb(tmp_path / "bad", [good, b"\xff\xff\xff not a datum"], keys=["a", "b_broken"])
    net = data_net(source, batch=1, phase=caffe.TRAIN)
    net.forward()
    with pytest.raises(CaffeError, match=r"record 'b_broken'.*not a serialized caffe.Datum"):
        net.forward()
    layer_of(net).close()


def test_a_dead_worker_process_is_a_clear_error(tmp_path, processes):
    processes(1)
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, 0) for im in raw_images(4)])
    net = data_net(source, batch=2, extra="prefetch: 1", phase=caffe.TRAIN)
    net.forward()
    pool = layer_of(net)._pool
    for pid in list(pool._executor._processes):
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(CaffeError, match=r'Data layer "d".*data worker process died.*CAFFELIKE_DATA_PROCESSES=0'):
        for _ in range(4):  # the batch in flight may have been finished before the kill
            net.forward()
    layer_of(net).close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_close_ends_the_worker_processes(tmp_path, processes):
    processes(2)
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, 0) for im in raw_images(4)])
    net = data_net(source, phase=caffe.TRAIN)
    net.forward()
    pids = list(layer_of(net)._pool._executor._processes)
    assert len(pids) == 2 and all(running(pid) for pid in pids)
    layer_of(net).close()
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(pid) for pid in pids)


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (the pool's own thread reaps it, so Process.is_alive()
    from here can be stale)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_script_without_a_main_guard_runs_once(tmp_path):
    """The worker processes are forked (on Linux): a pycaffe script without `if __name__ == "__main__"` is not
    run again in them, as it would be by spawn or a fork server."""
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, 0) for im in raw_images(4)])
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import caffelike as caffe
        from caffelike.proto import caffe_pb2
        from google.protobuf import text_format
        print("script body ran", flush=True)
        text = ('layer {{ name: "d" type: "Data" top: "data" top: "label" '
                'data_param {{ source: "{source}" batch_size: 2 backend: LMDB }} }}')
        net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TRAIN)
        for _ in range(3):
            net.forward()
        print("pool", net.layer_list[0]._pool.processes, flush=True)
    """))
    env = dict(os.environ, **{build_pool.ENV: "1"})  # whatever the cores, so the fork is tested
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("script body ran") == 1, done.stdout
    assert "pool 1" in done.stdout


@pytest.mark.parametrize("cache", [False, True])
def test_window_data_batches_are_the_same_in_a_process(scene, processes, cache):  # noqa: F811
    """WindowData (R-CNN) builds in a worker process too, with or without cache_images."""
    source = mixed_file(scene)
    extra = "fg_fraction: 0.5" + (" cache_images: true" if cache else "")
    runs = []
    for n in (0, 1):
        processes(n)
        caffe.set_random_seed(5)
        net = window_net(source, batch=6, transform="crop_size: 8 mirror: true", extra=extra)
        runs.append([batch(net) for _ in range(4)])
        assert (layer_of(net)._pool is not None) == bool(n)
        layer_of(net).close()
    for (a, la), (b, lb) in zip(*runs):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


class _Sized:
    """A builder whose batch is (job-valued array of `shape`, labels): picklable for the pool's workers."""

    def __init__(self, shape):
        self.shape = shape

    def __call__(self, job):
        return np.full(self.shape, job, np.float32), np.arange(self.shape[0], dtype=np.float32) + job


@pytest.mark.skipif(not build_pool._can_fork(), reason="slots need forked workers")
def test_batches_come_back_through_shared_slots_or_the_pipe_when_too_large():
    shape = (4, 3, 5, 5)
    pool = build_pool.BuildPool(_Sized(shape), 1, "layer", slot_bytes=4 * (300 + 4), slots=1)
    assert pool._slots is not None
    data, labels = pool.run(7)
    np.testing.assert_array_equal(data, np.full(shape, 7, np.float32))
    np.testing.assert_array_equal(labels, np.arange(4) + 7)
    assert data.flags.owndata or data.base.flags.owndata  # a copy: the slot is written again by the next batch
    small = build_pool.BuildPool(_Sized(shape), 1, "layer", slot_bytes=64, slots=1)  # too small: the pipe
    np.testing.assert_array_equal(small.run(2)[0], np.full(shape, 2, np.float32))
    pool.close()
    small.close()


@pytest.mark.skipif(not build_pool._can_fork(), reason="slots need forked workers")
def test_more_threads_than_slots_wait_for_one_and_get_their_own_batch():
    import threading
    pool = build_pool.BuildPool(_Sized((8, 100)), 2, "layer", slot_bytes=4 * 900, slots=1)
    got, errors = {}, []

    def ask(job):
        try:
            for _ in range(5):
                data, labels = pool.run(job)
                assert (data == job).all() and labels[0] == job
            got[job] = True
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=ask, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pool.close()
    assert not errors and sorted(got) == [0, 1, 2, 3]
