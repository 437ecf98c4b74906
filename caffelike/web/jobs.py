"""Jobs on disk, as DIGITS keeps them: one folder per job under the jobs directory, holding `job.json` (what the
job is and where it stands, rewritten atomically on every change) beside the job's own files (prototxts, solver,
log, snapshots, the dataset's LMDBs).

States are DIGITS': Initialized (being prepared), Waiting (queued for a resource slot or a dataset), Running,
Done, Aborted, Error.  A server that restarts lists every job again; a job that was Initialized, Waiting or Running
when the server stopped is Aborted, as DIGITS marks it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time

from caffelike.errors import CaffeError
from caffelike.format.files import atomic_write

log = logging.getLogger("caffelike")

INITIALIZED, WAITING, RUNNING, DONE, ABORTED, ERROR = "Initialized", "Waiting", "Running", "Done", "Aborted", "Error"
STATES = (INITIALIZED, WAITING, RUNNING, DONE, ABORTED, ERROR)
ACTIVE = (INITIALIZED, WAITING, RUNNING)
KINDS = ("dataset", "model")
JOB_FILE = "job.json"
LOG_FILE = "job.log"
_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


class JobError(CaffeError):
    """A request about jobs that cannot be granted (unknown job, deleting a dataset in use...); `status` is the
    HTTP status the web application answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Job:
    """One dataset or model job.  `params` holds the creation form's values (what a clone pre-fills), `data`
    what the job learned about itself (counts, files, the framework), `command` the argv of its subprocess."""

    def __init__(self, id: str, kind: str, name: str, folder: str, *, params: dict | None = None,
                 command: list[str] | None = None, depends_on: list[str] | None = None, gpus: int = 0,
                 status: str = INITIALIZED, history: list | None = None, data: dict | None = None,
                 error: str = "", created: float | None = None):
        self.id, self.kind, self.name, self.dir = id, kind, name, folder
        self.params = dict(params or {})
        self.command = list(command or [])
        self.depends_on = list(depends_on or [])
        self.gpus = int(gpus)  # how many GPU slots the job needs (0: a CPU slot)
        self.status = status
        self.history = list(history or [[status, created or time.time()]])
        self.data = dict(data or {})
        self.error = error
        self.created = created or time.time()
        self.assigned_gpus: list[int] = []

    # ------------------------------------------------------------------------------------------------- files
    def path(self, *parts: str) -> str:
        """A path inside the job's folder; parts that would leave it are refused."""
        full = os.path.abspath(os.path.join(self.dir, *parts))
        if full != self.dir and not full.startswith(self.dir + os.sep):
            raise JobError(f"{os.path.join(*parts)!r} is outside job {self.id}'s folder", 400)
        return full

    @property
    def log_file(self) -> str:
        return self.path(LOG_FILE)

    def log_tail(self, max_bytes: int = 8192) -> str:
        """The end of the job's log, whole lines only."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return text.split("\n", 1)[1] if size > max_bytes and "\n" in text else text

    # ------------------------------------------------------------------------------------------------ states
    def set_status(self, status: str, error: str = "") -> None:
        if status not in STATES:
            raise ValueError(f"unknown job state {status!r}")
        self.status = status
        self.history.append([status, time.time()])
        if error:
            self.error = error

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def started_at(self) -> float | None:
        """When the job last entered Running."""
        times = [t for s, t in self.history if s == RUNNING]
        return times[-1] if times else None

    def elapsed(self) -> float | None:
        """Seconds spent Running (to now while it runs, to its end after)."""
        start = self.started_at()
        if start is None:
            return None
        ends = [t for s, t in self.history if s in (DONE, ABORTED, ERROR) and t >= start]
        return (ends[-1] if ends else time.time()) - start

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "name": self.name, "status": self.status,
                "status_history": self.history, "created": self.created, "params": self.params,
                "command": self.command, "depends_on": self.depends_on, "gpus": self.gpus, "data": self.data,
                "error": self.error}

    def summary(self) -> dict:
        """What DIGITS' JSON gives for a job: id, name, status (plus its folder and times)."""
        return {"id": self.id, "name": self.name, "status": self.status, "directory": self.dir,
                "created": self.created, "elapsed": self.elapsed(), "error": self.error or None}

    @classmethod
    def from_dict(cls, values: dict, folder: str) -> Job:
        return cls(values["id"], values["kind"], values["name"], folder, params=values.get("params"),
                   command=values.get("command"), depends_on=values.get("depends_on"), gpus=values.get("gpus", 0),
                   status=values["status"], history=values.get("status_history"), data=values.get("data"),
                   error=values.get("error", ""), created=values.get("created"))


class JobStore:
    """The jobs under `root`, loaded at start and kept in memory; every change is written through to disk.
    Thread-safe: the web requests and the scheduler share it."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self._load()

    def _load(self) -> None:
        for entry in sorted(os.listdir(self.root)):
            folder = os.path.join(self.root, entry)
            path = os.path.join(folder, JOB_FILE)
            if not _ID.match(entry) or not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    job = Job.from_dict(json.load(f), folder)
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("jobs: skipping %s: unreadable %s (%s)", folder, JOB_FILE, e)
                continue
            if job.kind not in KINDS or job.status not in STATES:
                log.warning("jobs: skipping %s: unknown kind or state", folder)
                continue
            if job.active:  # the server stopped under it
                job.set_status(ABORTED, "the server stopped while the job was " + job.status.lower())
                self.save(job)
            self.jobs[job.id] = job

    def new_id(self) -> str:
        while True:
            job_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
            if job_id not in self.jobs and not os.path.exists(os.path.join(self.root, job_id)):
                return job_id

    def create(self, kind: str, name: str, params: dict, **kwargs) -> Job:
        """A new Initialized job with its (empty) folder."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        with self.lock:
            job_id = self.new_id()
            folder = os.path.join(self.root, job_id)
            os.makedirs(folder)
            job = Job(job_id, kind, name, folder, params=params, **kwargs)
            self.jobs[job_id] = job
            self.save(job)
            return job

    def save(self, job: Job) -> None:
        with self.lock:
            atomic_write(os.path.join(job.dir, JOB_FILE), json.dumps(job.to_dict(), indent=1).encode("utf-8"))

    def get(self, job_id: str, kind: str | None = None) -> Job:
        job = self.jobs.get(job_id)
        if job is None or (kind is not None and job.kind != kind):
            raise JobError(f"no {kind or 'job'} with id {job_id!r}", 404)
        return job

    def list(self, kind: str | None = None) -> list[Job]:
        """Newest first."""
        with self.lock:
            jobs = [j for j in self.jobs.values() if kind is None or j.kind == kind]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def users_of(self, job: Job) -> list[Job]:
        """The jobs that depend on `job` (the models trained on a dataset, fine-tuned from a model)."""
        return [j for j in self.list() if job.id in j.depends_on]

    def delete(self, job_id: str) -> None:
        """Remove a job and its folder.  A running job must be aborted first; a dataset or model other jobs use
        cannot be deleted."""
        with self.lock:
            job = self.get(job_id)
            if job.status == RUNNING:
                raise JobError(f"job {job_id} is running; abort it before deleting it", 409)
            users = self.users_of(job)
            if users:
                names = ", ".join(f"{u.name!r} ({u.id})" for u in users)
                raise JobError(f"{job.kind} {job.name!r} cannot be deleted: used by {names}", 409)
            del self.jobs[job_id]
        shutil.rmtree(job.dir, ignore_errors=True)
