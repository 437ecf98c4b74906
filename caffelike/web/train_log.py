"""A model job's training log (Caffe's glog lines, which `caffelike train` writes word for word) read into
series, the way DIGITS' training page reads `caffe train`'s output:

  I1203 20:42:48.480251  1452 solver.py:284] Iteration 0 (0 iter/s, 1.038s/1 iters), loss = 2.51344
  I1203 20:42:48.480464  1452 solver.py:344]     Train net output #0: loss = 2.51344 (* 1 = 2.51344 loss)
  I1203 20:42:48.480544  1452 solver.py:406] Iteration 0, lr = 0.01
  I1203 20:42:51.055564  1452 solver.py:367] Iteration 3, Testing net (#0)
  I1203 20:42:51.524688  1452 solver.py:344]     Test net output #0: accuracy = 0.375
  I1203 20:42:49.682668  1452 snapshot.py:67] Snapshotting to binary proto file snapshot_iter_3.caffemodel

Only lines with glog's prefix count (a Python layer's own prints cannot fake a point), except the lines of the
solver parameters that "Initializing solver from parameters:" prints unprefixed, where max_iter is read.  The
log is read incrementally: `update()` parses only the bytes added since the last call, stopping before a partial
last line, and starts over when the file was truncated or replaced.
"""
from __future__ import annotations

import datetime
import math
import os
import re
import threading

