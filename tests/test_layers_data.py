"""Data layers: Caffe's fixture cases through the full net, then generated LMDBs, image lists and HDF5 files
(written in tmp_path) for the details: record order and wrap-around, Datum kinds and image decoding, shuffles,
MemoryData's Reset path, DummyData's refills, the prefetcher, and the errors people meet."""
import io
import logging
import threading
import time

import lmdb
import numpy as np
import pytest
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from helpers import FIXTURES, Case, assert_blob_close
from PIL import Image

import caffelike as caffe
from caffelike.data.datum import (
    DatumDB,
    DatumError,
    array_to_datum,
    datum_to_array,
    decode_datum,
    decode_image,
    encode_datum,
    resize_linear,
)
from caffelike.data.prefetch import Prefetcher
from caffelike.errors import CaffeError, LayerError


# ------------------------------------------------------------------------------------------------------- helpers
def make_net(text: str, phase=caffe.TEST) -> caffe.Net:
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def data_net(source, batch=2, tops=("data", "label"), transform="", extra="", phase=caffe.TEST) -> caffe.Net:
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return make_net(f'layer {{ name: "d" type: "Data" {top_lines} transform_param {{ {transform} }} '
                    f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {extra} }} }}', phase)


def write_lmdb(path, datums, keys=None):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, d in enumerate(datums):
            value = d if isinstance(d, bytes) else d.SerializeToString()
            txn.put((keys[i] if keys else f"{i:08d}").encode(), value)
    env.close()
    return str(path)


def raw_images(n, shape=(2, 3, 4), seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def forward(net):
    net.forward()
    return net.blobs["data"].data.copy(), (net.blobs["label"].data.copy() if "label" in net.blobs else None)


@pytest.fixture
def raw_lmdb(tmp_path):
    images = raw_images(5)
    return images, write_lmdb(tmp_path / "raw_lmdb", [array_to_datum(im, label=10 + i) for i, im in enumerate(images)])


# ----------------------------------------------------------------------------------------- Caffe's fixture cases
@pytest.mark.parametrize("name", ["data_lmdb_transform", "imagedata", "hdf5data", "dummydata"])
def test_fixture_case_through_the_net(name, monkeypatch):
    if name == "hdf5data":
        pytest.importorskip("h5py")
    case = Case.load("layers", name)
    monkeypatch.chdir(case.path)
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST)
    assert list(net.blobs) == case.meta["blobs"]
    net.forward()
    for blob in case.meta["blobs"]:
        assert_blob_close(net.blobs[blob].data, case.data(blob), name=blob, **case.tolerance)


def test_fixture_memorydata_through_reset():
    case = Case.load("layers", "memorydata")
    net = caffe.Net(str(case.path / "net.prototxt"), caffe.TEST)
    assert net.blobs["label"].shape == [2]  # (batch,) at setup; Caffe reshapes to (batch, 1, 1, 1) in forward
    # pycaffe's net.set_input_arrays hands the arrays to the layer's reset (Caffe's MemoryDataLayer::Reset).
    feed = getattr(net, "set_input_arrays", net.layer_list[0].reset)
    feed(case.arrays["memory_data/data"], case.arrays["memory_data/labels"])
    net.forward()
    for blob in case.meta["blobs"]:
        assert_blob_close(net.blobs[blob].data, case.data(blob), name=blob, **case.tolerance)
    net.forward()  # items 2 and 3, then the cursor wraps
    np.testing.assert_array_equal(net.blobs["data"].data, case.arrays["memory_data/data"][2:4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, case.arrays["memory_data/data"][:2])


def test_fixture_lmdb_is_read_in_key_order_with_labels():
    source = FIXTURES / "data" / "mnist_val_lmdb"
    db = DatumDB(str(source))  # LMDB allows one open environment per path per process: share caffelike's
    records = [caffe_pb2.Datum.FromString(v) for _, v in list(db)[:6]]
    keys = [k for k, _ in list(db)[:6]]
    db.close()
    assert keys == sorted(keys)
    net = data_net(source, batch=3)
    for start in (0, 3):
        data, label = forward(net)
        want = np.stack([decode_datum(d) for d in records[start:start + 3]])
        np.testing.assert_array_equal(data, want)
        np.testing.assert_array_equal(label, [d.label for d in records[start:start + 3]])


# ------------------------------------------------------------------------------------------------- Data layer
def test_raw_uint8_datums_and_wrap_around(raw_lmdb, caplog):
    images, source = raw_lmdb
    net = data_net(source, batch=2)
    assert net.blobs["data"].shape == [2, 2, 3, 4] and net.blobs["label"].shape == [2]
    with caplog.at_level(logging.INFO, logger="caffelike"):
        batches = [forward(net) for _ in range(3)]
    order = [0, 1, 2, 3, 4, 0]
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), images[order].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), [10 + i for i in order])
    assert "Restarting data prefetching from start." in caplog.text


