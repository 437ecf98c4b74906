"""`caffelike serve [--host 127.0.0.1] [--port 5000] [--jobs-dir DIR] [--token T] [--cpu-slots N] [--gpus 0,1]
[--max-upload-mb 512]`: the DIGITS-like web application (caffelike.web).

It binds to 127.0.0.1 unless --host says otherwise; any other address needs --token (or CAFFELIKE_SERVE_TOKEN),
which browsers enter once on a sign-in page and API clients send as `Authorization: Bearer <token>`.  Jobs live
under --jobs-dir (default ~/.caffelike/jobs), one folder each, and are listed again after a restart.
"""
from __future__ import annotations

import logging
import os

from caffelike.cli.common import positive_int
from caffelike.errors import CaffeError

log = logging.getLogger("caffelike")


def add_arguments(p) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument("--jobs-dir", default=os.path.join(os.path.expanduser("~"), ".caffelike", "jobs"),
                   help="folder of the jobs (default ~/.caffelike/jobs)")
    p.add_argument("--token", default=os.environ.get("CAFFELIKE_SERVE_TOKEN", ""),
                   help="access token, required when --host is not a loopback address (default: "
                        "$CAFFELIKE_SERVE_TOKEN)")
    p.add_argument("--cpu-slots", type=positive_int, default=2,
                   help="jobs that run at once without a GPU (default 2)")
    p.add_argument("--gpus", default="", help="GPU ids jobs may use, one job per GPU slot (default: none; "
                                              "'all' for every visible GPU)")
    p.add_argument("--max-upload-mb", type=positive_int, default=512, help="largest upload accepted (default 512)")


def gpu_ids(flag: str) -> list[int]:
    if not flag:
        return []
    if flag == "all":
        import torch

        return list(range(torch.cuda.device_count()))
    try:
        return [int(g) for g in flag.split(",")]
    except ValueError:
        raise CaffeError(f"--gpus takes GPU ids such as 0,1 or 'all', got {flag!r}") from None


def run(args) -> int:
    from caffelike.web.app import create_app

    if not 0 < args.port < 65536:
        raise CaffeError(f"--port must be in 1..65535, got {args.port}")
    app = create_app(args.jobs_dir, host=args.host, token=args.token or None, cpu_slots=args.cpu_slots,
                     gpu_ids=gpu_ids(args.gpus), max_upload_mb=args.max_upload_mb)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    log.info("caffelike serve: http://%s:%d/ (jobs in %s)", shown, args.port, os.path.abspath(args.jobs_dir))
    try:
        app.run(host=args.host, port=args.port, threaded=True, use_reloader=False)
    finally:
        app.extensions["caffelike.scheduler"].stop(kill=True)
    return 0