_GLOG = re.compile(r"^([IWEF])(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d+))?\s+\d+\s+[^\]\s]+\] ?(.*)$")
_DISPLAY = re.compile(r"^Iteration (\d+) \(.*\), loss = (\S+)$")
_FINAL_LOSS = re.compile(r"^Iteration (\d+), loss = (\S+)$")
_LR = re.compile(r"^Iteration (\d+), lr = (\S+)$")
_TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)$")
_OUTPUT = re.compile(r"^(Train|Test) net output #(\d+): (\S+) = (\S+)(?: \(\* (\S+) = (\S+) loss\))?$")
_SNAPSHOT = re.compile(r"^Snapshotting to (?:binary proto|HDF5|state_dict) file (.+?)\s*$")
_SNAPSHOT_ITER = re.compile(r"_iter_(\d+)\.(?:caffemodel|caffemodel\.h5|pt)$")
_ITERATION = re.compile(r"^Iteration (\d+)\b")
_PARAM_MAX_ITER = re.compile(r"^\s*max_iter:\s*(\d+)\s*$")
MAX_CHUNK = 8 << 20  # a long log is parsed in pieces, so one request never holds all of it in memory


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class TrainLog:
    """The series of one training log.

    train: output name -> [(iteration, value)] from "Train net output" lines; display_loss: the smoothed loss of
    the display lines ("Iteration N (...), loss = x" and the final "Iteration N, loss = x"); test: output name
    -> [(iteration, value)] for test net #0 (other test nets' outputs are named "name (#k)"); lr: [(iteration,
    rate)]; snapshots: [(iteration, file)]; max_iter from the solver parameters; iteration: the latest one named;
    times: (iteration, unix time) of the first and latest iteration lines, for the remaining-time estimate.
    `version` grows whenever a series gains a point, so pages redraw the curves only then.
    """

    def __init__(self, path: str | None = None, year: int | None = None):
        self.path = path
        self.year = year
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.offset = 0
        self.identity = None
        self.train: dict[str, list[tuple[int, float]]] = {}
        self.test: dict[str, list[tuple[int, float]]] = {}
        self.display_loss: list[tuple[int, float]] = []
        self.lr: list[tuple[int, float]] = []
        self.snapshots: list[tuple[int, str]] = []
        self.max_iter: int | None = None
        self.iteration: int | None = None
        self.first_time: tuple[int, float] | None = None
        self.last_time: tuple[int, float] | None = None
        self.done = False
        self.stopped_early = False
        self.version = 0
        self._in_params = False
        self._phase_iter: int | None = None  # the iteration of the last display or test header
        self._test_net = 0

    # ------------------------------------------------------------------------------------------------ reading
    def update(self) -> bool:
        """Parse what the log file gained since the last call; True if anything was read."""
        with self.lock:
            try:
                st = os.stat(self.path)
            except OSError:
                return False
            identity = (st.st_dev, st.st_ino)
            if st.st_size < self.offset or (self.identity is not None and identity != self.identity):
                self.reset()
            self.identity = identity
            if st.st_size == self.offset:
                return False
            read = False
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while True:
                    chunk = f.read(MAX_CHUNK)
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        if len(chunk) == MAX_CHUNK:  # a runaway line (no glog line is this long): skip it
                            self.offset += len(chunk)
                            self._in_params = False
                            continue
                        break
                    self._feed_bytes(chunk[:end + 1])
                    self.offset += end + 1
                    read = True
                    f.seek(self.offset)
                    if len(chunk) < MAX_CHUNK:
                        break
            return read

    def feed(self, text: str) -> None:
        """Parse complete lines of text (a trailing line without its newline is parsed too)."""
        with self.lock:
            for line in text.splitlines():
                self.line(line)

    def _feed_bytes(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").split("\n"):
            self.line(line.rstrip("\r"))

    def line(self, line: str) -> None:
        m = _GLOG.match(line)
        if m is None:
            if self._in_params:
                p = _PARAM_MAX_ITER.match(line)
                if p:
                    self.max_iter = int(p.group(1))
            return
        self._in_params = False
        message = m.group(8).strip()
        if message.startswith("Initializing solver from parameters"):
            self._in_params = True
            return
        if message.startswith(("Iteration ", "Train net", "Test net", "Snapshotting", "Optimization")):
            self._message(message, m)

    def _message(self, message: str, m: re.Match) -> None:
        it = _ITERATION.match(message)
        if it:
            n = int(it.group(1))
            self.iteration = n if self.iteration is None else max(self.iteration, n)
            when = self._time(m)
            if when is not None:
                if self.first_time is None:
                    self.first_time = (n, when)
                self.last_time = (n, when)
        if (d := _DISPLAY.match(message) or _FINAL_LOSS.match(message)) is not None:
            self._phase_iter = int(d.group(1))
            self._add(self.display_loss, self._phase_iter, d.group(2))
        elif (d := _LR.match(message)) is not None:
            self._add(self.lr, int(d.group(1)), d.group(2))
        elif (d := _TESTING.match(message)) is not None:
            self._phase_iter, self._test_net = int(d.group(1)), int(d.group(2))
        elif (d := _OUTPUT.match(message)) is not None:
            if self._phase_iter is None:
                return
            name = d.group(3)
            if d.group(1) == "Test":
                series = self.test.setdefault(name if self._test_net == 0 else f"{name} (#{self._test_net})", [])
            else:
                series = self.train.setdefault(name, [])
            self._add(series, self._phase_iter, d.group(4))
        elif (d := _SNAPSHOT.match(message)) is not None:
            path = d.group(1)
            n = _SNAPSHOT_ITER.search(path)
            if n is not None:
                self.snapshots.append((int(n.group(1)), path))
                self.iteration = max(self.iteration or 0, int(n.group(1)))
                self.version += 1
        elif message == "Optimization Done.":
            self.done = True
        elif message == "Optimization stopped early.":
            self.stopped_early = True

    def _add(self, series: list, iteration: int, text: str) -> None:
        value = _number(text)
        if value is None:
            return
        if series and series[-1][0] == iteration:  # the same point logged again (a resumed or repeated line)
            series[-1] = (iteration, value)
        else:
            series.append((iteration, value))
        self.version += 1

    def _time(self, m: re.Match) -> float | None:
        """The line's time as a unix time; glog omits the year, so it is this year's (last year's when that
        would put the line more than a day in the future)."""
        now = datetime.datetime.now()
        year = self.year or now.year
        try:
            micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
            t = datetime.datetime(year, int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)),
                                  int(m.group(6)), micro)
            if self.year is None and t - now > datetime.timedelta(days=1):
                t = t.replace(year=year - 1)
        except ValueError:
            return None
        return t.timestamp()

    # ----------------------------------------------------------------------------------------------- summary
    def train_series(self) -> dict[str, list[tuple[int, float]]]:
        """The train curves: the net's outputs, or the smoothed loss when the log shows no outputs."""
        if self.train:
            return self.train
        return {"loss": self.display_loss} if self.display_loss else {}

    def series(self) -> dict:
        """A copy of the curves ({"train", "test", "lr"}), safe to draw while another request parses more."""
        with self.lock:
            return {"train": {k: list(v) for k, v in self.train_series().items()},
                    "test": {k: list(v) for k, v in self.test.items()}, "lr": list(self.lr)}

    def latest(self) -> dict:
        """The last value of every series: {"train": {name: v}, "test": {name: v}, "lr": v}."""
        with self.lock:
            return {"train": {k: v[-1][1] for k, v in self.train_series().items() if v},
                    "test": {k: v[-1][1] for k, v in self.test.items() if v},
                    "lr": self.lr[-1][1] if self.lr else None}

    def remaining(self, max_iter: int | None, now: float) -> float | None:
        """Seconds left to max_iter at the pace since the first iteration line, or None before it is known."""
        if not max_iter or self.first_time is None or self.iteration is None:
            return None
        first_iter, first_t = self.first_time
        done = self.iteration - first_iter
        if done <= 0:
            return None
        pace = max(0.0, now - first_t) / done
        left = max(0, max_iter - self.iteration)
        value = pace * left
        return value if math.isfinite(value) else None


_LOGS: dict[str, TrainLog] = {}
_LOGS_LOCK = threading.Lock()


def job_log(job) -> TrainLog:
    """The job's parsed log, brought up to date (one parser per log file, shared by every request)."""
    path = job.log_file
    with _LOGS_LOCK:
        parsed = _LOGS.get(path)
        if parsed is None:
            for stale in [p for p in _LOGS if not os.path.exists(p)]:
                del _LOGS[stale]
            parsed = _LOGS[path] = TrainLog(path)
    parsed.update()
    return parsed
