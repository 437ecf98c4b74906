"""Meters: running summaries of values seen during training or testing, in the manner of torchnet's meters.

Each meter has `add(...)`, `value()` and `reset()`, and accepts Python numbers, numpy arrays or torch tensors
(on any device).  `MovingAverageMeter` is Caffe's smoothed loss; `ClassErrorMeter` counts ties as Caffe's
Accuracy layer does.
"""
from __future__ import annotations

import math

import numpy as np

from caffelike.errors import CaffeError


class MeterError(CaffeError, ValueError):
    """A meter given values of the wrong shape or kind."""


def _numpy(x) -> np.ndarray:
    """A numpy view of a number, sequence, array or torch tensor (detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _scalar(value, who: str) -> float:
    """One number from a number, a one-element array or a one-element tensor."""
    arr = _numpy(value)
    if arr.size != 1:
        raise MeterError(f"{who} takes one number, got shape {arr.shape} (reduce a batch to its mean first)")
    return float(arr.reshape(-1)[0])


class AverageValueMeter:
    """Mean and standard deviation of weighted values.

    `add(value, n)` records `value` as the mean of `n` observations (a batch's mean loss with its batch size),
    so the result is what adding `value` n times would give.  `value()` is (mean, std) with the unbiased
    (n − 1) standard deviation; (nan, nan) before any value and (mean, inf) after a single observation, as in
    torchnet.  The variance is accumulated with Chan's update, which stays accurate when the values are large
    and close together.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.n = 0.0
        self.mean = 0.0
        self._m2 = 0.0  # sum of squared deviations from the mean
        self.last = math.nan

    def add(self, value, n: float = 1) -> None:
        value = _scalar(value, "AverageValueMeter.add")
        if n <= 0:
            raise MeterError(f"AverageValueMeter.add: n must be positive, got {n}")
        total = self.n + n
        delta = value - self.mean
        self.mean += delta * n / total
        self._m2 += delta * delta * self.n * n / total
        self.n = total
        self.last = value

    def value(self) -> tuple[float, float]:
        if self.n == 0:
            return math.nan, math.nan
        if self.n <= 1:
            return self.mean, math.inf
        return self.mean, math.sqrt(max(self._m2, 0.0) / (self.n - 1))


class MovingAverageMeter:
    """Caffe's smoothed loss (Solver::UpdateSmoothedLoss, `average_loss` = window).

    Until `window` values have been seen it is their running mean, `s = (s·(k−1) + x)/k`; after that each new
    value replaces the oldest in a ring buffer and `s += (x − oldest)/window`.  The arithmetic is done in
    `dtype` (float32, Caffe's Dtype, by default), so the value matches the loss Caffe prints digit for digit.
    """

    def __init__(self, window: int, dtype=np.float32):
        if int(window) < 1:
            raise MeterError(f"MovingAverageMeter: window (average_loss) must be at least 1, got {window}")
        self.window = int(window)
        self.dtype = np.dtype(dtype).type
        self.reset()

    def reset(self) -> None:
        self._values: list = []
        self._seen = 0
        self._smoothed = self.dtype(0)

    def add(self, value) -> None:
        x = self.dtype(_scalar(value, "MovingAverageMeter.add"))
        if len(self._values) < self.window:
            self._values.append(x)
            k = len(self._values)
            self._smoothed = self.dtype((self._smoothed * self.dtype(k - 1) + x) / self.dtype(k))
        else:
            idx = self._seen % self.window
            self._smoothed = self.dtype(self._smoothed + (x - self._values[idx]) / self.dtype(self.window))
            self._values[idx] = x
        self._seen += 1

    def value(self) -> float:
        """The smoothed value (0 before any value, as Caffe's smoothed_loss_ starts)."""
        return float(self._smoothed)


class ClassErrorMeter:
    """Top-k classification error (or accuracy) in percent, for each k in `topk`.

    `add(scores, targets)`: scores (N, C) (or (C,) for one sample), targets (N,) class indices.  A sample
    counts as right at k when fewer than k other classes score at least as high as the true class: Caffe's
    Accuracy rule, under which ties count against the prediction and no arbitrary tie order enters.
    """

    def __init__(self, topk=(1, 5), accuracy: bool = False):
        self.topk = tuple(sorted(int(k) for k in topk))
        if not self.topk or self.topk[0] < 1:
            raise MeterError(f"ClassErrorMeter: topk must hold positive integers, got {topk}")
        self.accuracy = accuracy
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._correct = {k: 0 for k in self.topk}

    def add(self, scores, targets) -> None:
        scores = _numpy(scores).astype(np.float64, copy=False)
        targets = _numpy(targets)
        if scores.ndim == 1:
            scores = scores[None]
        targets = targets.reshape(-1)
        if scores.ndim != 2 or scores.shape[0] != targets.shape[0]:
            raise MeterError(f"ClassErrorMeter.add: scores must be (N, C) with N = len(targets); got scores "
                             f"{scores.shape} and {targets.shape[0]} targets")
        labels = targets.astype(np.int64)
        if np.any(labels != targets) or np.any(labels < 0) or np.any(labels >= scores.shape[1]):
            raise MeterError(f"ClassErrorMeter.add: targets must be class indices in [0, {scores.shape[1]}); got "
                             f"values from {targets.min()} to {targets.max()}")
        true_score = scores[np.arange(len(labels)), labels]
        rivals = (scores >= true_score[:, None]).sum(axis=1) - 1  # other classes at least as high
        rivals[np.isnan(true_score)] = scores.shape[1]  # a NaN score is never right (Caffe would count it right)
        for k in self.topk:
            self._correct[k] += int((rivals < k).sum())
        self.n += len(labels)

    def value(self, k: int | None = None):
        """The percentage at `k`, or a list over `topk` when k is None (nan before any sample)."""
        if k is None:
            return [self.value(kk) for kk in self.topk]
        if k not in self._correct:
            raise MeterError(f"ClassErrorMeter.value: k={k} is not one of topk={self.topk}")
        if self.n == 0:
            return math.nan
        acc = 100.0 * self._correct[k] / self.n
        return acc if self.accuracy else 100.0 - acc


class ConfusionMeter:
    """A k×k confusion matrix: row = true class, column = predicted class.

    `add(predicted, targets)`: predicted is (N, k) scores (the argmax is the prediction, the first index on
    ties) or (N,) class indices; targets is (N,) class indices or (N, k) one-hot.  With `normalized`,
    `value()` divides each row by its total (rows with no samples stay 0).
    """

    def __init__(self, k: int, normalized: bool = False):
        if int(k) < 1:
            raise MeterError(f"ConfusionMeter: k must be at least 1, got {k}")
        self.k = int(k)
        self.normalized = normalized
        self.reset()

    def reset(self) -> None:
        self.conf = np.zeros((self.k, self.k), dtype=np.int64)

    def add(self, predicted, targets) -> None:
        predicted = self._labels(_numpy(predicted), "predicted")
        targets = self._labels(_numpy(targets), "targets", one_hot=True)
        if predicted.shape != targets.shape:
            raise MeterError(f"ConfusionMeter.add: {predicted.size} predictions but {targets.size} targets")
        self.conf += np.bincount(targets * self.k + predicted, minlength=self.k * self.k).reshape(self.k, self.k)

    def _labels(self, x: np.ndarray, what: str, one_hot: bool = False) -> np.ndarray:
        if x.ndim == 2:
            if x.shape[1] != self.k:
                raise MeterError(f"ConfusionMeter.add: {what} has {x.shape[1]} columns, expected k={self.k}")
            if one_hot and (np.any((x != 0) & (x != 1)) or np.any(x.sum(axis=1) != 1)):
                raise MeterError(f"ConfusionMeter.add: 2-D {what} must be one-hot rows")
            return x.argmax(axis=1).astype(np.int64)
        x = x.reshape(-1)
        labels = x.astype(np.int64)
        if np.any(labels != x) or np.any(labels < 0) or np.any(labels >= self.k):
            raise MeterError(f"ConfusionMeter.add: {what} must be class indices in [0, {self.k})")
        return labels

    def value(self) -> np.ndarray:
        if not self.normalized:
            return self.conf.copy()
        rows = self.conf.sum(axis=1, keepdims=True).astype(np.float64)
        return np.divide(self.conf, rows, out=np.zeros((self.k, self.k)), where=rows > 0)
