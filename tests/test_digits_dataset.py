"""DIGITS' image-classification dataset (caffelike.digits.dataset, `caffelike dataset create`): the 75/25 split
with Python 2 rounding, labels and list files, '%08d_%d' keys, Datum fields, exact PNG round trips, the mean
against numpy, MNIST inversion, IDX parsing, resize modes, and errors that leave nothing behind."""
import gzip
import json
import os
import struct

import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from PIL import Image

from caffelike.cli import main
from caffelike.data.bundled import mnist_5k
from caffelike.data.datum import DatumDB, datum_pixels, parse_datum
from caffelike.data.dbwriter import DatasetError
from caffelike.digits import dataset as dd

MNIST_TRAIN_CLASS_SIZES = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------------- helpers
def read_db(path):
    """[(key, Datum)] of an LMDB in key order (through DatumDB, which shares the process's one environment per
    database with any Data layer that has it open)."""
    db = DatumDB(str(path), where="test")
    try:
        return [(k.decode(), parse_datum(v)) for k, v in db]
    finally:
        db.close()


def read_mean(path):
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(path.read_bytes())
    return blob


def list_file(path):
    """[(path, label)] of a DIGITS list file."""
    rows = []
    for line in path.read_text().splitlines():
        p, label = line.rsplit(" ", 1)
        rows.append((p, int(label)))
    return rows


def index_of(virtual_path):
    """The source index in a virtual MNIST path '<label>/<index:05d>.png'."""
    return int(virtual_path.split("/")[1].split(".")[0])


def write_idx(path, array, gz=False):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def colour_folder(root, seed=0):
    """Three classes of RGB PNGs of assorted sizes; 'big_dog' shows the '_' -> ' ' rule."""
    rng = np.random.RandomState(seed)
    for name, count in (("cat", 4), ("big_dog", 5), ("emu", 4)):
        for i in range(count):
            h, w = rng.randint(5, 12, size=2)
            save_png(root / name / f"{i:02d}.png", rng.randint(0, 256, (h, w, 3)))
    return root


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    """The bundled digits, 8 per class, as the tutorial's dataset (inverted, gray, 28x28, PNG)."""
    out = tmp_path_factory.mktemp("bundled") / "ds"
    summary = dd.create_dataset(out, "bundled", max_per_class=8)
    return out, summary


# -------------------------------------------------------------------------------------------------- splitting
@pytest.mark.parametrize("x, expected", [(0.5, 1), (1.5, 2), (2.5, 3), (2.49, 2), (-2.5, -3), (5056.5, 5057),
                                         (0.49999999999999994, 0), (7.0, 7)])
def test_round_half_away_from_zero(x, expected):
    assert dd.round_half_away(x) == expected


def test_mnist_class_sizes_split_45002_train_14998_val():
    splits = [dd.split_sizes(n, 25) for n in MNIST_TRAIN_CLASS_SIZES]
    assert sum(a for a, _, _ in splits) == 45002
    assert sum(b for _, b, _ in splits) == 14998
    assert all(c == 0 for _, _, c in splits)
    # Python 3's banker's rounding would give DIGITS-under-Python-3's 44,999.
    assert sum(round(n * 0.75) for n in MNIST_TRAIN_CLASS_SIZES) == 44999


@pytest.mark.parametrize("size, val, test, expected", [
    (10, 25, 0, (8, 2, 0)),  # 7.5 -> 8, 2.5 -> 3, overshoot -> val 2
    (2, 25, 0, (1, 1, 0)),  # val would be empty: one image moves from train
    (1, 25, 0, (1, 0, 0)),
    (7, 0, 0, (7, 0, 0)),
    (4, 25, 25, (2, 1, 1)),
    (3, 10, 10, (1, 1, 1)),
], ids=["overshoot", "two-images", "one-image", "no-val", "three-way", "tiny-three-way"])
def test_split_sizes_follow_three_way_split_indices(size, val, test, expected):
    assert dd.split_sizes(size, val, test) == expected


def test_percentages_are_checked(tmp_path):
    with pytest.raises(DatasetError, match="percentages"):
        dd.split_sizes(10, 60, 50)
    with pytest.raises(DatasetError, match="no training images"):
        dd.create_dataset(tmp_path / "ds", "bundled", val_percent=100)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------- bundled digits
