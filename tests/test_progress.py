"""Progress bars: drawn on a terminal, absent from logs and pipes, and never splitting a glog line."""
import io
import re
import subprocess
import sys

import pytest

from caffelike.cli import main
from caffelike.cli.glog import init_log
from caffelike.cli.progress import ProgressBar

GLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ")
NET = """name: "tiny"
layer { name: "data" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def solver_file(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" display: 1 max_iter: 30 '
                    f'snapshot_prefix: "{tmp_path}/snap" type: "SGD"')
    return str(path)


def test_no_bar_in_a_pipe_or_file():
    stream = io.StringIO()
    with ProgressBar("Working", total=10, stream=stream) as bar:
        for _ in range(10):
            bar.update(1)
    assert stream.getvalue() == ""


def test_bar_on_a_terminal_with_log_lines_printed_whole_above_it(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    log = init_log()
    with ProgressBar("Working", total=4, unit="img") as bar:
        for i in range(4):
            bar.update(1)
            log.info("Processed %d files.", i + 1)
    out = terminal.getvalue()
    assert "Working" in out and "4/4" in out and "img" in out
    # every glog line is whole, at the start of a line; the bar lives between them after carriage returns
    lines = [seg for line in out.split("\n") for seg in line.split("\r")]
    logged = [GLOG.sub("", s) for s in lines if GLOG.match(s)]
    assert logged == [f"Processed {i} files." for i in range(1, 5)]
    assert all(GLOG.match(s) or "Working" in s or not s.strip() for s in lines)


def test_train_on_a_terminal_shows_iterations_and_loss(solver_file, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", "--solver", solver_file]) == 0
    out = terminal.getvalue()
    assert re.search(r"Training.*30/30.*loss=", out)
    assert "Optimization Done." in out


def test_train_log_through_a_pipe_has_no_bar(solver_file):
    done = subprocess.run([sys.executable, "-m", "caffelike", "train", "--solver", solver_file],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "it/s" not in done.stderr and "Training:" not in done.stderr
    iterations = [ln for ln in done.stderr.splitlines() if re.match(GLOG.pattern + r"Iteration \d+, lr", ln)]
    assert len(iterations) == 30
