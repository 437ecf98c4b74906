"""Log lines in glog's format, which Caffe's parse_log.py, parse_log.sh and DIGITS read:
`I1124 16:03:22.381027 12345 solver.py:240] Iteration 100, loss = 0.25`."""
from __future__ import annotations

import logging
import sys
import threading
import time

_LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}


class GlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        prefix = (f"{_LETTERS.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                  f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                  f"{threading.get_native_id():>5d} {record.filename}:{record.lineno}] ")
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return prefix + text


def init_log(level: int = logging.INFO, stream=None) -> logging.Logger:
    """Send caffelike's log to `stream` (stderr by default, like GLOG_logtostderr=1) in glog's format."""
    logger = logging.getLogger("caffelike")
    for h in list(logger.handlers):
        if getattr(h, "_caffelike", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(GlogFormatter())
    handler._caffelike = True
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger
