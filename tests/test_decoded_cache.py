"""Decoded images kept across epochs (caffelike.data.decoded_cache): the batches are those of a fresh decode,
the budget holds, a changed record is decoded again, and a worker process starts with its own empty cache."""
import pickle

import numpy as np
import pytest
from test_data_processes import layer_of
from test_layers_data import data_net, forward, raw_images, write_lmdb

import caffelike as caffe
from caffelike.data import build_pool, decoded_cache
from caffelike.data.datum import encode_datum
from caffelike.errors import CaffeError


def png_lmdb(path, n=5, shape=(3, 10, 10)):
    images = raw_images(n, shape=shape, seed=4)
    return images, write_lmdb(path, [encode_datum(im, label=i, layout="chw") for i, im in enumerate(images)])


def epochs_of(source, monkeypatch, budget_mb, processes, epochs=3):
    monkeypatch.setenv(decoded_cache.ENV, str(budget_mb))
    monkeypatch.setattr(build_pool, "PROCESSES", processes)
    caffe.set_random_seed(7)
    net = data_net(source, batch=2, transform="crop_size: 7 mirror: true scale: 0.5", phase=caffe.TRAIN)
    batches = [forward(net) for _ in range(epochs * 5 // 2)]  # 5 records, batch 2: every record read 3 times
    reader = layer_of(net)._read
    layer_of(net).close()
    return batches, reader


@pytest.mark.parametrize("processes", [0, 1])
def test_cached_epochs_give_the_batches_of_a_fresh_decode(tmp_path, monkeypatch, processes):
    _, source = png_lmdb(tmp_path / "lmdb")
    fresh, fresh_reader = epochs_of(source, monkeypatch, 0, processes)
    cached, reader = epochs_of(source, monkeypatch, 64, processes)
    for (a, la), (b, lb) in zip(fresh, cached):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert len(fresh_reader.cache) == 0
    if not processes:  # with a worker process the filled cache lives there
        assert len(reader.cache) == 5


def test_the_cache_serves_a_seen_record_and_decodes_a_changed_one(tmp_path):
    images, _ = png_lmdb(tmp_path / "lmdb", n=2)
    reader = layer_of(data_net(png_lmdb(tmp_path / "other", n=2)[1]))._read
    first, second = (encode_datum(im, label=i, layout="chw").SerializeToString() for i, im in enumerate(images))
    pixels, label, _ = reader((b"k", first))
    again, _, _ = reader((b"k", first))
    assert again is pixels and label == 0  # served from memory
    assert not again.flags.writeable  # no batch can write into what later batches read
    changed, label, _ = reader((b"k", second))  # the same key, rewritten: decoded again
    np.testing.assert_array_equal(changed, images[1])
    assert label == 1


def test_the_budget_bounds_what_is_kept():
    cache = decoded_cache.DecodedCache(budget=1000)
    pixels = np.zeros((1, 10, 10), np.uint8)
    for i in range(10):
        cache.put(bytes([i]) * 50, pixels.copy(), i)
    assert len(cache) == 2 and cache.used_bytes <= 1000  # each entry: 50 + 100 bytes plus the overhead
    assert cache.get(bytes([0]) * 50)[1] == 0 and cache.get(bytes([9]) * 50) is None


def test_a_pickled_cache_arrives_empty_with_its_budget():
    cache = decoded_cache.DecodedCache(budget=1 << 20)
    cache.put(b"record", np.zeros(4, np.uint8), 3)
    copy = pickle.loads(pickle.dumps(cache))
    assert len(copy) == 0 and copy.budget == 1 << 20


def test_raw_datums_are_not_cached(tmp_path):
    from caffelike.data.datum import array_to_datum
    source = write_lmdb(tmp_path / "raw", [array_to_datum(im, 0) for im in raw_images(3)])
    net = data_net(source, batch=3)
    net.forward()
    assert len(layer_of(net)._read.cache) == 0  # their pixels are a view of the record: nothing to save


@pytest.mark.parametrize("value,budget", [("", 512 << 20), ("0", 0), ("1.5", 3 << 19)])
def test_the_budget_comes_from_the_environment(monkeypatch, value, budget):
    monkeypatch.setenv(decoded_cache.ENV, value)
    assert decoded_cache.budget_bytes() == budget


@pytest.mark.parametrize("value", ["lots", "nan", "inf"])
def test_a_bad_budget_is_an_error_that_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(decoded_cache.ENV, value)
    with pytest.raises(CaffeError, match=f"CAFFELIKE_DATA_CACHE_MB.*'{value}'"):
        decoded_cache.budget_bytes()
