"""A DIGITS REST script, unchanged, against `caffelike serve` over real HTTP: create a dataset, create a model on
it, poll the model's status until it is done, then classify one image - with DIGITS' routes and field names."""
from __future__ import annotations

import io
import json
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from caffelike.data.bundled import mnist_5k


@pytest.fixture
def base(tmp_path):
    from werkzeug.serving import make_server

    from caffelike.web.app import create_app

    app = create_app(str(tmp_path / "jobs"), cpu_slots=2)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    app.extensions["caffelike.scheduler"].stop(kill=True)


def post(url: str, fields: dict, files: dict | None = None) -> tuple[int, dict]:
    """A multipart POST as `curl -F` sends it."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in (files or {}).items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=body.getvalue(), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def wait_done(url: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = get(url)
        if state["status"] in ("Done", "Error", "Aborted"):
            return state
        time.sleep(1)
    raise AssertionError(f"{url} still {state['status']}")


def test_a_digits_rest_script_runs_unchanged(base):
    status, dataset = post(base + "/datasets/images/classification.json", {
        "dataset_name": "mnist-rest", "method": "bundled", "resize_channels": 1, "resize_width": 28,
        "resize_height": 28, "folder_pct_val": 25, "folder_train_max_per_class": 40})
    assert status == 200 and set(dataset) >= {"job_id", "name", "status"}, dataset
    status, model = post(base + "/models/images/classification.json", {
        "model_name": "lenet-rest", "dataset": dataset["job_id"], "method": "standard",
        "standard_networks": "lenet", "framework": "caffe", "train_epochs": 2, "learning_rate": 0.01,
        "random_seed": 3})
    assert status == 200 and model["name"] == "lenet-rest", model  # queued behind its dataset

    assert wait_done(f"{base}/datasets/{dataset['job_id']}/status")["status"] == "Done"
    state = wait_done(f"{base}/models/{model['job_id']}/status")
    assert state["status"] == "Done", state
    info = get(f"{base}/models/{model['job_id']}.json")
    assert info["id"] == model["job_id"] and info["status"] == "Done"
    index = get(base + "/index.json")
    assert [d["id"] for d in index["datasets"]] == [dataset["job_id"]]
    assert [m["id"] for m in index["models"]] == [model["job_id"]]

    images, _ = mnist_5k()
    png = io.BytesIO()
    Image.fromarray(255 - np.asarray(images[1], np.uint8).reshape(28, 28)).save(png, format="PNG")
    status, answer = post(base + "/models/images/classification/classify_one.json", {"job_id": model["job_id"]},
                          {"image_file": ("digit.png", png.getvalue())})
    assert status == 200, answer
    predictions = answer["predictions"]
    assert len(predictions) == 5 and all(isinstance(label, str) for label, _ in predictions)
    assert 0 < sum(p for _, p in predictions) <= 100.01

    status, answer = post(base + "/models/images/classification.json", {"model_name": "x",
                                                                          "dataset": "nope"})
    assert status == 400 and any("dataset" in e for e in answer["errors"])
