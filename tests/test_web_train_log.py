"""caffelike.web.train_log: Caffe's training log read into series, incrementally."""
import math

import pytest

from caffelike.web import train_log
from caffelike.web.train_log import TrainLog

LINES = """\
I1203 20:42:47.186047  1452 solver.py:91] Initializing solver from parameters:
test_iter: 2
max_iter: 60
lr_policy: "step"
I1203 20:42:47.441955  1452 solver.py:367] Iteration 0, Testing net (#0)
I1203 20:42:47.839956  1452 solver.py:344]     Test net output #0: accuracy = 0.09375
I1203 20:42:47.840068  1452 solver.py:344]     Test net output #1: loss = 2.5469 (* 1 = 2.5469 loss)
I1203 20:42:48.480251  1452 solver.py:284] Iteration 0 (0 iter/s, 1.038s/1 iters), loss = 2.51344
I1203 20:42:48.480464  1452 solver.py:344]     Train net output #0: loss = 2.51344 (* 1 = 2.51344 loss)
I1203 20:42:48.480544  1452 solver.py:406] Iteration 0, lr = 0.01
Iteration 5, loss = 99
a Python layer printing: Train net output #0: loss = 42
W1203 20:42:49.000000  1452 solver.py:1] something else entirely
I1203 20:42:58.480251  1452 solver.py:284] Iteration 10 (1 iter/s, 10s/10 iters), loss = nan
I1203 20:42:58.480464  1452 solver.py:344]     Train net output #0: loss = 1.5 (* 1 = 1.5 loss)
I1203 20:42:58.480544  1452 solver.py:406] Iteration 10, lr = 0.001
I1203 20:42:58.682668  1452 snapshot.py:67] Snapshotting to binary proto file snapshot_iter_10.caffemodel
I1203 20:42:59.055564  1452 solver.py:367] Iteration 10, Testing net (#1)
I1203 20:42:59.524688  1452 solver.py:344]     Test net output #0: accuracy = 0.5
"""


def test_the_parser_reads_caffe_lines_and_ignores_the_rest():
    log = TrainLog(year=2024)
    log.feed(LINES)
    assert log.max_iter == 60
    assert log.train == {"loss": [(0, 2.51344), (10, 1.5)]}
    assert log.display_loss[0] == (0, 2.51344) and len(log.display_loss) == 2  # unprefixed lines do not count
    assert math.isnan(log.display_loss[1][1])
    assert log.test == {"accuracy": [(0, 0.09375)], "loss": [(0, 2.5469)], "accuracy (#1)": [(10, 0.5)]}
    assert log.lr == [(0, 0.01), (10, 0.001)]
    assert log.snapshots == [(10, "snapshot_iter_10.caffemodel")]
    assert log.iteration == 10
    assert log.latest() == {"train": {"loss": 1.5}, "test": {"accuracy": 0.09375, "loss": 2.5469,
                                                              "accuracy (#1)": 0.5}, "lr": 0.001}
    # 10 iterations from 47.44 s to 59.06 s: about 1.16 s each, 50 to go
    now = log.last_time[1]
    assert log.remaining(60, now) == pytest.approx(50 * (now - log.first_time[1]) / 10)
    assert log.remaining(None, now) is None


def test_the_parser_is_incremental_and_waits_for_whole_lines(tmp_path):
    path = tmp_path / "job.log"
    text = LINES.encode()
    cut = text.index(b"Train net output #0: loss = 2.51344") + 20
    path.write_bytes(text[:cut])
    log = TrainLog(str(path))
    assert log.update()
    assert log.train == {} and log.display_loss == [(0, 2.51344)]
    version, offset = log.version, log.offset
    assert not log.update() and log.offset == offset  # nothing new: nothing parsed again
    with open(path, "ab") as f:
        f.write(text[cut:])
    assert log.update()
    assert log.train == {"loss": [(0, 2.51344), (10, 1.5)]} and log.version > version
    path.write_bytes(text[:100])  # a new, shorter log (the job restarted): read from the start
    log.update()
    assert log.train == {} and log.max_iter is None


def test_a_runaway_line_is_skipped_and_crlf_lines_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(train_log, "MAX_CHUNK", 256)
    path = tmp_path / "job.log"
    path.write_bytes(b"x" * 1000 + b"\n" + LINES.replace("\n", "\r\n").encode())
    log = TrainLog(str(path))
    log.update()
    assert log.train == {"loss": [(0, 2.51344), (10, 1.5)]} and log.max_iter == 60
    assert log.offset == path.stat().st_size

