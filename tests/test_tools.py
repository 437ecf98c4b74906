"""convert_imageset, compute_image_mean and the LMDB writer: what lands in the database, byte for byte, and the
mean against real Caffe's output for the bundled MNIST LMDB."""
import io
import os
import re
from pathlib import Path

import lmdb
import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from PIL import Image

from caffelike.cli import main
from caffelike.data.dbwriter import DatasetError, LmdbWriter, image_to_datum

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")


def messages(err: str) -> list[str]:
    return [GLOG.sub("", line) for line in err.splitlines() if GLOG.match(line)]


def read_db(path) -> list[tuple[bytes, caffe_pb2.Datum]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            out = []
            for key, value in txn.cursor():
                datum = caffe_pb2.Datum()
                datum.ParseFromString(value)
                out.append((bytes(key), datum))
            return out
    finally:
        env.close()


def planar(datum) -> np.ndarray:
    return np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width)


def bgr(rgb: np.ndarray) -> np.ndarray:
    """An (H, W, 3) RGB array as Caffe stores it: planar (3, H, W) in BGR order."""
    return rgb[:, :, ::-1].transpose(2, 0, 1)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def images(tmp_path):
    """A folder of images (colour PNG, colour JPEG, gray PNG; one in a subfolder) and their list file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    pixels = {
        "red.png": np.zeros((4, 6, 3), np.uint8),
        "sub/noise.png": rng.integers(0, 256, (4, 6, 3), dtype=np.uint8),
        "photo.jpg": np.tile(np.linspace(0, 255, 6, dtype=np.uint8)[None, :, None], (4, 1, 3)),
        "gray.png": rng.integers(0, 256, (4, 6), dtype=np.uint8),
    }
    pixels["red.png"][..., 0] = 200
    pixels["red.png"][..., 1] = 10
    pixels["red.png"][..., 2] = 60
    for name, array in pixels.items():
        Image.fromarray(array).save(root / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    listfile = tmp_path / "list.txt"
    listfile.write_text("red.png 1\nsub/noise.png 2\nphoto.jpg 3\ngray.png 4\n")
    return root, listfile, pixels


def convert(images, db, *flags):
    root, listfile, _ = images
    return main(["convert_imageset", *flags, f"{root}/", str(listfile), str(db)])


# ---------------------------------------------------------------------------------------------- convert_imageset
def test_raw_colour_datums_are_planar_bgr_with_caffe_keys(images, tmp_path, capsys):
    db = tmp_path / "db"
    assert convert(images, db) == 0
    records = read_db(db)
    assert [k for k, _ in records] == [b"00000000_red.png", b"00000001_sub/noise.png", b"00000002_photo.jpg",
                                       b"00000003_gray.png"]
    _, _, pixels = images
    for (key, datum), label in zip(records, (1, 2, 3, 4)):
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 6, label)
        assert datum.HasField("encoded") and not datum.encoded  # Caffe's CVMatToDatum sets encoded: false
        assert len(datum.data) == 3 * 4 * 6
    assert np.array_equal(planar(records[0][1])[:, 0, 0], [60, 10, 200])  # B, G, R
    assert np.array_equal(planar(records[1][1]), bgr(pixels["sub/noise.png"]))
    gray = pixels["gray.png"]
    assert np.array_equal(planar(records[3][1]), np.stack([gray] * 3))  # gray files read as colour: 3 equal planes
    out = messages(capsys.readouterr().err)
    assert out[0] == "A total of 4 images." and out[-1] == "Processed 4 files."


def test_gray_gives_one_channel(images, tmp_path):
    db = tmp_path / "db"
    assert convert(images, db, "--gray") == 0
    records = dict(read_db(db))
    _, _, pixels = images
    noise = records[b"00000001_sub/noise.png"]
    assert (noise.channels, noise.height, noise.width) == (1, 4, 6)
    assert np.array_equal(planar(noise)[0], np.asarray(Image.fromarray(pixels["sub/noise.png"]).convert("L")))
    assert np.array_equal(planar(records[b"00000003_gray.png"])[0], pixels["gray.png"])


def test_resize_uses_opencv_inter_linear(tmp_path):
    root = tmp_path / "im"
    root.mkdir()
    Image.fromarray(np.array([[0, 100]], np.uint8)).save(root / "a.png")
    (tmp_path / "l.txt").write_text("a.png 0\n")
    db = tmp_path / "db"
    assert main(["convert_imageset", "--gray", "--resize_height=2", "--resize_width=4", f"{root}/",
                 str(tmp_path / "l.txt"), str(db)]) == 0
    (_, datum), = read_db(db)
    # cv::resize INTER_LINEAR: centre-aligned taps, edges clamped (Pillow's BILINEAR would give other values)
    assert np.array_equal(planar(datum), [[[0, 25, 75, 100], [0, 25, 75, 100]]])


def test_encoded_keeps_matching_files_and_reencodes_the_rest(images, tmp_path):
    root, _, pixels = images
    db = tmp_path / "db"
    assert convert(images, db, "--encoded=true") == 0
    records = dict(read_db(db))
    for key, name in ((b"00000000_red.png", "red.png"), (b"00000002_photo.jpg", "photo.jpg")):
        datum = records[key]
        assert datum.encoded and datum.data == (root / name).read_bytes()  # ReadFileToDatum: the file itself
        assert not datum.HasField("channels")  # Caffe stores no shape for encoded Datums

    png = tmp_path / "png"
    assert convert(images, png, "--encode_type=png") == 0  # encode_type alone implies --encoded
    raw = tmp_path / "raw"
    assert convert(images, raw) == 0
    encoded, plain = dict(read_db(png)), dict(read_db(raw))
    jpg = encoded[b"00000002_photo.jpg"]
    assert jpg.encoded and jpg.data[:8] == b"\x89PNG\r\n\x1a\n"
    # re-encoded losslessly from the decoded pixels: decoding gives back exactly the raw Datum's BGR planes
    assert np.array_equal(bgr(decode(jpg.data)), planar(plain[b"00000002_photo.jpg"]))


def test_encoded_gray_reencodes_colour_files(images, tmp_path):
    root, _, pixels = images
    db = tmp_path / "db"
    assert convert(images, db, "--encoded", "--gray") == 0
    records = dict(read_db(db))
    assert records[b"00000003_gray.png"].data == (root / "gray.png").read_bytes()  # already gray: kept as is
    noise = decode(records[b"00000001_sub/noise.png"].data)
    assert noise.ndim == 2 and np.array_equal(noise, np.asarray(Image.fromarray(pixels["sub/noise.png"]).convert("L")))


@pytest.mark.parametrize("flags", [["--shuffle"], ["-shuffle=true"], ["--shuffle=1", "--shuffle_seed=0"]],
                         ids=["bare", "single-dash-equals", "numeric"])
def test_shuffle_is_seeded_and_keys_follow_the_new_order(tmp_path, flags):
    root = tmp_path / "im"
    root.mkdir()
    names = [f"{i}.png" for i in range(12)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(root / name)
    listfile = tmp_path / "l.txt"
    listfile.write_text("".join(f"{name} {i}\n" for i, name in enumerate(names)))
    db = tmp_path / "db"
    assert main(["convert_imageset", *flags, f"{root}/", str(listfile), str(db)]) == 0
    records = read_db(db)
    order = [int(k.split(b"_", 1)[1][:-4]) for k, _ in records]
    assert sorted(order) == list(range(12)) and order != list(range(12))
    for i, (key, datum) in enumerate(records):
        assert key == f"{i:08d}_{order[i]}.png".encode()
        assert datum.label == order[i] and planar(datum)[0, 0, 0] == order[i]
    again = tmp_path / "again"
    assert main(["convert_imageset", "--shuffle", f"{root}/", str(listfile), str(again)]) == 0
    assert [k for k, _ in read_db(again)] == [k for k, _ in records]
    assert main(["convert_imageset", "--noshuffle", f"{root}/", str(listfile), str(tmp_path / "plain")]) == 0
    assert [k for k, _ in read_db(tmp_path / "plain")][:2] == [b"00000000_0.png", b"00000001_1.png"]


def test_paths_with_spaces_split_at_the_last_space(tmp_path):
    root = tmp_path / "im"
    root.mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(root / "my cat.png")
    (tmp_path / "l.txt").write_text("my cat.png 7\r\n\n")
    assert main(["convert_imageset", f"{root}/", str(tmp_path / "l.txt"), str(tmp_path / "db")]) == 0
    (key, datum), = read_db(tmp_path / "db")
    assert key == b"00000000_my cat.png" and datum.label == 7


def test_commits_and_logs_every_1000(tmp_path, capsys):
    root = tmp_path / "im"
    root.mkdir()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(root / "a.png")
    (tmp_path / "l.txt").write_text("a.png 0\n" * 1001)
    assert main(["convert_imageset", "--gray", f"{root}/", str(tmp_path / "l.txt"), str(tmp_path / "db")]) == 0
    out = messages(capsys.readouterr().err)
    assert [m for m in out if m.startswith("Processed")] == ["Processed 1000 files.", "Processed 1001 files."]
    assert len(read_db(tmp_path / "db")) == 1001


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("listing, where", [
    ("red.png 1\nmissing.png 2\n", "list.txt line 2: Could not open or find file"),
    ("red.png 1\nsub/noise.png two\n", "list.txt line 2: the label 'two'"),
    ("red.png\n", "list.txt line 1: expected 'path label'"),
], ids=["missing-image", "bad-label", "no-label"])
def test_bad_list_lines_name_file_and_line_and_leave_nothing(images, tmp_path, capsys, listing, where):
    root, listfile, _ = images
    listfile.write_text(listing)
    db = tmp_path / "db"
    assert main(["convert_imageset", f"{root}/", str(listfile), str(db)]) == 1
    assert where in capsys.readouterr().err
    assert not db.exists() and leftovers(tmp_path) == []


def test_missing_list_file_existing_db_and_leveldb_are_refused(images, tmp_path, capsys):
    root, listfile, _ = images
    assert main(["convert_imageset", f"{root}/", str(tmp_path / "nope.txt"), str(tmp_path / "db")]) == 1
    assert re.search(r"cannot read the list file '.*nope\.txt'", capsys.readouterr().err)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "data.mdb").write_bytes(b"precious")
    assert main(["convert_imageset", f"{root}/", str(listfile), str(existing)]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (existing / "data.mdb").read_bytes() == b"precious"
    assert main(["convert_imageset", "--backend=leveldb", f"{root}/", str(listfile), str(tmp_path / "l")]) == 1
    assert "leveldb is not supported" in capsys.readouterr().err


def test_check_size_refuses_mixed_sizes(images, tmp_path, capsys):
    root, listfile, _ = images
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(root / "small.png")
    listfile.write_text("red.png 1\nsmall.png 2\n")
    assert convert(images, tmp_path / "ok") == 0  # without --check_size mixed sizes are stored as they are
    assert convert(images, tmp_path / "db", "--check_size") == 1
    err = capsys.readouterr().err
    assert "list.txt line 2: 'small.png' is 3x3x3" in err and "first image is 3x4x6" in err


# --------------------------------------------------------------------------------------------------- the writer
def test_writer_grows_the_map_and_publishes_atomically(tmp_path):
    db = tmp_path / "db"
    value = bytes(range(256)) * 64  # 16 KiB each, 2 MiB in all, from a 64 KiB map
    with LmdbWriter(str(db), map_size=64 << 10, commit_every=10) as writer:
        for i in range(128):
            writer.put(f"{i:08d}".encode(), value)
        assert not db.exists()  # nothing visible until the end
    env = lmdb.open(str(db), readonly=True, lock=False)
    assert env.stat()["entries"] == 128 and env.info()["map_size"] > 64 << 10
    env.close()
    assert leftovers(tmp_path) == []


def test_writer_removes_everything_on_failure(tmp_path):
    db = tmp_path / "db"
    with pytest.raises(RuntimeError, match="boom"):
        with LmdbWriter(str(db)) as writer:
            writer.put(b"a", b"1")
            raise RuntimeError("boom")
    assert not db.exists() and leftovers(tmp_path) == []


def test_writer_destination_rules(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with LmdbWriter(str(empty)) as writer:  # an empty folder is taken over
        writer.put(b"k", b"v")
    assert sorted(os.listdir(empty)) == ["data.mdb", "lock.mdb"]
    with pytest.raises(DatasetError, match="already exists"):
        LmdbWriter(str(empty))
    with pytest.raises(DatasetError, match="does not exist"):
        LmdbWriter(str(tmp_path / "no" / "db"))
    with LmdbWriter(str(tmp_path / "k")) as writer:
        with pytest.raises(DatasetError, match="key .* has 600 bytes"):
            writer.put(b"x" * 600, b"v")


def test_image_to_datum_takes_arrays_and_pil_images_in_rgb():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 7
    for image in (rgb, Image.fromarray(rgb)):
        datum = image_to_datum(image, 5)
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 2, 3, 5)
        assert np.array_equal(planar(datum)[:, 0, 0], [7, 0, 255])
    encoded = image_to_datum(rgb, 1, encoded=True)
    assert encoded.encoded and np.array_equal(decode(encoded.data), rgb)
    gray = image_to_datum(rgb, 1, gray=True, encode_type="png")
    assert decode(gray.data).shape == (2, 3)


# ------------------------------------------------------------------------------------------- compute_image_mean
def test_mean_matches_caffe_on_the_mnist_fixture(tmp_path, capsys):
    out = tmp_path / "mean.binaryproto"
    assert main(["compute_image_mean", str(FIXTURES / "mnist_train_lmdb"), str(out)]) == 0
    ours, caffe = caffe_pb2.BlobProto(), caffe_pb2.BlobProto()
    ours.ParseFromString(out.read_bytes())
    caffe.ParseFromString((FIXTURES / "mean.binaryproto").read_bytes())
    assert (ours.num, ours.channels, ours.height, ours.width) == (1, 1, 28, 28) and not ours.HasField("shape")
    np.testing.assert_allclose(np.array(ours.data), np.array(caffe.data), rtol=1e-6, atol=0)
    assert out.read_bytes() == (FIXTURES / "mean.binaryproto").read_bytes()  # in fact identical, byte for byte
    lines = messages(capsys.readouterr().err)
    assert "Number of channels: 1" in lines and lines[-1] == "mean_value channel [0]: 32.8915"


def test_mean_of_colour_images_is_per_bgr_pixel(images, tmp_path, capsys):
    root, listfile, pixels = images
    listfile.write_text("red.png 1\nsub/noise.png 2\n")
    for flags, db in (([], "raw"), (["--encoded"], "enc")):
        assert convert(images, tmp_path / db, *flags) == 0
        assert main(["compute_image_mean", str(tmp_path / db), str(tmp_path / f"{db}.binaryproto")]) == 0
        blob = caffe_pb2.BlobProto()
        blob.ParseFromString((tmp_path / f"{db}.binaryproto").read_bytes())
        expected = (bgr(pixels["red.png"]).astype(np.float32) + bgr(pixels["sub/noise.png"])) / 2
        assert (blob.channels, blob.height, blob.width) == (3, 4, 6)
        assert np.array_equal(np.array(blob.data, np.float32).reshape(3, 4, 6), expected)
    lines = messages(capsys.readouterr().err)
    assert [m.split(":")[0] for m in lines if m.startswith("mean_value")][-3:] == \
        ["mean_value channel [0]", "mean_value channel [1]", "mean_value channel [2]"]


def test_mean_refuses_mixed_sizes_and_empty_dbs(tmp_path, capsys):
    db = tmp_path / "mixed"
    with LmdbWriter(str(db)) as writer:
        writer.put(b"00000000_a", image_to_datum(np.zeros((2, 2), np.uint8), 0, gray=True))
        writer.put(b"00000001_b", image_to_datum(np.zeros((3, 2), np.uint8), 0, gray=True))
    assert main(["compute_image_mean", str(db)]) == 1
    assert "key '00000001_b': the Datum is 1x3x2" in capsys.readouterr().err
    empty = tmp_path / "empty"
    LmdbWriter(str(empty)).close()
    assert main(["compute_image_mean", str(empty), str(tmp_path / "m")]) == 1
    assert "empty" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main(["compute_image_mean", "--backend=leveldb", str(db)]) == 1
    assert "leveldb is not supported" in capsys.readouterr().err