def test_bundled_dataset_files_counts_and_summary(bundled):
    out, summary = bundled
    assert sorted(os.listdir(out)) == ["dataset.json", "labels.txt", "mean.binaryproto", "mean.jpg", "train.txt",
                                       "train_db", "val.txt", "val_db"]
    assert (out / "labels.txt").read_text() == "".join(f"{d}\n" for d in range(10))
    assert summary["counts"] == {"train": 60, "val": 20}  # 8 per class: round(6) train, round(2) val
    assert summary["per_class"]["3"] == {"train": 6, "val": 2}
    assert (summary["channels"], summary["height"], summary["width"]) == (1, 28, 28)
    assert summary["inverted"] is True and summary["encoding"] == "png"
    saved = json.loads((out / "dataset.json").read_text())
    assert saved == {k: v for k, v in summary.items() if k != "path"}
    train, val = list_file(out / "train.txt"), list_file(out / "val.txt")
    assert len(train) == 60 and len(val) == 20
    # Class by class, as parse_folder writes them; the virtual path names the digit's folder and index.
    assert [label for _, label in train] == sorted(label for _, label in train)
    _, labels = mnist_5k()
    for path, label in train + val:
        assert path == f"{label}/{index_of(path):05d}.png" and labels[index_of(path)] == label


def test_keys_and_datum_fields_are_digits(bundled):
    out, _ = bundled
    for split, n in (("train", 60), ("val", 20)):
        records = read_db(out / f"{split}_db")
        assert [k.split("_")[0] for k, _ in records] == [f"{i:08d}" for i in range(n)]
        for key, datum in records:
            assert key == f"{int(key[:8]):08d}_{datum.label}"
            assert (datum.channels, datum.height, datum.width, datum.encoded) == (1, 28, 28, True)
            assert datum.data.startswith(PNG_SIGNATURE) and not datum.float_data


def test_records_decode_to_the_inverted_digits_exactly(bundled):
    out, _ = bundled
    images, _ = mnist_5k()
    for split in ("train", "val"):
        expected = sorted((255 - images[index_of(p)]).tobytes() for p, _ in list_file(out / f"{split}.txt"))
        decoded = []
        for key, datum in read_db(out / f"{split}_db"):
            pixels = datum_pixels(datum, where=key)
            assert pixels.shape == (1, 28, 28) and pixels.dtype == np.uint8
            decoded.append(pixels[0].tobytes())
        assert sorted(decoded) == expected
    # black digits on white: the border is white
    first = datum_pixels(read_db(out / "train_db")[0][1])
    assert first[0, 0, 0] == 255 and first.min() < 64


def test_mean_is_the_rounded_numpy_mean_of_the_training_images(bundled):
    out, _ = bundled
    images, _ = mnist_5k()
    train = np.stack([255 - images[index_of(p)] for p, _ in list_file(out / "train.txt")]).astype(np.float64)
    expected = np.around(train.sum(0) / len(train)).astype(np.uint8)
    blob = read_mean(out / "mean.binaryproto")
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 28, 28) and not blob.HasField("shape")
    np.testing.assert_array_equal(np.asarray(blob.data, np.float32).reshape(28, 28), expected.astype(np.float32))
    with Image.open(out / "mean.jpg") as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "L", (28, 28))
        assert np.abs(np.asarray(im, np.int16) - expected).max() <= 16  # JPEG is lossy


def test_a_caffe_data_layer_reads_the_dataset_with_its_mean(bundled):
    from google.protobuf import text_format

    import caffelike as caffe

    out, _ = bundled
    text = (f'layer {{ name: "d" type: "Data" top: "data" top: "label" transform_param {{ mean_file: '
            f'"{out / "mean.binaryproto"}" }} data_param {{ source: "{out / "train_db"}" batch_size: 4 '
            'backend: LMDB } }')
    net = caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), caffe.TEST)
    net.forward()
    records = read_db(out / "train_db")[:4]
    mean = np.asarray(read_mean(out / "mean.binaryproto").data, np.float32).reshape(1, 28, 28)
    expected = np.stack([datum_pixels(d).astype(np.float32) - mean for _, d in records])
    np.testing.assert_array_equal(net.blobs["data"].data, expected)
    np.testing.assert_array_equal(net.blobs["label"].data, [d.label for _, d in records])


def test_no_invert_keeps_white_digits_on_black(tmp_path):
    summary = dd.create_dataset(tmp_path / "ds", "bundled", max_per_class=3, invert=False)
    assert summary["inverted"] is False
    images, _ = mnist_5k()
    expected = sorted(images[index_of(p)].tobytes() for p, _ in list_file(tmp_path / "ds" / "train.txt"))
    assert sorted(datum_pixels(d)[0].tobytes() for _, d in read_db(tmp_path / "ds" / "train_db")) == expected