def test_float_data_datums(tmp_path):
    values = np.random.default_rng(1).normal(size=(3, 1, 2, 5)).astype(np.float32)
    source = write_lmdb(tmp_path / "float_lmdb", [array_to_datum(v, label=i) for i, v in enumerate(values)])
    data, label = forward(data_net(source, batch=3, transform="scale: 2"))
    np.testing.assert_array_equal(data, values * np.float32(2))
    np.testing.assert_array_equal(label, [0, 1, 2])


def test_single_top_and_synchronous_mode(raw_lmdb):
    images, source = raw_lmdb
    net = data_net(source, batch=2, tops=("data",), extra="prefetch: 0")
    assert list(net.blobs) == ["data"]
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, images[:2])


def test_shape_inference_does_not_consume_records(raw_lmdb):
    images, source = raw_lmdb
    net = data_net(source, batch=2)
    layer = net.layer_list[0]
    for _ in range(3):
        assert layer.infer_top_shapes([]) == [(2, 2, 3, 4), (2,)]
    net.reshape()
    np.testing.assert_array_equal(forward(net)[0], images[:2])
    assert layer.batches_served == 1


def test_prefetched_batches_equal_synchronous_ones_with_random_transforms(tmp_path):
    images = raw_images(7, shape=(3, 8, 8))
    source = write_lmdb(tmp_path / "lmdb", [array_to_datum(im, i) for i, im in enumerate(images)])
    runs = []
    for prefetch in (0, 3):
        caffe.set_random_seed(99)
        net = data_net(source, batch=3, transform="crop_size: 5 mirror: true scale: 0.5", extra=f"prefetch: {prefetch}",
                       phase=caffe.TRAIN)
        runs.append([forward(net) for _ in range(5)])
    for (a, la), (b, lb) in zip(*runs):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_skip_batches_continues_where_reading_would_be(raw_lmdb):
    images, source = raw_lmdb
    reference = data_net(source, batch=2)
    expected = [forward(reference)[1] for _ in range(4)]
    net = data_net(source, batch=2)
    forward(net)
    net.layer_list[0].skip_batches(2)
    np.testing.assert_array_equal(forward(net)[1], expected[3])


def test_rand_skip_skips_fewer_than_rand_skip_records(raw_lmdb):
    images, source = raw_lmdb
    starts = set()
    for seed in range(12):
        caffe.set_random_seed(seed)
        label = forward(data_net(source, batch=1, extra="rand_skip: 4"))[1]
        starts.add(int(label[0]) - 10)
    assert starts <= {0, 1, 2, 3} and len(starts) > 1
    caffe.set_random_seed(3)
    a = forward(data_net(source, batch=2, extra="rand_skip: 4"))[1]
    caffe.set_random_seed(3)
    b = forward(data_net(source, batch=2, extra="rand_skip: 4"))[1]
    np.testing.assert_array_equal(a, b)


def test_leveldb_backend_reads_an_lmdb_directory(raw_lmdb):
    images, source = raw_lmdb
    net = make_net(f'layer {{ name: "d" type: "Data" top: "data" data_param {{ source: "{source}" batch_size: 1 }} }}')
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[0], images[0])


def test_relative_source_resolves_against_the_working_directory(raw_lmdb, monkeypatch, tmp_path):
    images, _ = raw_lmdb
    monkeypatch.chdir(tmp_path)
    np.testing.assert_array_equal(forward(data_net("raw_lmdb", batch=1))[0][0], images[0])


def test_encoded_png_is_exact_and_bgr(tmp_path):
    bgr = raw_images(3, shape=(3, 5, 6), seed=7)
    gray = raw_images(1, shape=(1, 5, 6), seed=8)[0]
    datums = [encode_datum(im, label=i, encoding="png", layout="chw") for i, im in enumerate(bgr)]
    datums.append(encode_datum(gray, label=3, layout="chw"))
    np.testing.assert_array_equal(decode_datum(datums[0]), bgr[0])
    np.testing.assert_array_equal(decode_datum(datums[3]), gray)
    source = write_lmdb(tmp_path / "png", datums[:3])
    np.testing.assert_array_equal(forward(data_net(source, batch=3))[0], bgr.astype(np.float32))
    # A pure red RGB file comes out with red in channel 2 (OpenCV's BGR order).
    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, "PNG")
    red = decode_image(buf.getvalue())
    assert red.shape == (3, 3, 4) and (red[2] == 255).all() and not red[:2].any()


