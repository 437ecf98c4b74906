"""Fuzzing Caffe's files by byte corruption (see tests/test_fuzz.py for the property and the environment
variables): a prototxt, zoo/lenet's .caffemodel, a .solverstate, Datums, LMDBs and a mean file."""
from __future__ import annotations

import os

import numpy as np
import pytest
from fuzzing import (
    FUZZ,
    LENET,
    LENET_WEIGHTS,
    Quiet,
    _build_and_run,
    check,
    corrupt,
    corruptions,
    layer_names,
    no_leftovers,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

import caffelike as caffe


# ------------------------------------------------------------------------------------------ corrupted prototxt
@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_prototxt(data, case_dir):
    with open(LENET, "rb") as f:
        good = f.read()
    raw = corrupt(good, data.draw(corruptions(len(good)), label="ops"))
    path = write(case_dir(), "lenet.prototxt", raw)
    names = ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "prob", "data"]
    check(_build_and_run(path, caffe.TEST), [path] + layer_names(names), repr(raw[:200]))


# --------------------------------------------------------------------------------------- corrupted .caffemodel
@pytest.fixture(scope="module")
def lenet():
    return caffe.Net(LENET, caffe.TEST)


@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_caffemodel(data, lenet, case_dir):
    with open(LENET_WEIGHTS, "rb") as f:
        good = f.read()
    ops = data.draw(corruptions(len(good)), label="ops")
    folder = case_dir()
    path = write(folder, "lenet.caffemodel", corrupt(good, ops))

    def case():
        lenet.copy_from(path)
        lenet.forward()
        lenet.save(os.path.join(folder, "resaved.caffemodel"))

    check(case, [path], str(ops))
    no_leftovers(folder)


# --------------------------------------------------------------------------------------- corrupted .solverstate
@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_solverstate(data, tiny, case_dir):
    from caffelike.train.snapshot import read_state, restore

    _, _, solver, state, _model = tiny
    with open(state, "rb") as f:
        good = f.read()
    ops = data.draw(corruptions(len(good)), label="ops")
    folder = case_dir()
    path = write(folder, "tiny.solverstate", corrupt(good, ops))

    def case():
        read_state(path)
        restore(solver, path)
        solver.step(1)

    check(case, [path], str(ops))


# ---------------------------------------------------------------------------------------------- corrupted Datum
def _datums():
    from caffelike.data.datum import array_to_datum, encode_datum

    pixels = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    raw = array_to_datum(pixels, label=3)
    floats = array_to_datum(pixels.astype(np.float32) / 7, label=1)
    png = encode_datum(pixels, label=2, layout="chw")
    return {"raw": raw.SerializeToString(), "float": floats.SerializeToString(), "png": png.SerializeToString()}


DATUMS = _datums()


@FUZZ
@given(kind=st.sampled_from(sorted(DATUMS)), data=st.data(),
       mode=st.sampled_from([(False, False), (True, False), (False, True)]))
def test_fuzz_corrupt_datum(kind, data, mode):
    from caffelike.data.datum import datum_to_array, decode_datum, parse_datum

    good = DATUMS[kind]
    value = corrupt(good, data.draw(corruptions(len(good)), label="ops"))

    def case():
        datum = parse_datum(value, where="key 00000007")
        decode_datum(datum, *mode, where="key 00000007")
        datum_to_array(datum)

    check(case, ["key 00000007", "Datum"], repr(value))


# ----------------------------------------------------------------------------------------------- corrupted LMDB
def _write_lmdb(folder: str, values) -> str:
    import lmdb

    env = lmdb.open(folder, map_size=1 << 22)
    with env.begin(write=True) as txn:
        for i, v in enumerate(values):
            txn.put(f"{i:08d}".encode(), v)
    env.close()
    return folder


def _read_lmdb(source: str, transform: str = ""):
    from caffelike.proto import caffe_pb2
    from google.protobuf import text_format

    from caffelike.data.datum import DatumDB, decode_datum, parse_datum

    def case():
        db = DatumDB(source, caffe_pb2.DataParameter.LMDB, where='Data layer "fz_data"')
        try:
            for key, value in db:
                decode_datum(parse_datum(value, where=f"key {key!r}"), where=f"key {key!r}")
            db.read(3)
        finally:
            db.close()
        param = text_format.Parse(f'layer {{ name: "fz_data" type: "Data" top: "data" top: "label" '
                                  f'transform_param {{ {transform} }} data_param {{ source: "{source}" '
                                  'batch_size: 2 backend: LMDB } }', caffe_pb2.NetParameter())
        net = caffe.Net(param, caffe.TRAIN)
        for _ in range(3):
            net.forward()
    return case


@FUZZ
@given(values=st.lists(st.sampled_from(sorted(DATUMS)), min_size=1, max_size=4), data=st.data())
def test_fuzz_lmdb_of_corrupt_datums(values, data, case_dir):
    stored = []
    for kind in values:
        good = DATUMS[kind]
        broken = data.draw(st.booleans(), label="corrupt this one")
        stored.append(corrupt(good, data.draw(corruptions(len(good)))) if broken else good)
    source = _write_lmdb(os.path.join(case_dir(), "db"), stored)
    check(_read_lmdb(source), ['"fz_data"', "key b'0000000"], str(stored))


@pytest.fixture(scope="module")
def lmdb_file(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("lmdb"))
    _write_lmdb(os.path.join(folder, "db"), [DATUMS["raw"]] * 6)
    with open(os.path.join(folder, "db", "data.mdb"), "rb") as f:
        return Quiet(f.read())


@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_lmdb_file(data, lmdb_file, case_dir):
    ops = data.draw(corruptions(len(lmdb_file)), label="ops")
    source = os.path.join(case_dir(), "db")
    os.makedirs(source)
    write(source, "data.mdb", corrupt(lmdb_file, ops))
    check(_read_lmdb(source), ['"fz_data"', source, "key b'"], str(ops))


# ----------------------------------------------------------------------------------------- corrupted mean file
@pytest.fixture(scope="module")
def mean_bytes():
    from caffelike.format.blobproto import array_to_blob

    return Quiet(array_to_blob(np.full((1, 3, 4, 5), 10.5, np.float32)).SerializeToString())


@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_mean_file(data, mean_bytes, case_dir):
    from caffelike.proto import caffe_pb2

    from caffelike.data.transformer import DataTransformer, load_mean_file

    ops = data.draw(corruptions(len(mean_bytes)), label="ops")
    path = write(case_dir(), "mean.binaryproto", corrupt(mean_bytes, ops))

    def case():
        load_mean_file(path, where='Data layer "fz_data"')
        t = DataTransformer(caffe_pb2.TransformationParameter(mean_file=path, crop_size=2), caffe_pb2.TRAIN,
                            where='Data layer "fz_data"')
        t(np.zeros((3, 4, 5), np.uint8))

    check(case, [path], str(ops))