def test_seed_makes_the_dataset_reproducible(tmp_path):
    a = dd.create_dataset(tmp_path / "a", "bundled", max_per_class=6, seed=3)
    b = dd.create_dataset(tmp_path / "b", "bundled", max_per_class=6, seed=3)
    c = dd.create_dataset(tmp_path / "c", "bundled", max_per_class=6, seed=4)
    assert a["counts"] == b["counts"] == c["counts"]
    for name in ("train.txt", "val.txt", "mean.binaryproto"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for db in ("train_db", "val_db"):
        assert [(k, d.SerializeToString()) for k, d in read_db(tmp_path / "a" / db)] == \
               [(k, d.SerializeToString()) for k, d in read_db(tmp_path / "b" / db)]
    assert (tmp_path / "a" / "train.txt").read_text() != (tmp_path / "c" / "train.txt").read_text()


def test_colour_mnist_replicates_the_gray_channel(tmp_path):
    dd.create_dataset(tmp_path / "ds", "bundled", max_per_class=2, image_type="color", val_percent=50)
    _, datum = read_db(tmp_path / "ds" / "train_db")[0]
    assert datum.channels == 3
    pixels = datum_pixels(datum)
    assert pixels.shape == (3, 28, 28) and (pixels == pixels[:1]).all()
    assert read_mean(tmp_path / "ds" / "mean.binaryproto").channels == 3


def test_cli_creates_the_bundled_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["dataset", "create", "--out", str(out), "--max-per-class", "4", "--seed", "1"]) == 0
    assert "30 train, 10 val images in 10 classes, 28x28 grayscale" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["source"]["type"] == "bundled"


# ---------------------------------------------------------------------------------------------------- folders
def expected_rgb(path, height, width):
    return np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR))


def test_colour_folder_labels_datums_and_bgr_mean(tmp_path):
    root = colour_folder(tmp_path / "images")
    summary = dd.create_dataset(tmp_path / "ds", dd.FolderSource(root), size="6x8")
    out = tmp_path / "ds"
    assert (out / "labels.txt").read_text() == "big dog\ncat\nemu\n"
    assert summary["image_type"] == "color" and summary["inverted"] is False
    assert summary["counts"] == {"train": 3 + 4 + 3, "val": 1 + 1 + 1}  # 5 -> 4/1 (3.75, 1.25); 4 -> 3/1
    train = list_file(out / "train.txt")
    assert all(os.path.isabs(p) and p.startswith(str(root)) for p, _ in train)
    assert {label for p, label in train if "/big_dog/" in p} == {0}
    by_pixels = {}
    for p, label in train:
        by_pixels[expected_rgb(p, 6, 8)[:, :, ::-1].transpose(2, 0, 1).tobytes()] = label
    records = read_db(out / "train_db")
    for key, datum in records:
        assert (datum.channels, datum.height, datum.width, datum.encoded) == (3, 6, 8, True)
        assert by_pixels[datum_pixels(datum).tobytes()] == datum.label  # PNG in RGB, decoded to Caffe's BGR
    mean_rgb = np.around(np.mean([expected_rgb(p, 6, 8).astype(np.float64) for p, _ in train], axis=0))
    blob = read_mean(out / "mean.binaryproto")
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 6, 8)
    np.testing.assert_array_equal(np.asarray(blob.data).reshape(3, 6, 8), mean_rgb.transpose(2, 0, 1)[::-1])


def test_grayscale_folder_and_transparency_on_white(tmp_path):
    root = tmp_path / "images"
    for name in ("a", "b"):
        for i in range(2):
            rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black ...
            rgba[0, 0] = (10, 20, 30, 255)  # ... but one opaque pixel
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgba, "RGBA").save(path)
    dd.create_dataset(tmp_path / "ds", dd.FolderSource(root), size=(4, 4), image_type="grayscale",
                      val_percent=50)
    _, datum = read_db(tmp_path / "ds" / "train_db")[0]
    pixels = datum_pixels(datum)
    assert pixels.shape == (1, 4, 4)
    assert pixels[0, 1, 1] == 255  # composited on white, as DIGITS' load_image
    assert pixels[0, 0, 0] == np.asarray(Image.fromarray(np.uint8([[[10, 20, 30]]])).convert("L"))[0, 0]


def test_min_per_class_leaves_small_classes_out(tmp_path):
    root = colour_folder(tmp_path / "images")
    save_png(root / "ant" / "only.png", np.zeros((5, 5, 3)))
    summary = dd.create_dataset(tmp_path / "ds", dd.FolderSource(root), size="5x5")
    assert summary["labels"] == ["big dog", "cat", "emu"] and summary["skipped_classes"] == ["ant"]
    assert {label for _, label in list_file(tmp_path / "ds" / "train.txt")} == {0, 1, 2}


