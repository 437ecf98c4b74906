"""DIGITS' separate validation and test image folders (create_dataset's val_folder / test_folder and the CLI's
--val-folder / --test-folder): every image of such a folder lands in its split, labelled by class name with
the training classes."""
import numpy as np
import pytest
from test_digits_dataset import colour_folder, list_file, read_db, save_png

import caffelike.digits.dataset as dd
from caffelike.cli import main
from caffelike.data.datum import datum_pixels
from caffelike.data.dbwriter import DatasetError


def val_folder(root, classes=("cat", "emu", "big_dog"), per_class=2):
    rng = np.random.RandomState(9)
    for name in classes:
        for i in range(per_class):
            save_png(root / name / f"v{i}.png", rng.randint(0, 256, (5, 5, 3)))
    return root


def test_every_image_of_a_separate_val_folder_goes_to_val_db_with_the_training_labels(tmp_path):
    train = colour_folder(tmp_path / "train")
    val = val_folder(tmp_path / "val", classes=("cat", "emu"))  # not every class needs validation images
    summary = dd.create_dataset(tmp_path / "ds", dd.FolderSource(train), size="5x5", val_folder=val)
    assert summary["labels"] == ["big dog", "cat", "emu"]
    assert summary["counts"] == {"train": 13, "val": 4}  # the whole training folder trains
    assert summary["val_percent"] == 0 and summary["separate_folders"] == {"val": str(val)}
    rows = list_file(tmp_path / "ds" / "val.txt")
    assert sorted((p.split("/")[-2], label) for p, label in rows) == [("cat", 1)] * 2 + [("emu", 2)] * 2
    records = read_db(tmp_path / "ds" / "val_db")
    assert sorted(d.label for _, d in records) == [1, 1, 2, 2]
    assert all(datum_pixels(d).shape == (3, 5, 5) for _, d in records)
    assert summary["per_class"]["cat"] == {"train": 4, "val": 2}


def test_a_separate_test_folder_and_a_val_percentage(tmp_path):
    train = colour_folder(tmp_path / "train")
    test = val_folder(tmp_path / "test")
    summary = dd.create_dataset(tmp_path / "ds", dd.FolderSource(train), size="5x5", val_percent=25,
                                test_folder=test)
    assert summary["counts"] == {"train": 10, "val": 3, "test": 6}
    assert sorted(d.label for _, d in read_db(tmp_path / "ds" / "test_db")) == [0, 0, 1, 1, 2, 2]


def test_a_class_the_training_set_lacks_is_an_error_that_names_it(tmp_path):
    train = colour_folder(tmp_path / "train")
    val = val_folder(tmp_path / "val", classes=("cat", "yak"))
    with pytest.raises(DatasetError, match=r"val folder .*class 'yak' is not one of the training classes"):
        dd.create_dataset(tmp_path / "ds", dd.FolderSource(train), size="5x5", val_folder=val)
    assert not (tmp_path / "ds").exists()  # nothing half-written


def test_a_folder_and_a_percentage_for_the_same_split_are_refused(tmp_path):
    train = colour_folder(tmp_path / "train")
    with pytest.raises(DatasetError, match="separate val set and a val percentage"):
        dd.create_dataset(tmp_path / "ds", dd.FolderSource(train), val_percent=10, val_folder=tmp_path / "v")


def test_cli_val_folder(tmp_path, capsys):
    train = colour_folder(tmp_path / "train")
    val = val_folder(tmp_path / "val")
    out = tmp_path / "ds"
    assert main(["dataset", "create", "--out", str(out), "--folder", str(train), "--size", "5x5",
                 "--val-folder", str(val)]) == 0
    assert "13 train, 6 val" in capsys.readouterr().out
    assert main(["dataset", "create", "--out", str(tmp_path / "g"), "--generic", "--labels", "x.txt",
                 "--val-folder", str(val)]) == 1
    assert "go with a classification dataset" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ DIGITS' text-file method
def list_files(tmp_path):
    """A labels file of three classes (the middle one without images) and train/val lists, relative paths."""
    images = tmp_path / "images"
    rng = np.random.RandomState(2)
    for name in ("a0", "a1", "a2", "c0", "c1", "v0", "v1"):
        save_png(images / f"{name}.png", rng.randint(0, 256, (6, 6, 3)))
    (tmp_path / "labels.txt").write_text("ant\nbee\ncow\n")
    (tmp_path / "train.txt").write_text("images/a0.png 0\nimages/a1.png 0\n\nimages/a2.png 0\nimages/c0.png 2\n"
                                        "images/c1.png 2\n")
    (tmp_path / "val.txt").write_text("images/v0.png 0\nimages/v1.png 2\n")
    return tmp_path


def test_text_file_lists_keep_the_labels_file_indexes(tmp_path):
    from caffelike.digits.list_source import ListSource
    root = list_files(tmp_path)
    train = ListSource(root / "train.txt", root / "labels.txt")
    val = ListSource(root / "val.txt", train.labels)
    summary = dd.create_dataset(tmp_path / "ds", train, size="6x6", val_folder=val)
    assert summary["labels"] == ["ant", "bee", "cow"]  # 'bee' has no images and keeps index 1
    assert summary["counts"] == {"train": 5, "val": 2} and summary["val_percent"] == 0
    assert sorted(d.label for _, d in read_db(tmp_path / "ds" / "train_db")) == [0, 0, 0, 2, 2]
    assert sorted(d.label for _, d in read_db(tmp_path / "ds" / "val_db")) == [0, 2]
    assert (tmp_path / "ds" / "labels.txt").read_text() == "ant\nbee\ncow\n"


@pytest.mark.parametrize("line,words", [("images/a0.png", "expected 'image-path label'"),
                                        ("images/a0.png x", "not a whole number"),
                                        ("images/a0.png 3", "outside the labels file's 3 classes"),
                                        ("images/none.png 0", "not found")])
def test_a_bad_list_line_is_named_by_file_and_line(tmp_path, line, words):
    from caffelike.digits.list_source import ListSource
    root = list_files(tmp_path)
    (root / "bad.txt").write_text(f"images/a1.png 0\n{line}\n")
    with pytest.raises(DatasetError, match=rf"bad\.txt:2: .*{words}"):
        dd.create_dataset(tmp_path / "ds", ListSource(root / "bad.txt", root / "labels.txt"), size="6x6")


def test_cli_text_file_method(tmp_path, capsys):
    root = list_files(tmp_path)
    out = tmp_path / "ds"
    assert main(["dataset", "create", "--out", str(out), "--train-list", str(root / "train.txt"), "--labels-file",
                 str(root / "labels.txt"), "--val-list", str(root / "val.txt"), "--size", "6x6"]) == 0
    assert "5 train, 2 val" in capsys.readouterr().out
    assert main(["dataset", "create", "--out", str(tmp_path / "x"), "--train-list", str(root / "train.txt")]) == 1
    assert "--labels-file" in capsys.readouterr().err
    assert main(["dataset", "create", "--out", str(tmp_path / "y"), "--val-list", str(root / "val.txt")]) == 1
    assert "go with --train-list" in capsys.readouterr().err
