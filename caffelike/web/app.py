"""`caffelike serve`'s Flask application: the home page, the job routes DIGITS scripts use (status, abort,
delete), server-sent events for live pages, and the safety rules every request passes.

Safety: bound to a loopback address, requests must name a loopback Host (a page on another site cannot reach
the server through DNS rebinding); bound elsewhere, a token is required (header `Authorization: Bearer <token>`,
or the login page's session cookie).  A state-changing request whose Origin is another site is refused, so a web
page cannot submit forms (and Python-layer uploads) to the server.  Uploads are capped by MAX_CONTENT_LENGTH.
Errors are answered as JSON on `.json` routes and API clients, as a page otherwise, never with a traceback.
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
import urllib.parse

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from werkzeug.exceptions import HTTPException

from caffelike.web.forms import FormError
from caffelike.web.jobs import JobError, JobStore
from caffelike.web.scheduler import Scheduler

log = logging.getLogger("caffelike")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_MAX_UPLOAD_MB = 512
EVENT_PERIOD_S = 1.0


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def wants_json() -> bool:
    """API clients: `.json` and status routes, DELETE, JSON bodies, or an Accept header that prefers JSON."""
    if request.path.endswith((".json", "/status")) or request.method == "DELETE" or request.is_json:
        return True
    if request.method == "POST" and request.mimetype not in ("multipart/form-data",
                                                             "application/x-www-form-urlencoded"):
        return True  # `curl -X POST .../abort`; the body is not read here (it may be over the size limit)
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def create_app(jobs_dir: str, *, host: str = "127.0.0.1", token: str | None = None, cpu_slots: int = 2,
               gpu_ids: list[int] | None = None, max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB,
               start_scheduler: bool = True) -> Flask:
    """The application over the jobs under `jobs_dir`.  Binding to a non-loopback `host` needs a `token`."""
    if not is_loopback(host) and not token:
        raise JobError(f"binding to {host} makes the server reachable from other machines: give --token (or set "
                       "CAFFELIKE_SERVE_TOKEN) so that only people with it can use it")
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=max_upload_mb * 1024 * 1024, SECRET_KEY=secrets.token_bytes(32),
                      SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_HTTPONLY=True, BIND_HOST=host, TOKEN=token,
                      JSON_SORT_KEYS=False)
    store = JobStore(jobs_dir)
    scheduler = Scheduler(store, cpu_slots=cpu_slots, gpu_ids=gpu_ids)
    app.extensions["caffelike.store"] = store
    app.extensions["caffelike.scheduler"] = scheduler
    if start_scheduler:
        scheduler.start()

    _install_guards(app)
    _install_errors(app)
    _install_core_routes(app)
    from caffelike.web import dataset_views, model_pages, model_views  # noqa: F401 (model_pages adds routes)

    app.register_blueprint(dataset_views.bp)
    app.register_blueprint(model_views.bp)
    app.jinja_env.globals.update(fmt_duration=fmt_duration, fmt_time=fmt_time)
    return app


def store() -> JobStore:
    from flask import current_app

    return current_app.extensions["caffelike.store"]


def scheduler() -> Scheduler:
    from flask import current_app

    return current_app.extensions["caffelike.scheduler"]


# ------------------------------------------------------------------------------------------------------ guards
def _install_guards(app: Flask) -> None:
    @app.before_request
    def guard():
        host = (request.host or "").rsplit(":", 1)[0].strip("[]") if request.host else ""
        if is_loopback(app.config["BIND_HOST"]) and not is_loopback(host):
            abort(403, description=f"this server answers requests for localhost only, not for {host!r}")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("Origin")
            if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.host:
                abort(403, description="cross-site requests are refused")
            if origin == "null":
                abort(403, description="requests from opaque origins are refused")
        needs_token = app.config["TOKEN"] and request.endpoint not in ("login", "static")
        if needs_token and not _authorised(app.config["TOKEN"]):
            if wants_json() or request.method != "GET":
                abort(401, description="a token is required: send 'Authorization: Bearer <token>'")
            return redirect(url_for("login", next=request.full_path))
        return None

    @app.route("/login", methods=["GET", "POST"])
    def login():
        error = ""
        if request.method == "POST":
            given = request.form.get("token", "")
            if hmac.compare_digest(given.encode(), (app.config["TOKEN"] or "").encode()):
                session["token_ok"] = True
                target = request.args.get("next", "/")
                return redirect(target if target.startswith("/") and not target.startswith("//") else "/")
            error = "wrong token"
        return render_template("login.html", error=error), (401 if error else 200)


def _authorised(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    return bool(session.get("token_ok"))


def _install_errors(app: Flask) -> None:
    def answer(status: int, message: str, errors: dict | None = None):
        if wants_json():
            body = {"errors": [f"{k}: {v}" for k, v in errors.items()] if errors else [message]}
            if errors:
                body["fields"] = errors
            return jsonify(body), status
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(FormError)
    def bad_form(e: FormError):
        return answer(400, str(e), e.errors)

    @app.errorhandler(JobError)
    def bad_job(e: JobError):
        return answer(e.status, str(e))

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return answer(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        log.exception("web: %s %s failed", request.method, request.path)
        return answer(500, f"the server could not do this: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------------------------------- core routes
def _install_core_routes(app: Flask) -> None:
    @app.route("/")
    @app.route("/index.json")
    def home():
        datasets, models = store().list("dataset"), store().list("model")
        if wants_json():
            return jsonify({"datasets": [j.summary() for j in datasets], "models": [j.summary() for j in models]})
        return render_template("index.html", datasets=datasets, models=models)

    @app.route("/jobs/<job_id>")
    def job_page(job_id):
        job = store().get(job_id)
        return redirect(url_for("datasets.show" if job.kind == "dataset" else "models.show", job_id=job_id))

    @app.route("/jobs/<job_id>/status")
    @app.route("/datasets/<job_id>/status")
    @app.route("/models/<job_id>/status")
    def job_status(job_id):
        job = store().get(job_id)
        return jsonify(job_state(job))

    @app.route("/jobs/<job_id>/abort", methods=["POST"])
    @app.route("/datasets/<job_id>/abort", methods=["POST"])
    @app.route("/models/<job_id>/abort", methods=["POST"])
    def job_abort(job_id):
        job = store().get(job_id)
        scheduler().abort(job)
        if wants_json() or not request.form:
            return jsonify(job_state(job))
        return redirect(url_for("job_page", job_id=job_id))

    @app.route("/jobs/<job_id>", methods=["DELETE"])
    @app.route("/datasets/<job_id>", methods=["DELETE"])
    @app.route("/models/<job_id>", methods=["DELETE"])
    @app.route("/jobs/<job_id>/delete", methods=["POST"])
    def job_delete(job_id):
        store().delete(job_id)
        if request.method == "DELETE" or wants_json():
            return jsonify({"deleted": job_id})
        return redirect(url_for("home"))

    @app.route("/jobs/<job_id>/log")
    def job_log(job_id):
        job = store().get(job_id)
        try:
            with open(job.log_file, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            text = b""
        return Response(text, mimetype="text/plain; charset=utf-8")

    @app.route("/jobs/<job_id>/events")
    def job_events(job_id):
        """Server-sent events: the job's state (status, elapsed, log tail, and what the job's kind adds) as a
        JSON `data:` line whenever it changes, until the job ends."""
        job = store().get(job_id)
        extra = app.extensions.get("caffelike.event_extras", {}).get(job.kind)

        def stream():
            last = None
            deadline = time.monotonic() + 3600
            while time.monotonic() < deadline:
                state = job_state(job)
                if extra is not None:
                    state.update(extra(job))
                text = json.dumps(state, default=str)
                if text != last:
                    yield f"data: {text}\n\n"
                    last = text
                elif not job.active:
                    return
                else:
                    yield ": keep-alive\n\n"
                time.sleep(EVENT_PERIOD_S)

        return Response(stream_with_context(stream()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def job_state(job) -> dict:
    """What the status route, the events and the pages' live parts show of a job."""
    return {"id": job.id, "name": job.name, "kind": job.kind, "status": job.status, "error": job.error or None,
            "elapsed": job.elapsed(), "status_history": job.history, "log_tail": job.log_tail(4000)}


def register_event_extra(app: Flask, kind: str, fn) -> None:
    """Let a job kind's pages add fields to its server-sent events: fn(job) -> dict."""
    app.extensions.setdefault("caffelike.event_extras", {})[kind] = fn


# ----------------------------------------------------------------------------------------------------- format
def fmt_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_time(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def job_folder_file(job, name: str) -> str:
    """A file of the job by a name from a request: existing and really inside the job folder (its real path,
    so that a link pointing out of the folder is a 404 too), else 404."""
    try:
        path = job.path(name)
    except JobError:
        abort(404)
    real, root = os.path.realpath(path), os.path.realpath(job.dir)
    if not real.startswith(root + os.sep) or not os.path.isfile(real):
        abort(404)
    return real