def test_max_per_class_and_a_test_split(tmp_path):
    root = colour_folder(tmp_path / "images")
    summary = dd.create_dataset(tmp_path / "ds", dd.FolderSource(root), size="5x5", max_per_class=4,
                                val_percent=25, test_percent=25)
    assert summary["counts"] == {"train": 6, "val": 3, "test": 3}
    assert len(read_db(tmp_path / "ds" / "test_db")) == 3 and (tmp_path / "ds" / "test.txt").exists()


@pytest.mark.parametrize("encoding", ["none", "jpg"])
def test_raw_and_jpeg_encodings(tmp_path, encoding):
    root = colour_folder(tmp_path / "images")
    dd.create_dataset(tmp_path / "ds", dd.FolderSource(root), size="6x8", encoding=encoding)
    train = list_file(tmp_path / "ds" / "train.txt")
    expected = {expected_rgb(p, 6, 8)[:, :, ::-1].transpose(2, 0, 1).tobytes() for p, _ in train}
    for _, datum in read_db(tmp_path / "ds" / "train_db"):
        assert (datum.channels, datum.height, datum.width) == (3, 6, 8)
        if encoding == "none":
            assert not datum.encoded and datum.data in expected  # planar BGR bytes
        else:
            assert datum.encoded and datum.data[:2] == b"\xff\xd8"


# ----------------------------------------------------------------------------------------------- resize modes
def test_crop_keeps_the_middle():
    image = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8)
    out = dd.resize_image(Image.fromarray(image), 4, 4, "crop")
    np.testing.assert_array_equal(out, image[:, 2:6])
    tall = dd.resize_image(Image.fromarray(image.T.copy()), 4, 4, "crop")
    np.testing.assert_array_equal(tall, image.T[2:6])


def test_squash_is_pillow_bilinear():
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (9, 13, 3)).astype(np.uint8))
    np.testing.assert_array_equal(dd.resize_image(image, 5, 7), np.asarray(image.resize((7, 5), Image.BILINEAR)))


@pytest.mark.parametrize("mode", ["fill", "half_crop"])
def test_fill_modes_pad_with_seeded_noise(mode):
    image = Image.fromarray(np.full((4, 8), 200, np.uint8))
    a = dd.resize_image(image, 8, 8, mode, np.random.RandomState(1))
    b = dd.resize_image(image, 8, 8, mode, np.random.RandomState(1))
    assert a.shape == (8, 8) and (a == b).all()
    pad = 2 if mode == "fill" else 1  # fill: 4x8 fits as is; half_crop: 5x11 (+1 row for parity), cut to 8 wide
    np.testing.assert_array_equal(a[:pad], a[-pad:])  # the same noise block on both sides, as DIGITS
    assert (a[pad:-pad] == 200).all()


# -------------------------------------------------------------------------------------------------- IDX files
def mnist_like(n_per_class=5, classes=3, seed=0):
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(classes), n_per_class).astype(np.uint8)
    rng.shuffle(labels)
    return rng.randint(0, 256, (len(labels), 6, 5)).astype(np.uint8), labels


