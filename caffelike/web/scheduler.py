"""The job queue: Waiting jobs start, oldest first, when what they depend on is Done and a resource slot is free
(CPU slots; one slot per GPU id for jobs that ask for GPUs).  Each job runs as its own subprocess (`python -m
caffelike ...` in the job's folder, its output appended to the job's log), so a crash, a Python-layer exception or
an out-of-memory kill fails that job and never the server.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from caffelike.web.jobs import (
    ABORTED,
    DONE,
    ERROR,
    RUNNING,
    WAITING,
    Job,
    JobError,
    JobStore,
)

log = logging.getLogger("caffelike")

ABORT_GRACE_S = 5.0  # after SIGINT (Caffe's "stop": the trainer snapshots and exits), SIGKILL


class Scheduler:
    """Runs the store's Waiting jobs.  `cpu_slots` jobs without GPUs run at once; a job asking for n GPUs takes n
    of `gpu_ids`.  `poll()` does one round (the tests call it); `start()` runs rounds on a thread."""

    def __init__(self, store: JobStore, cpu_slots: int = 2, gpu_ids: list[int] | None = None,
                 interval: float = 0.25):
        self.store = store
        self.cpu_slots = max(1, int(cpu_slots))
        self.gpu_ids = list(gpu_ids or [])
        self.interval = interval
        self.procs: dict[str, subprocess.Popen] = {}
        self.aborting: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # kind -> fn(job): writes what a job could not write when it was queued (a model's files need its
        # dataset's labels and mean, which a dataset still running has not made yet); raising fails the job.
        self.prepare: dict = {}

    # ---------------------------------------------------------------------------------------------- queueing
    def enqueue(self, job: Job) -> None:
        """The job is prepared (its files written, its command set): queue it."""
        with self.store.lock:
            job.set_status(WAITING)
            self.store.save(job)

    def abort(self, job: Job) -> None:
        """Stop a Waiting or Running job; it ends Aborted.  Finished jobs cannot be aborted."""
        with self.store.lock:
            if job.status == RUNNING and job.id in self.procs:
                if job.id not in self.aborting:
                    self.aborting[job.id] = time.monotonic()
                    _signal_group(self.procs[job.id], signal.SIGINT)
                return
            if not job.active:
                raise JobError(f"job {job.id} is {job.status}: there is nothing to abort", 409)
            job.set_status(ABORTED, "aborted by the user")
            self.store.save(job)

    # ------------------------------------------------------------------------------------------------- rounds
    def poll(self) -> None:
        with self.store.lock:
            self._reap()
            self._start_waiting()

    def _free_slots(self) -> tuple[int, list[int]]:
        running = [self.store.jobs[i] for i in self.procs if i in self.store.jobs]
        cpu = self.cpu_slots - sum(1 for j in running if not j.gpus)
        used = {g for j in running for g in j.assigned_gpus}
        return cpu, [g for g in self.gpu_ids if g not in used]

    def _start_waiting(self) -> None:
        for job in sorted(self.store.list(), key=lambda j: j.created):
            if job.status != WAITING or job.id in self.procs:
                continue
            blocked = self._dependencies(job)
            if blocked is None:
                continue
            if blocked:
                job.set_status(ERROR, blocked)
                self.store.save(job)
                continue
            cpu, gpus = self._free_slots()
            if job.gpus > len(self.gpu_ids):
                job.set_status(ERROR, f"the job asks for {job.gpus} GPU(s); this server has {len(self.gpu_ids)}")
                self.store.save(job)
                continue
            if job.gpus and len(gpus) >= job.gpus:
                job.assigned_gpus = gpus[:job.gpus]
            elif job.gpus or cpu <= 0:
                continue
            if not self._prepare(job):
                continue
            self._launch(job)

    def _dependencies(self, job: Job):
        """None while a dependency is still to finish, '' when all are Done, else why the job cannot run."""
        for dep_id in job.depends_on:
            dep = self.store.jobs.get(dep_id)
            if dep is None:
                return f"job {dep_id}, which this job uses, no longer exists"
            if dep.status in (ERROR, ABORTED):
                return f"{dep.kind} {dep.name!r} ({dep.id}) ended {dep.status}"
            if dep.status != DONE:
                return None
        return ""

    def _prepare(self, job: Job) -> bool:
        prepare = self.prepare.get(job.kind)
        if prepare is None:
            return True
        try:
            prepare(job)
        except Exception as e:  # noqa: BLE001 (any fault fails the job, never the queue)
            job.assigned_gpus = []
            job.set_status(ERROR, f"could not prepare the job: {e}")
            self.store.save(job)
            return False
        return True

    def _launch(self, job: Job) -> None:
        argv = [sys.executable if a == "{python}" else a for a in job.command]
        argv = [a.replace("{gpus}", ",".join(map(str, job.assigned_gpus))) for a in argv]
        env = dict(os.environ)
        # Slots share the cores: each job's math library gets its share, not all of them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.cpu_slots)))
        env["PYTHONUNBUFFERED"] = "1"
        # The job runs `python -m caffelike` from its own folder: make this very caffelike importable there, also
        # when the server runs from a checkout that is not installed.
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH", "")]))
        try:
            with open(job.log_file, "ab") as out:
                out.write(f"$ {' '.join(argv)}\n".encode())
                out.flush()
                proc = subprocess.Popen(argv, cwd=job.dir, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        except OSError as e:
            job.set_status(ERROR, f"could not start the job: {e}")
            self.store.save(job)
            return
        self.procs[job.id] = proc
        job.data["pid"] = proc.pid
        job.set_status(RUNNING)
        self.store.save(job)
        log.info("jobs: started %s %s (%s), pid %d", job.kind, job.id, job.name, proc.pid)

    def _reap(self) -> None:
        for job_id, proc in list(self.procs.items()):
            job = self.store.jobs.get(job_id)
            rc = proc.poll()
            if rc is None:
                since = self.aborting.get(job_id)
                if since is not None and time.monotonic() - since > ABORT_GRACE_S:
                    _signal_group(proc, signal.SIGKILL)
                continue
            del self.procs[job_id]
            aborted = self.aborting.pop(job_id, None) is not None
            if job is None:
                continue
            if aborted:
                job.set_status(ABORTED, "aborted by the user")
            elif rc == 0:
                job.set_status(DONE)
            else:
                job.set_status(ERROR, _failure(job, rc))
            job.assigned_gpus = []
            self.store.save(job)
            log.info("jobs: %s %s ended %s", job.kind, job.id, job.status)

    # ------------------------------------------------------------------------------------------------ thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="caffelike-jobs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the queue must outlive any one bad job
                log.exception("jobs: scheduler round failed")

    def stop(self, kill: bool = True) -> None:
        """Stop the thread; with `kill`, end the running subprocesses (they would be Aborted at the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if kill:
            for proc in self.procs.values():
                _signal_group(proc, signal.SIGKILL)
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _failure(job: Job, rc: int) -> str:
    """Why a job failed: its last error line when the log has one, else the exit status."""
    how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
    lines = [ln.strip() for ln in job.log_tail(4096).splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("E", "F")) and len(line) > 1 and line[1:5].isdigit() or "Error" in line:
            return f"{line} ({how})"
    return f"the job's process ended with {how}"
