"""Training curves: a valid PNG of the asked size, every curve on its own axis with its points, whatever the
data."""
import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from caffelike.digits.curves import LR_COLOR, PALETTE, plot_training, training_figure
from caffelike.errors import CaffeError

TRAIN = {"loss": [(i, 2.3 * math.exp(-i / 300) + 0.05) for i in range(0, 2001, 20)]}
TEST = {"loss": [(i, 2.3 * math.exp(-i / 300) + 0.1) for i in range(0, 2001, 250)],
        "accuracy": [(i, 1 - 0.9 * math.exp(-i / 200)) for i in range(0, 2001, 250)]}
LR = [(i, 0.01 * 0.1 ** (i // 1000)) for i in range(2001)]


def lines(fig, axis):
    return {line.get_label(): line for line in fig.caffelike_axes[axis].get_lines()}


def test_every_curve_in_its_panel_with_its_points():
    fig = training_figure(TRAIN, TEST, LR)
    curves, acc, lr = lines(fig, "curves"), lines(fig, "accuracy"), lines(fig, "lr")
    assert set(curves) == {"train loss", "test loss"} and set(acc) == {"test accuracy"}
    assert set(lr) == {"learning rate"}
    np.testing.assert_allclose(curves["train loss"].get_xydata(), TRAIN["loss"])
    np.testing.assert_allclose(acc["test accuracy"].get_xydata(), TEST["accuracy"])
    assert to_rgb(curves["train loss"].get_color()) == to_rgb(PALETTE[0])
    assert to_rgb(lr["learning rate"].get_color()) == to_rgb(LR_COLOR)
    assert to_rgb(LR_COLOR) not in {to_rgb(c) for c in PALETTE}
    # sparse test outputs get a marker at each point; the dense train loss does not
    assert curves["test loss"].get_marker() == "o" and curves["train loss"].get_marker() in (None, "None")
    assert fig.caffelike_axes["accuracy"].get_ylim() == (0, 1.0)
    assert fig.caffelike_axes["curves"].get_yscale() == "linear" and fig.caffelike_axes["curves"].get_ylim()[0] == 0
    assert fig.caffelike_axes["lr"].get_yscale() == "linear"  # 0.01 -> 0.001 is one decade


def test_scales_switch_to_log_and_percent():
    fig = training_figure({"loss": [(0, 1e6), (10, 1e-3)]}, {"acc": [(5, 97.0)]}, [(0, 0.1), (10, 1e-8)])
    assert fig.caffelike_axes["curves"].get_yscale() == "log"
    assert fig.caffelike_axes["lr"].get_yscale() == "log"
    assert fig.caffelike_axes["accuracy"].get_ylim() == (0, 100.0)
    assert fig.caffelike_axes["accuracy"].get_ylabel() == "accuracy (%)"


def test_png_of_the_asked_size_overwrite_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "c.png"
    path.write_bytes(b"old")
    plot_training(str(path), TRAIN, TEST, LR)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (900, 600)
    plot_training(str(path), TRAIN, {}, [], size=(640, 400))
    with Image.open(path) as im:
        assert im.size == (640, 400)
        colours = np.asarray(im.convert("RGB")).reshape(-1, 3)
    blue = np.array(to_rgb(PALETTE[0])) * 255
    assert (np.abs(colours - blue).max(axis=1) < 8).sum() > 300  # the train loss is drawn
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
    fig = training_figure(train, test, lr)
    finite = [(x, y) for series in train.values() for x, y in series if math.isfinite(y)]
    if finite:
        assert len(lines(fig, "curves")["train loss"].get_xydata()) == len(finite)
