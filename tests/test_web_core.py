"""caffelike serve's core (caffelike.web.app, jobs, scheduler): jobs on disk and after a restart, the queue and its
slots, abort and delete, the safety guards, errors as JSON, the status and event routes."""
import json
import os
import sys
import time

import pytest

from caffelike.web.app import create_app
from caffelike.web.jobs import (
    ABORTED,
    DONE,
    ERROR,
    RUNNING,
    WAITING,
    JobError,
    JobStore,
)
from caffelike.web.scheduler import Scheduler

PY = "{python}"


def wait_for(scheduler, job, states=(DONE, ERROR, ABORTED), timeout=60):
    deadline = time.monotonic() + timeout
    while job.status not in states:
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        scheduler.poll()
        time.sleep(0.05)
    return job.status


@pytest.fixture
def queue(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    return store, Scheduler(store, cpu_slots=1)


def test_a_job_runs_in_its_folder_and_its_output_is_its_log(queue):
    store, scheduler = queue
    job = store.create("dataset", "d", {"x": 1}, command=[PY, "-c", "import os; print('in', os.getcwd())"])
    scheduler.enqueue(job)
    assert job.status == WAITING
    assert wait_for(scheduler, job) == DONE
    assert f"in {job.dir}" in job.log_tail()
    assert [s for s, _ in job.history] == ["Initialized", "Waiting", "Running", "Done"]
    with open(os.path.join(job.dir, "job.json")) as f:
        on_disk = json.load(f)
    assert on_disk["status"] == DONE and on_disk["params"] == {"x": 1}


def test_a_failing_job_is_an_error_with_its_last_error_line(queue):
    store, scheduler = queue
    job = store.create("model", "m", {}, command=[PY, "-c", "import sys; print('F1203 boom'); sys.exit(3)"])
    scheduler.enqueue(job)
    assert wait_for(scheduler, job) == ERROR
    assert "F1203 boom" in job.error and "exit status 3" in job.error


def test_one_cpu_slot_runs_one_job_at_a_time_and_dependencies_wait(queue):
    store, scheduler = queue
    slow = store.create("dataset", "slow", {}, command=[PY, "-c", "import time; time.sleep(1)"])
    user = store.create("model", "user", {}, command=[PY, "-c", "pass"], depends_on=[slow.id])
    other = store.create("dataset", "other", {}, command=[PY, "-c", "pass"])
    for job in (slow, user, other):
        scheduler.enqueue(job)
    scheduler.poll()
    assert (slow.status, user.status, other.status) == (RUNNING, WAITING, WAITING)
    wait_for(scheduler, slow)
    wait_for(scheduler, user)
    wait_for(scheduler, other)
    assert slow.history[-1][1] <= min(t for s, t in other.history if s == RUNNING)


def test_a_job_whose_dataset_failed_fails(queue):
    store, scheduler = queue
    bad = store.create("dataset", "bad", {}, command=[PY, "-c", "raise SystemExit(1)"])
    model = store.create("model", "m", {}, command=[PY, "-c", "pass"], depends_on=[bad.id])
    scheduler.enqueue(bad)
    scheduler.enqueue(model)
    wait_for(scheduler, model)
    assert model.status == ERROR and "'bad'" in model.error and "Error" in model.error


def test_gpu_jobs_need_gpu_slots(queue):
    store, scheduler = queue
    job = store.create("model", "m", {}, command=[PY, "-c", "pass"], gpus=1)
    scheduler.enqueue(job)
    scheduler.poll()
    assert job.status == ERROR and "1 GPU" in job.error
    two = Scheduler(store, cpu_slots=1, gpu_ids=[0, 1])
    a = store.create("model", "a", {}, command=[PY, "-c", "import sys; print(sys.argv[1])", "{gpus}"], gpus=2)
    two.enqueue(a)
    wait_for(two, a)
    assert a.status == DONE and "0,1" in a.log_tail()


def test_abort_a_running_and_a_waiting_job(queue):
    store, scheduler = queue
    running = store.create("model", "r", {}, command=[PY, "-c", "import time; time.sleep(60)"])
    waiting = store.create("model", "w", {}, command=[PY, "-c", "pass"])
    scheduler.enqueue(running)
    scheduler.enqueue(waiting)
    scheduler.poll()
    assert running.status == RUNNING and waiting.status == WAITING
    scheduler.abort(waiting)
    assert waiting.status == ABORTED
    start = time.monotonic()
    scheduler.abort(running)
    assert wait_for(scheduler, running, timeout=20) == ABORTED
    assert time.monotonic() - start < 10
    with pytest.raises(JobError, match="nothing to abort"):
        scheduler.abort(running)


def test_restart_lists_every_job_and_running_ones_are_aborted(tmp_path):
    store = JobStore(str(tmp_path))
    done = store.create("dataset", "d", {"a": 1})
    done.set_status(DONE)
    store.save(done)
    running = store.create("model", "m", {}, depends_on=[done.id])
    running.set_status(RUNNING)
    store.save(running)
    (tmp_path / "not-a-job").mkdir()
    (tmp_path / "20200101-000000-abcd").mkdir()  # a job folder whose job.json is missing: skipped
    again = JobStore(str(tmp_path))
    assert {j.id for j in again.list()} == {done.id, running.id}
    assert again.get(done.id).status == DONE
    assert again.get(running.id).status == ABORTED and "server stopped" in again.get(running.id).error


def test_delete_refuses_running_and_used_jobs(queue):
    store, _ = queue
    dataset = store.create("dataset", "d", {})
    model = store.create("model", "m", {}, depends_on=[dataset.id])
    with pytest.raises(JobError, match="used by 'm'") as e:
        store.delete(dataset.id)
    assert e.value.status == 409
    model.set_status(RUNNING)
    with pytest.raises(JobError, match="abort it"):
        store.delete(model.id)
    model.set_status(ABORTED)
    store.delete(model.id)
    store.delete(dataset.id)
    assert not os.path.exists(dataset.dir) and store.list() == []


def test_job_paths_stay_in_the_folder(queue):
    store, _ = queue
    job = store.create("dataset", "d", {})
    assert job.path("a", "b.txt") == os.path.join(job.dir, "a", "b.txt")
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(JobError):
            job.path(bad)


# ------------------------------------------------------------------------------------------------------- app
@pytest.fixture
def app(tmp_path):
    app = create_app(str(tmp_path / "jobs"), start_scheduler=False)
    yield app
    app.extensions["caffelike.scheduler"].stop()


def test_index_and_status_routes(app):
    store = app.extensions["caffelike.store"]
    d = store.create("dataset", "digits", {})
    m = store.create("model", "lenet", {}, data={"framework": "caffe"})
    c = app.test_client()
    index = c.get("/index.json").get_json()
    assert [j["id"] for j in index["datasets"]] == [d.id] and [j["id"] for j in index["models"]] == [m.id]
    assert set(index["datasets"][0]) >= {"id", "name", "status"}
    page = c.get("/")
    assert page.status_code == 200 and b"digits" in page.data and b"lenet" in page.data
    for route in (f"/jobs/{d.id}/status", f"/datasets/{d.id}/status"):
        assert c.get(route).get_json()["status"] == "Initialized"
    assert c.get(f"/jobs/{m.id}").status_code == 302
    missing = c.get("/jobs/nope/status")
    assert missing.status_code == 404 and "nope" in missing.get_json()["errors"][0]


def test_abort_and_delete_routes(app):
    store = app.extensions["caffelike.store"]
    sched = app.extensions["caffelike.scheduler"]
    job = store.create("model", "m", {}, command=[PY, "-c", "pass"])
    sched.enqueue(job)
    c = app.test_client()
    assert c.post(f"/models/{job.id}/abort").get_json()["status"] == ABORTED
    assert c.post(f"/jobs/{job.id}/abort").status_code == 409
    assert c.delete(f"/jobs/{job.id}").get_json() == {"deleted": job.id}
    assert c.delete(f"/jobs/{job.id}").status_code == 404


def test_log_and_events(app):
    store = app.extensions["caffelike.store"]
    sched = app.extensions["caffelike.scheduler"]
    job = store.create("dataset", "d", {}, command=[PY, "-c", "print('hello from the job')"])
    sched.enqueue(job)
    wait_for(sched, job)
    c = app.test_client()
    assert b"hello from the job" in c.get(f"/jobs/{job.id}/log").data
    events = c.get(f"/jobs/{job.id}/events")
    assert events.mimetype == "text/event-stream"
    first = next(line for line in events.response if line.startswith(b"data:"))
    state = json.loads(first[5:])
    assert state["status"] == DONE and "hello from the job" in state["log_tail"]


def test_unexpected_errors_are_json_not_tracebacks(app):
    @app.route("/boom.json")
    def boom():
        raise RuntimeError("kaput")

    r = app.test_client().get("/boom.json")
    assert r.status_code == 500 and r.get_json() == {"errors": ["the server could not do this: RuntimeError: kaput"]}
    assert b"Traceback" not in r.data


# ------------------------------------------------------------------------------------------------------ guards
def test_loopback_server_refuses_other_hosts_and_cross_site_posts(app):
    c = app.test_client()
    assert c.get("/index.json", headers={"Host": "attacker.example:5000"}).status_code == 403
    assert c.get("/index.json", headers={"Host": "localhost:5000"}).status_code == 200
    r = c.post("/jobs/x/abort", headers={"Origin": "http://attacker.example"})
    assert r.status_code == 403 and "cross-site" in r.get_json()["errors"][0]
    assert c.post("/jobs/x/abort", headers={"Origin": "http://localhost"}).status_code == 404  # same site


def test_binding_elsewhere_needs_a_token(tmp_path):
    with pytest.raises(JobError, match="--token"):
        create_app(str(tmp_path), host="0.0.0.0", start_scheduler=False)
    app = create_app(str(tmp_path), host="0.0.0.0", token="s3cret", start_scheduler=False)
    c = app.test_client()
    assert c.get("/index.json", headers={"Host": "server.lan"}).status_code == 401
    assert c.get("/index.json", headers={"Host": "server.lan", "Authorization": "Bearer wrong"}).status_code == 401
    ok = c.get("/index.json", headers={"Host": "server.lan", "Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    page = c.get("/", headers={"Host": "server.lan"})
    assert page.status_code == 302 and "/login" in page.location
    assert c.post("/login", data={"token": "nope"}, headers={"Host": "server.lan"}).status_code == 401
    assert c.post("/login?next=//evil.com", data={"token": "s3cret"}, headers={"Host": "server.lan"}).location == "/"
    assert c.get("/", headers={"Host": "server.lan"}).status_code == 200  # the session cookie now


def test_serve_refuses_bad_flags(capsys, monkeypatch):
    from caffelike.cli import main

    monkeypatch.delenv("CAFFELIKE_SERVE_TOKEN", raising=False)
    assert main(["serve", "--port", "70000"]) == 1
    assert "--port" in capsys.readouterr().err
    assert main(["serve", "--host", "0.0.0.0", "--jobs-dir", os.devnull + "x"]) == 1


def test_serve_command_is_listed():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "caffelike", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "serve" in out


def test_job_files_are_served_only_from_inside_the_folder(app, tmp_path):
    """A name that leaves the folder, a missing file, or a link inside the folder pointing out: all 404."""
    from werkzeug.exceptions import NotFound

    from caffelike.web.app import job_folder_file

    job = app.extensions["caffelike.store"].create("model", "m", {})
    (tmp_path / "secret.txt").write_text("not the job's")
    os.symlink(tmp_path / "secret.txt", os.path.join(job.dir, "link.txt"))
    with open(os.path.join(job.dir, "deploy.prototxt"), "w") as f:
        f.write("name: 'x'")
    with app.test_request_context():
        assert job_folder_file(job, "deploy.prototxt") == os.path.realpath(os.path.join(job.dir, "deploy.prototxt"))
        for name in ("link.txt", "../secret.txt", "missing.txt", "/etc/passwd"):
            with pytest.raises(NotFound):
                job_folder_file(job, name)
