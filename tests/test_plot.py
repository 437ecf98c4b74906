"""Training curves: a valid PNG of the asked size with the curves drawn where they belong, whatever the data."""
import math

import numpy as np
import pytest
from PIL import Image

from caffelike.digits.curves import LR_COLOR, PALETTE, Scale, nice_step, panel_boxes, plot_training
from caffelike.errors import CaffeError

TRAIN = {"loss": [(i, 2.3 * math.exp(-i / 300) + 0.05) for i in range(0, 2001, 20)]}
TEST = {"loss": [(i, 2.3 * math.exp(-i / 300) + 0.1) for i in range(0, 2001, 250)],
        "accuracy": [(i, 1 - 0.9 * math.exp(-i / 200)) for i in range(0, 2001, 250)]}
LR = [(i, 0.01 * 0.1 ** (i // 1000)) for i in range(2001)]


def pixels_of(path, color, box) -> int:
    """How many pixels inside `box` have exactly `color`."""
    left, top, right, bottom = box
    array = np.asarray(Image.open(path).convert("RGB"))[top:bottom + 1, left:right + 1]
    return int(np.all(array == color, axis=-1).sum())


def test_png_of_the_asked_size_with_every_curve_in_its_panel(tmp_path):
    path = tmp_path / "curves.png"
    plot_training(str(path), TRAIN, TEST, LR)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 600)
    boxes = panel_boxes((900, 600))
    train_loss, test_loss, test_acc = PALETTE[0], PALETTE[1], PALETTE[2]
    assert pixels_of(path, train_loss, boxes["curves"]) > 500  # a long curve, 2 px wide
    assert pixels_of(path, test_loss, boxes["curves"]) > 200
    assert pixels_of(path, test_acc, boxes["curves"]) > 200
    assert pixels_of(path, LR_COLOR, boxes["lr"]) > 500
    assert pixels_of(path, LR_COLOR, boxes["curves"]) == 0 and pixels_of(path, train_loss, boxes["lr"]) == 0
    # the loss starts high at the left edge: train-loss colour in the upper-left corner of the panel
    left, top, right, bottom = boxes["curves"]
    assert pixels_of(path, train_loss, (left, top, left + 30, top + (bottom - top) // 4)) > 0


def test_custom_size_and_overwrite_leave_no_temporary_files(tmp_path):
    path = tmp_path / "c.png"
    path.write_bytes(b"old")
    plot_training(str(path), TRAIN, {}, [], size=(640, 400))
    with Image.open(path) as im:
        assert im.size == (640, 400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]
    with pytest.raises(CaffeError, match="at least 300x200"):
        plot_training(str(path), TRAIN, {}, [], size=(100, 100))


@pytest.mark.parametrize("train, test, lr", [
    ({}, {}, []),
    ({"loss": [(0, 0.7)]}, {"accuracy": [(0, 0.1)]}, [(0, 0.01)]),
    ({"loss": [(0, float("nan")), (1, float("inf")), (2, 1.0), (3, -float("inf")), (4, 0.5)]}, {}, [(0, math.nan)]),
    ({"loss": [(0, 1e12), (100, 1e-9)]}, {"acc": [(50, 97.0)]}, [(0, 0.1), (100, 1e-8)]),
    ({"loss": [(0, -1e308), (1, 1e308)]}, {}, [(0, 0.0), (1, 0.0)]),
    ({"loss": [(i, 0.5) for i in range(100000)]}, {}, []),
], ids=["empty", "single-point", "nan-inf", "many-decades", "extreme", "long-constant"])
def test_any_data_gives_a_valid_png(tmp_path, train, test, lr):
    path = tmp_path / "c.png"
    plot_training(str(path), train, test, lr)
    with Image.open(path) as im:
        im.verify()
    finite = [y for series in train.values() for _, y in series if math.isfinite(y)]
    if finite:
        assert pixels_of(path, PALETTE[0], panel_boxes((900, 600))["curves"]) > 0


def test_nice_steps_and_scales():
    assert [nice_step(s, 5) for s in (1, 7, 30, 0.003)] == [0.2, 2.0, 10.0, 0.001]
    ticks = Scale(0, 1).ticks(6)
    assert [v for v, _ in ticks] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [t for _, t in ticks] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert Scale.fit([1e-6, 10.0]).log and not Scale.fit([1.0, 10.0]).log
    labels = [t for _, t in Scale(1e9, 1e9 + 10).ticks(6)]
    assert len(set(labels)) == len(labels)  # huge offsets still give distinct labels
    wide = Scale(-1e308, 1e308)
    assert wide.frac(0.0) == pytest.approx(0.5) and len(wide.ticks(6)) >= 3
    assert [v for v, _ in Scale(0, 3, integer=True).ticks(8)] == [0, 1, 2, 3]
