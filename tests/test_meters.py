"""Meters: each summary against its formula, with numpy as the reference."""
import math

import numpy as np
import pytest
import torch

from caffelike.train.meters import AverageValueMeter, ClassErrorMeter, ConfusionMeter, MeterError, MovingAverageMeter


# ------------------------------------------------------------------------------------------- AverageValueMeter
def test_average_is_the_weighted_mean_and_unbiased_std():
    rng = np.random.default_rng(0)
    values, weights = rng.normal(3, 2, 20), rng.integers(1, 5, 20)
    meter = AverageValueMeter()
    for v, n in zip(values, weights):
        meter.add(v, n)
    expanded = np.repeat(values, weights)
    mean, std = meter.value()
    assert mean == pytest.approx(expanded.mean(), rel=1e-12)
    assert std == pytest.approx(expanded.std(ddof=1), rel=1e-12)
    assert meter.n == weights.sum() and meter.last == values[-1]


def test_average_stays_accurate_for_large_close_values():
    meter = AverageValueMeter()
    for v in (1e9 + 1, 1e9 + 2, 1e9 + 3):
        meter.add(v)
    assert meter.value() == pytest.approx((1e9 + 2, 1.0), rel=1e-12)


def test_average_edge_cases_and_inputs():
    meter = AverageValueMeter()
    assert all(math.isnan(x) for x in meter.value())
    meter.add(torch.tensor(2.5))
    assert meter.value() == (2.5, math.inf)
    meter.add(np.float32(3.5))
    assert meter.value()[0] == 3.0
    meter.reset()
    assert meter.n == 0 and math.isnan(meter.value()[0])
    with pytest.raises(MeterError, match="one number"):
        meter.add([1.0, 2.0])
    with pytest.raises(MeterError, match="positive"):
        meter.add(1.0, 0)


# ------------------------------------------------------------------------------------------ MovingAverageMeter
def caffe_smoothed(losses, window):
    """Solver::UpdateSmoothedLoss written out with Caffe's float arithmetic."""
    f = np.float32
    kept, smoothed = [], f(0)
    for i, loss in enumerate(map(f, losses)):
        if len(kept) < window:
            kept.append(loss)
            smoothed = f((smoothed * f(len(kept) - 1) + loss) / f(len(kept)))
        else:
            smoothed = f(smoothed + (loss - kept[i % window]) / f(window))
            kept[i % window] = loss
    return float(smoothed)


@pytest.mark.parametrize("window", [1, 3, 20], ids=["w1", "w3", "w20"])
def test_moving_average_is_caffes_smoothed_loss(window):
    losses = np.random.default_rng(window).random(50) * 3
    meter = MovingAverageMeter(window)
    for i, loss in enumerate(losses):
        meter.add(loss)
        assert meter.value() == caffe_smoothed(losses[:i + 1], window)  # bit for bit, in float32
        tail = losses[max(0, i + 1 - window):i + 1]
        assert meter.value() == pytest.approx(tail.mean(), rel=1e-5)  # and it is the mean of the last window


def test_moving_average_reset_and_bad_window():
    meter = MovingAverageMeter(2)
    assert meter.value() == 0.0
    meter.add(torch.tensor([4.0]))
    meter.add(2.0)
    meter.add(6.0)
    assert meter.value() == 4.0
    meter.reset()
    meter.add(1.0)
    assert meter.value() == 1.0
    with pytest.raises(MeterError, match="at least 1"):
        MovingAverageMeter(0)


# --------------------------------------------------------------------------------------------- ClassErrorMeter
SCORES = np.array([[0.1, 0.7, 0.2],    # true 1: top-1 right
                   [0.5, 0.3, 0.2],    # true 2: third, top-3 only
                   [0.2, 0.5, 0.3],    # true 2: second
                   [0.4, 0.4, 0.2]])   # true 0: tied with class 1 -> counts against (Caffe's rule)
TARGETS = np.array([1, 2, 2, 0])


def test_class_error_topk_in_percent():
    meter = ClassErrorMeter(topk=(1, 2, 3))
    meter.add(SCORES, TARGETS)
    assert meter.value() == [75.0, 25.0, 0.0]
    assert meter.value(2) == 25.0
    accuracy = ClassErrorMeter(topk=(1, 2), accuracy=True)
    accuracy.add(torch.tensor(SCORES[:2]), torch.tensor(TARGETS[:2]))
    accuracy.add(SCORES[2:], TARGETS[2:])
    assert accuracy.value() == [25.0, 75.0] and accuracy.n == 4


def test_class_error_single_sample_ties_and_nan():
    meter = ClassErrorMeter(topk=(1,), accuracy=True)
    meter.add(np.array([0.0, 1.0]), [1])  # one sample as a 1-D score vector
    meter.add(np.ones((1, 4)), [3])  # all tied: wrong at top-1 whatever the order
    meter.add(np.array([[np.nan, 0.0]]), [0])
    assert meter.value(1) == pytest.approx(100 / 3)


def test_class_error_refuses_bad_input():
    meter = ClassErrorMeter(topk=(1, 5))
    assert math.isnan(meter.value(1))
    with pytest.raises(MeterError, match="class indices"):
        meter.add(SCORES, [0, 1, 2, 3])
    with pytest.raises(MeterError, match="N = len"):
        meter.add(SCORES, [0, 1])
    with pytest.raises(MeterError, match="not one of topk"):
        meter.value(2)
    meter.add(SCORES, TARGETS)
    meter.reset()
    assert meter.n == 0


# ---------------------------------------------------------------------------------------------- ConfusionMeter
def test_confusion_counts_rows_true_columns_predicted():
    meter = ConfusionMeter(3)
    meter.add(SCORES, TARGETS)  # argmax: 1, 0, 1, 0 (first index on the tie)
    expected = np.zeros((3, 3), np.int64)
    for t, p in zip(TARGETS, (1, 0, 1, 0)):
        expected[t, p] += 1
    assert np.array_equal(meter.value(), expected)
    meter.add(torch.tensor([2, 2]), np.eye(3)[[2, 0]])  # labels, and one-hot targets
    expected[2, 2] += 1
    expected[0, 2] += 1
    assert np.array_equal(meter.value(), expected)


def test_confusion_normalized_rows_sum_to_one():
    meter = ConfusionMeter(3, normalized=True)
    meter.add([0, 1, 1, 0], [0, 0, 1, 1])
    assert np.allclose(meter.value(), [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 0]])  # no class-2 samples: zero row
    meter.reset()
    assert not meter.value().any()


def test_confusion_refuses_bad_input():
    meter = ConfusionMeter(2)
    with pytest.raises(MeterError, match="class indices"):
        meter.add([0, 2], [0, 1])
    with pytest.raises(MeterError, match="columns"):
        meter.add(np.zeros((2, 3)), [0, 1])
    with pytest.raises(MeterError, match="one-hot"):
        meter.add([0, 1], np.array([[0.5, 0.5], [0, 1]]))
    with pytest.raises(MeterError, match="2 predictions but 3"):
        meter.add([0, 1], [0, 1, 1])