@pytest.mark.parametrize("names, gz", [
    (("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"), True),
    (("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), False),
    (("train-images.bin", "train-labels.bin"), False),  # DIGITS' gunzipped copies
], ids=["lecun-gz", "lecun-plain", "digits-bin"])
def test_mnist_idx_folder_is_read_and_inverted(tmp_path, names, gz):
    images, labels = mnist_like()
    write_idx(tmp_path / names[0], images, gz)
    write_idx(tmp_path / names[1], labels, gz)
    out = tmp_path / "ds"
    assert main(["dataset", "create", "--out", str(out), "--mnist-idx", str(tmp_path), "--size", "6x5"]) == 0
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["source"]["type"] == "mnist-idx" and summary["source"]["part"] == "train"
    assert summary["counts"] == {"train": 12, "val": 3} and summary["labels"] == ["0", "1", "2"]
    for split in ("train", "val"):
        expected = sorted((255 - images[index_of(p)]).tobytes() for p, _ in list_file(out / f"{split}.txt"))
        assert sorted(datum_pixels(d)[0].tobytes() for _, d in read_db(out / f"{split}_db")) == expected


def test_explicit_idx_files_and_no_invert(tmp_path):
    images, labels = mnist_like(n_per_class=4, classes=2)
    write_idx(tmp_path / "imgs.idx", images)
    write_idx(tmp_path / "labs.idx.gz", labels, gz=True)
    out = tmp_path / "ds"
    assert main(["dataset", "create", "--out", str(out), "--images", str(tmp_path / "imgs.idx"), "--labels",
                 str(tmp_path / "labs.idx.gz"), "--size", "6x5", "--no-invert", "--val-percent", "50"]) == 0
    decoded = {datum_pixels(d)[0].tobytes() for _, d in read_db(out / "train_db")}
    assert decoded <= {im.tobytes() for im in images}


def test_read_idx_shapes_and_errors(tmp_path):
    images, labels = mnist_like()
    write_idx(tmp_path / "i.gz", images, gz=True)
    np.testing.assert_array_equal(dd.read_idx(str(tmp_path / "i.gz")), images)
    (tmp_path / "bad").write_bytes(b"GIF89a....")
    with pytest.raises(DatasetError, match=r"bad: not an IDX file"):
        dd.read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"abc")
    with pytest.raises(DatasetError, match=r"short: an IDX array of shape \(10,\) needs 10 bytes"):
        dd.read_idx(str(tmp_path / "short"))
    write_idx(tmp_path / "l", labels[:-1])
    with pytest.raises(DatasetError, match=r"holds 15 images but .*l holds 14 labels"):
        dd.idx_source(str(tmp_path / "i.gz"), str(tmp_path / "l"))
    with pytest.raises(DatasetError, match="has none of train-images-idx3-ubyte"):
        dd.mnist_idx_source(str(tmp_path))


# ------------------------------------------------------------------------------------------------------ errors
def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere.* does not exist"):
        dd.create_dataset(tmp_path / "ds", dd.FolderSource(tmp_path / "nowhere"))
    flat = tmp_path / "flat"
    save_png(flat / "a.png", np.zeros((3, 3)))
    with pytest.raises(DatasetError, match=r"flat'? needs one sub-folder of images per class.*found none"):
        dd.create_dataset(tmp_path / "ds", dd.FolderSource(flat))
    empty = tmp_path / "empty"
    for name in ("a", "b"):
        (empty / name).mkdir(parents=True)
        (empty / name / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"empty'?: its class sub-folders hold no images"):
        dd.create_dataset(tmp_path / "ds", dd.FolderSource(empty))
    assert sorted(os.listdir(tmp_path)) == ["empty", "flat"]


def test_undecodable_image_names_the_file_and_leaves_nothing(tmp_path):
    root = colour_folder(tmp_path / "images")
    (root / "cat" / "broken.png").write_bytes(PNG_SIGNATURE + b"definitely not a PNG")
    parent = tmp_path / "out"
    parent.mkdir()
    with pytest.raises(DatasetError, match=r"cat/broken\.png: cannot decode the image"):
        dd.create_dataset(parent / "ds", dd.FolderSource(root), size="5x5")
    assert os.listdir(parent) == []  # neither the dataset nor its hidden staging folder


def test_existing_dataset_is_refused_or_replaced_whole(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        dd.create_dataset(out, "bundled", max_per_class=2)
    assert os.listdir(out) == ["keep.txt"]
    dd.create_dataset(out, "bundled", max_per_class=2, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and (out / "train_db").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["ds"]
    empty = tmp_path / "empty"
    empty.mkdir()
    dd.create_dataset(empty, "bundled", max_per_class=2)  # an empty folder may be filled
    assert (empty / "labels.txt").exists()


@pytest.mark.parametrize("option, message", [
    ({"size": "28by28"}, "not HEIGHTxWIDTH"),
    ({"size": (0, 28)}, "not HEIGHTxWIDTH"),
    ({"resize_mode": "zoom"}, "unknown resize mode 'zoom'"),
    ({"encoding": "gif"}, "unknown encoding 'gif'"),
    ({"image_type": "sepia"}, "unknown image type 'sepia'"),
    ({"min_per_class": 0}, "must be >= 1"),
    ({"max_per_class": 1}, "0 class\\(es\\) with at least 2 images"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, option, message):
    with pytest.raises(DatasetError, match=message):
        dd.create_dataset(tmp_path / "ds", "bundled", **option)
    assert os.listdir(tmp_path) == []


def test_cli_source_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["dataset", "create", "--out", str(tmp_path / "ds"), "--bundled", "--folder", str(tmp_path)])
    assert main(["dataset", "create", "--out", str(tmp_path / "ds"), "--labels", "x"]) == 1
    assert "--labels goes with --images" in capsys.readouterr().err
    assert main(["dataset", "create", "--out", str(tmp_path / "ds"), "--images", "x"]) == 1
    assert "--images needs --labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dataset"])
    assert not (tmp_path / "ds").exists()