def test_encoded_jpeg_within_tolerance(tmp_path):
    y, x = np.mgrid[0:16, 0:16]
    smooth = np.stack([x * 15, y * 15, (x + y) * 7]).astype(np.uint8)
    datum = encode_datum(smooth, encoding="jpg", layout="chw")
    assert datum.data[:2] == b"\xff\xd8"
    decoded = decode_datum(datum)
    assert decoded.shape == (3, 16, 16)
    assert np.abs(decoded - smooth).mean() < 3.0


def test_force_color_and_force_gray_on_encoded_datums(tmp_path):
    gray = raw_images(1, shape=(1, 4, 4), seed=2)[0]
    color = raw_images(1, shape=(3, 4, 4), seed=3)[0]
    source = write_lmdb(tmp_path / "mixed", [encode_datum(gray, layout="chw"), encode_datum(color, layout="chw")])
    data = forward(data_net(source, batch=1, tops=("data",), transform="force_color: true"))[0]
    np.testing.assert_array_equal(data[0], np.repeat(gray, 3, axis=0))
    net = data_net(source, batch=2, tops=("data",), transform="force_gray: true")
    assert net.blobs["data"].shape == [2, 1, 4, 4]
    net.forward()
    b, g, r = color.astype(np.float64)
    np.testing.assert_allclose(net.blobs["data"].data[1, 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1.0)


def test_datum_helpers_follow_pycaffe_io():
    u8 = raw_images(1)[0]
    d = array_to_datum(u8, label=4)
    assert (d.channels, d.height, d.width, d.label, len(d.data), len(d.float_data)) == (2, 3, 4, 4, 24, 0)
    np.testing.assert_array_equal(datum_to_array(d), u8)
    f = array_to_datum(u8.astype(np.float64) / 3)
    assert not f.data and len(f.float_data) == 24
    assert datum_to_array(f).dtype == np.float64
    with pytest.raises(ValueError, match="Incorrect array shape"):
        array_to_datum(np.zeros((2, 2)))


def test_resize_follows_opencv_inter_linear():
    row = np.array([[[0, 255]]], np.uint8)
    # OpenCV: centre-aligned, borders replicated, 11-bit weights: 0, 63.75 -> 64, 191.25 -> 191, 255
    np.testing.assert_array_equal(resize_linear(row, 1, 4), [[[0, 64, 191, 255]]])
    # Halving averages pairs (no antialiasing over wider windows, unlike Pillow's BILINEAR).
    img = np.array([[[0, 0, 255, 255], [0, 0, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(resize_linear(img, 1, 2), [[[0, 255]]])
    x = raw_images(1, shape=(3, 5, 7))[0]
    assert resize_linear(x, 5, 7) is x
    assert resize_linear(x, 11, 3).shape == (3, 11, 3)


# --------------------------------------------------------------------------------------------- Data layer errors
def test_missing_source_names_the_path_and_the_layer(tmp_path):
    with pytest.raises(CaffeError, match=r'Data layer "d": data source .*nowhere.* does not exist'):
        data_net(tmp_path / "nowhere")


def test_leveldb_source_is_refused_with_advice(tmp_path):
    folder = tmp_path / "train_leveldb"
    folder.mkdir()
    (folder / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(CaffeError, match=r"is a LevelDB; backend LEVELDB .* not supported.*convert_imageset"):
        make_net(f'layer {{ name: "d" type: "Data" top: "data" data_param {{ source: "{folder}" batch_size: 1 }} }}')


def test_empty_database(tmp_path):
    source = write_lmdb(tmp_path / "empty", [])
    with pytest.raises(CaffeError, match="is empty"):
        data_net(source)


def test_bad_datum_names_the_key(tmp_path):
    good = array_to_datum(raw_images(1)[0])
    source = write_lmdb(tmp_path / "bad", [good, b"\xff\xff\xff not a datum"], keys=["a", "b_broken"])
    net = data_net(source, batch=1)
    net.forward()
    with pytest.raises(CaffeError, match=r"record 'b_broken'.*not a serialized caffe.Datum"):
        net.forward()


@pytest.mark.parametrize("keep", [4248, 8192 + 100], ids=["inside-the-meta-pages", "inside-the-data-pages"])
def test_truncated_lmdb_file_is_an_error_not_a_crash(tmp_path, keep):
    # Found by tests/test_fuzz.py: liblmdb maps data.mdb and read past its end, killing the process (SIGBUS).
    source = write_lmdb(tmp_path / "db", [array_to_datum(im) for im in raw_images(3)])
    data = tmp_path / "db" / "data.mdb"
    data.write_bytes(data.read_bytes()[:keep])
    with pytest.raises(DatumError, match=r'Data layer "d": the LMDB file .*data.mdb.* is truncated'):
        data_net(source)


def test_corrupt_lmdb_read_is_a_datum_error(tmp_path):
    # lmdb's own errors (lmdb.CorruptedError, ...) while reading are reported as the data layer's DatumError.
    import lmdb

    source = write_lmdb(tmp_path / "db", [array_to_datum(im) for im in raw_images(3)])
    db = DatumDB(source, where='Data layer "d"')
    db._cursor.close()  # a cursor that fails, as one over a corrupt page does
    try:
        with pytest.raises(DatumError, match=r'Data layer "d": cannot read LMDB .*the database is corrupt'):
            db.read(1)
    finally:
        db._cursor = db._txn.cursor()
        db.close()
    assert issubclass(lmdb.CorruptedError, lmdb.Error)


def test_truncated_raw_datum(tmp_path):
    d = caffe_pb2.Datum(channels=3, height=4, width=4, data=b"\x00" * 10)
    with pytest.raises(DatumError, match="holds 10 bytes but its shape 3x4x4 needs 48"):
        decode_datum(d)


def test_mean_and_crop_mismatch_through_the_net(raw_lmdb, tmp_path):
    _, source = raw_lmdb
    bp = caffe_pb2.BlobProto(num=1, channels=1, height=28, width=28)
    bp.data.extend([0.0] * 784)
    (tmp_path / "mean.binaryproto").write_bytes(bp.SerializeToString())
    with pytest.raises(CaffeError, match=r'Data layer "d".*1x28x28.*2x3x4'):
        data_net(source, transform=f'mean_file: "{tmp_path / "mean.binaryproto"}"')
    with pytest.raises(CaffeError, match=r"crop_size 5 is larger than the image"):
        data_net(source, transform="crop_size: 5")


def test_batch_size_must_be_positive(raw_lmdb):
    with pytest.raises(LayerError, match="Positive batch size required"):
        data_net(raw_lmdb[1], batch=0)


# -------------------------------------------------------------------------------------------------- prefetcher
def test_prefetcher_returns_batches_in_plan_order_despite_uneven_work():
    counter = iter(range(1000))
    jitter = np.random.default_rng(0).uniform(0, 0.004, 1000)

    def build(job):
        time.sleep(jitter[job])
        return job * 10

    with Prefetcher(lambda: next(counter), build, depth=4, workers=4) as p:
        assert [p.next() for _ in range(40)] == [i * 10 for i in range(40)]


def test_prefetcher_reraises_the_workers_exception_in_the_consumer():
    class Boom(ValueError):
        pass

    counter = iter(range(100))

    def build(job):
        if job == 2:
            raise Boom(f"record {job} is broken")
        return job

    p = Prefetcher(lambda: next(counter), build, depth=3, workers=2)
    assert [p.next(), p.next()] == [0, 1]
    with pytest.raises(Boom, match="record 2 is broken"):
        p.next()
    assert p.next() == 3
    p.close()


def test_prefetcher_close_stops_its_threads():
    p = Prefetcher(lambda: 1, lambda job: job, depth=2, workers=3, name="closing")
    p.next()
    threads = [t for t in threading.enumerate() if t.name.startswith("caffelike-closing-")]
    assert len(threads) == 3 and all(t.daemon for t in threads)
    p.close()
    p.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(CaffeError, match="closed"):
        p.next()


def test_data_layer_close_releases_the_database(raw_lmdb):
    net = data_net(raw_lmdb[1])
    net.forward()
    layer = net.layer_list[0]
    layer.close()
    assert layer.db.env is None


@pytest.mark.gpu
def test_batches_land_on_the_gpu(raw_lmdb):
    net = data_net(raw_lmdb[1]).to("cuda")
    out = net.run()
    assert out["data"].is_cuda and out["label"].is_cuda
    np.testing.assert_array_equal(out["data"].cpu().numpy(), raw_lmdb[0][:2])
    assert torch.cuda.is_available()
