#!/usr/bin/env python3
"""Render an HTML report (e.g. `caffelike classify --visualize DIR`'s DIR/report.html) to a PNG with headless
Chromium, to look at it without a browser or to check it in CI.

    python scripts/screenshot_report.py REPORT.html OUT.png [--width 1200] [--height 3000] [--chromium PATH]

Chromium is looked up as --chromium, $CHROMIUM, /usr/bin/chromium, then chromium / chromium-browser /
google-chrome on PATH (Debian: `apt-get install chromium`).  It runs with a throw-away profile and without
network chatter; the screenshot is the window (width x height), written atomically.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ScreenshotError(RuntimeError):
    """Chromium is missing, or did not produce the screenshot."""


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable to use, or None when there is none."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), *CANDIDATES):
        if not candidate:
            continue
        found = shutil.which(candidate)
        if found:
            return found
    return None


def screenshot(report: str, out: str, width: int = 1200, height: int = 3000, chromium: str | None = None,
               timeout: float = 120.0) -> str:
    """Render `report` to the PNG `out` with headless Chromium; returns `out`."""
    exe = find_chromium(chromium)
    if exe is None:
        raise ScreenshotError("Chromium was not found (tried --chromium, $CHROMIUM, " + ", ".join(CANDIDATES) +
                              "); install it, e.g. `apt-get install -y chromium` on Debian")
    page = pathlib.Path(report).resolve()
    if not page.is_file():
        raise ScreenshotError(f"no such report: {report}")
    out_path = pathlib.Path(out).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp:
        shot = os.path.join(tmp, "shot.png")  # Chromium writes here; moved into place once complete
        command = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                   f"--user-data-dir={os.path.join(tmp, 'profile')}", f"--screenshot={shot}",
                   f"--window-size={width},{height}", page.as_uri()]
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"{exe} did not finish within {timeout:.0f} s") from None
        if done.returncode != 0 or not os.path.isfile(shot) or os.path.getsize(shot) == 0:
            tail = done.stdout.decode("utf-8", "replace").strip().splitlines()[-15:]
            raise ScreenshotError(f"{exe} exited with status {done.returncode} without a screenshot:\n" +
                                  "\n".join(tail))
        staged = tempfile.NamedTemporaryFile(prefix=".tmp-", suffix=".png", dir=out_path.parent, delete=False)
        staged.close()
        try:
            shutil.copyfile(shot, staged.name)
            os.replace(staged.name, out_path)
        except BaseException:
            if os.path.exists(staged.name):
                os.unlink(staged.name)
            raise
    return str(out_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render an HTML report to a PNG with headless Chromium.")
    p.add_argument("report", metavar="REPORT.html")
    p.add_argument("out", metavar="OUT.png")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=3000)
    p.add_argument("--chromium", default=None, help="the Chromium executable")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for Chromium")
    args = p.parse_args(argv)
    try:
        path = screenshot(args.report, args.out, args.width, args.height, args.chromium, args.timeout)
    except ScreenshotError as e:
        print(f"screenshot_report: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
