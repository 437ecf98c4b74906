"""DIGITS' generic (regression) datasets made from images and a label file
(caffelike.digits.generic_images.create_generic_image_dataset, `caffelike dataset create --generic --labels FILE`):
the images stored as the classification datasets store them, the values as label vectors beside them, errors
that name the file and line, and a Caffe net reading the pair."""
import json
import os

import lmdb
import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from PIL import Image

from caffelike.cli import main
from caffelike.data.datum import datum_to_array, parse_datum
from caffelike.data.dbwriter import DatasetError
from caffelike.digits.dataset import resize_image
from caffelike.digits.generic_images import (
    create_generic_image_dataset,
    read_label_file,
)
from caffelike.digits.model_files import write_model_files
from caffelike.net import Net


def read_db(path):
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        records = [(k.decode(), parse_datum(v)) for k, v in txn.cursor()]
    env.close()
    return records


def records(folder, split):
    """(key, image datum, label vector) of a split, the two LMDBs zipped by position."""
    images, labels = read_db(os.path.join(folder, f"{split}_db")), read_db(os.path.join(folder,
                                                                                       f"{split}_labels_db"))
    assert [k for k, _ in images] == [k for k, _ in labels] == [f"{i:08d}" for i in range(len(images))]
    return [(k, d, datum_to_array(v)) for (k, d), (_, v) in zip(images, labels)]


def mean_of(folder):
    blob = caffe_pb2.BlobProto()
    with open(os.path.join(folder, "mean.binaryproto"), "rb") as f:
        blob.ParseFromString(f.read())
    return np.array(blob.data).reshape(blob.channels, blob.height, blob.width)


@pytest.fixture
def colour_images(tmp_path):
    """Ten 6 x 8 RGB PNGs, img/<i>.png, and labels.txt: `img/<i>.png <i> <mean>` (plus a comment and a blank)."""
    rng = np.random.RandomState(0)
    (tmp_path / "img").mkdir()
    pixels, lines = [], ["# path index mean\n", "\n"]
    for i in range(10):
        a = rng.randint(0, 256, (6, 8, 3)).astype(np.uint8)
        Image.fromarray(a).save(tmp_path / "img" / f"{i}.png")
        pixels.append(a)
        lines.append(f"img/{i}.png {i} {a.mean():.4f}\n")
    (tmp_path / "labels.txt").write_text("".join(lines))
    return tmp_path / "labels.txt", pixels


def test_colour_images_round_trip(tmp_path, colour_images):
    """PNG-encoded BGR Datums at the images' own size, each beside its own values (K = 2, float32); the mean is
    the training images' rounded mean in BGR; 25% held out."""
    label_file, pixels = colour_images
    summary = create_generic_image_dataset(str(tmp_path / "ds"), str(label_file), seed=3)
    folder = summary["path"]
    assert sorted(os.listdir(folder)) == ["dataset.json", "mean.binaryproto", "train_db", "train_labels_db",
                                          "val_db", "val_labels_db"]
    with open(os.path.join(folder, "dataset.json")) as f:
        on_disk = json.load(f)
    assert on_disk["format"] == "digits-generic" and on_disk["generic"] is True
    assert (on_disk["channels"], on_disk["height"], on_disk["width"], on_disk["label_dim"]) == (3, 6, 8, 2)
    assert on_disk["counts"] == {"train": 7, "val": 3} and on_disk["encoding"] == "png"
    seen, train = [], []
    for split in ("train", "val"):
        for _, datum, label in records(folder, split):
            assert datum.encoded and label.shape == (2, 1, 1) and label.dtype == np.float64
            i = int(label[0, 0, 0])
            np.testing.assert_array_equal(datum_to_array(datum), pixels[i][:, :, ::-1].transpose(2, 0, 1))
            assert label[1, 0, 0] == np.float32(f"{pixels[i].mean():.4f}")
            seen.append(i)
            if split == "train":
                train.append(i)
    assert sorted(seen) == list(range(10))
    expected = np.around(np.mean([pixels[i] for i in train], axis=0, dtype=np.float64))
    np.testing.assert_array_equal(mean_of(folder), expected[:, :, ::-1].transpose(2, 0, 1))


def test_gray_csv_with_header_root_and_validation_file_from_the_command_line(tmp_path, capsys):
    """A CSV with a header and quoted paths (with spaces and commas), relative to --folder; a validation label
    file; grayscale, resized (squash, 4x5) exactly as the classification datasets resize, stored raw."""
    root = tmp_path / "pictures"
    root.mkdir()
    rng = np.random.RandomState(1)
    images = {}
    for name in ("a b.png", "c,d.jpg", "e.bmp", "f.png", "g.png"):
        images[name] = rng.randint(0, 256, (9, 7, 3)).astype(np.uint8)
        Image.fromarray(images[name]).save(root / name)
    (tmp_path / "train.csv").write_text('image,x,y\n"a b.png",1,-2.5\n"c,d.jpg",2,1e-3\ne.bmp, 3 ,4\n')
    (tmp_path / "val.csv").write_text("f.png,5,6\n\ng.png,7,8\n")
    out = tmp_path / "ds"
    assert main(["dataset", "create", "--generic", "--out", str(out), "--labels", str(tmp_path / "train.csv"),
                 "--folder", str(root), "--val-labels", str(tmp_path / "val.csv"), "--size", "4x5",
                 "--image-type", "grayscale", "--encoding", "none"]) == 0
    assert "3 train, 2 val images 4x5 grayscale, label vectors of 2" in capsys.readouterr().out
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["label_names"] == ["x", "y"] and summary["val_percent"] is None
    order = {"train": [("a b.png", [1, -2.5]), ("c,d.jpg", [2, 1e-3]), ("e.bmp", [3, 4])],
             "val": [("f.png", [5, 6]), ("g.png", [7, 8])]}  # a validation file keeps the files' order
    for split, expected in order.items():
        got = records(str(out), split)
        for (name, values), (_, datum, label) in zip(expected, got, strict=True):
            want = resize_image(Image.open(root / name).convert("L"), 4, 5, "squash")
            assert not datum.encoded
            np.testing.assert_array_equal(datum_to_array(datum), want[None])
            np.testing.assert_array_equal(label.ravel(), np.float32(values))


@pytest.mark.parametrize("text,message", [
    ("img/0.png 1 2\nimg/9.png 3 4\nimg/missing.png 5 6\n", r"labels.txt:3: image '.*missing.png' not found"),
    ("img/0.png 1 2\n\nimg/1.png 3\n", r"labels.txt:3: 1 label values, the first entry \(.*labels.txt:1\) has 2"),
    ("img/0.png 1 2\nimg/1.png 3 four\n", r"labels.txt:2: label value 'four' is not a number"),
    ("img/0.png 1 nan\n", r"labels.txt:1: label value 'nan' is not a finite number"),
    ("img/0.png\n", r"labels.txt:1: the image path 'img/0.png' has no label values"),
    ("# nothing\n\n", r"labels.txt: no entries"),
    ("img/0.png 1\nimg/bad.png 2\n", r"labels.txt:2: .*bad.png: cannot decode the image"),
], ids=["missing", "count", "number", "nan", "no-values", "empty", "unreadable"])
def test_errors_name_the_file_and_line(tmp_path, colour_images, text, message):
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    label_file = tmp_path / "labels.txt"
    label_file.write_text(text)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(DatasetError, match=message):
        create_generic_image_dataset(str(tmp_path / "ds"), str(label_file), val_percent=0)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no staging folder left


def test_validation_file_must_match_and_flags_must_fit(tmp_path, colour_images):
    label_file, _ = colour_images
    (tmp_path / "val.txt").write_text("img/0.png 1 2 3\n")
    with pytest.raises(DatasetError, match=r"val.txt:1: 3 label values, .*labels.txt has 2"):
        create_generic_image_dataset(str(tmp_path / "ds"), str(label_file), val_label_file=str(tmp_path /
                                                                                              "val.txt"))
    (tmp_path / "h.csv").write_text("path,a,b,c\nimg/0.png,1,2\n")
    with pytest.raises(DatasetError, match=r"h.csv:2: 2 label values, the header \(.*h.csv:1\) has 3"):
        read_label_file(str(tmp_path / "h.csv"))
    assert main(["dataset", "create", "--generic", "--out", str(tmp_path / "ds"), "--labels", str(label_file),
                 "--test-percent", "10"]) == 1
    assert main(["dataset", "create", "--generic", "--out", str(tmp_path / "ds"), "--inputs", "x.npy",
                 "--size", "4x4"]) == 1
    assert not (tmp_path / "ds").exists()


def test_caffe_net_reads_images_beside_their_values(tmp_path, colour_images):
    """DIGITS' model files on an image dataset: the label blob of each batch holds the values of the images in
    the data blob (value 1 is each image's mean, recomputed from the decoded BGR pixels)."""
    label_file, _ = colour_images
    folder = create_generic_image_dataset(str(tmp_path / "ds"), str(label_file), val_percent=30)["path"]
    network = tmp_path / "net.prototxt"
    network.write_text('layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param '
                       '{ num_output: 2 } }\nlayer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: '
                       '"label" top: "loss" exclude { stage: "deploy" } }\n')
    info = write_model_files(str(network), folder, str(tmp_path / "job"), batch_size=3, use_mean=False)
    for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        net = Net(info["files"]["train_val"], phase)
        for _ in range(3):
            net.forward()
            data, label = net.blobs["data"].data, net.blobs["label"].data
            assert data.shape == (3, 3, 6, 8) and label.shape == (3, 2, 1, 1)
            np.testing.assert_allclose(label[:, 1, 0, 0], data.reshape(3, -1).mean(axis=1), atol=1e-3)
