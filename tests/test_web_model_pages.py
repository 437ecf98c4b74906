"""A model's pages in caffelike serve (caffelike.web.model_pages, model_inference, classify_worker): a tiny
LeNet trained to Done through the scheduler (curves, JSON, events, download, classify one and many, bad inputs),
a longer run followed while it runs and aborted, a PyTorch model file job, and a Python-layer model."""
import io
import json
import os
import tarfile
import threading
import time

import numpy as np
import pytest
from PIL import Image

from caffelike import zoo
from caffelike.web.app import create_app
from caffelike.web.jobs import ABORTED, DONE, ERROR, RUNNING

PY = "{python}"
TRAIN = [PY, "-m", "caffelike", "train", "--solver", "solver.prototxt", "--trust-model-dir"]
ONE = "/models/images/classification/classify_one"
MANY = "/models/images/classification/classify_many"


# ------------------------------------------------------------------------------------------------- the jobs
def wait_for(scheduler, job, states=(DONE, ERROR, ABORTED), timeout=240, until=None):
    deadline = time.monotonic() + timeout
    while job.status not in states and not (until and until()):
        assert time.monotonic() < deadline, f"job stuck in {job.status}: {job.log_tail()}"
        scheduler.poll()
        time.sleep(0.1)
    return job.status


def make_dataset(store):
    from caffelike.digits.dataset import create_dataset

    job = store.create("dataset", "digits", {})
    create_dataset(job.path("dataset"), "bundled", max_per_class=20)
    job.set_status(DONE)
    store.save(job)
    return job


def make_model(app, dataset, name, epochs):
    from caffelike.digits.model_files import write_model_files

    store = app.extensions["caffelike.store"]
    job = store.create("model", name, {"epochs": epochs}, command=TRAIN, depends_on=[dataset.id])
    info = write_model_files(zoo.path("digits-lenet", "lenet.prototxt"), dataset.path("dataset"), job.dir,
                             epochs=epochs, random_seed=1)
    job.data = {"framework": "caffe", "dataset": dataset.id, "train_iter": info["train_iter"],
                "max_iter": info["max_iter"], "epochs": epochs, "snapshot_prefix": "snapshot",
                "num_classes": info["num_classes"], "mean": "image",
                "files": {k: os.path.basename(v) for k, v in info["files"].items() if k != "original"}}
    store.save(job)
    app.extensions["caffelike.scheduler"].enqueue(job)
    return job


def val_images(dataset, folder, n=20):
    """The first n validation records as PNG files, with their class indices."""
    from caffelike.data.datum import DatumDB, datum_pixels, parse_datum

    os.makedirs(folder, exist_ok=True)
    db = DatumDB(dataset.path("dataset", "val_db"))
    out = []
    try:
        for i, (key, value) in enumerate(db):
            if i == n:
                break
            datum = parse_datum(value, key.decode())
            path = os.path.join(folder, f"{i:03d}.png")
            Image.fromarray(datum_pixels(datum)[0]).save(path)
            out.append((path, int(datum.label)))
    finally:
        db.close()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_pages")
    app = create_app(str(root / "jobs"), start_scheduler=False, cpu_slots=2)
    store = app.extensions["caffelike.store"]
    dataset = make_dataset(store)
    job = make_model(app, dataset, "lenet", epochs=2)
    assert wait_for(app.extensions["caffelike.scheduler"], job) == DONE, job.log_tail()
    images = val_images(dataset, str(root / "images"))
    yield app, app.test_client(), dataset, job, images, root
    app.extensions["caffelike.scheduler"].stop()


def test_the_page_of_a_trained_model_shows_its_parts(trained):
    _, client, _, job, _, _ = trained
    r = client.get(f"/models/{job.id}")
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    for part in ("curves.svg", "classify_one", "classify_many", f"/models/{job.id}/download", "Epoch 2",
                 "deploy.prototxt", "Optimization Done", "status-done"):
        assert part in page, part
    assert "data-watch-job" not in page  # a finished job is not followed
    r = client.get(f"/jobs/{job.id}")
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/models/{job.id}")  # the page, not .json
    assert client.get(f"/models/{job.id}", headers={"Accept": "application/json"}).get_json()["id"] == job.id


def test_the_curves_are_an_svg_with_the_series_against_epochs(trained):
    _, client, _, job, _, _ = trained
    r = client.get(f"/models/{job.id}/curves.svg")
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    svg = r.get_data(as_text=True)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for label in ("train loss", "val loss", "val accuracy", "learning rate", "epoch"):
        assert label in svg, label


def test_the_json_has_digits_fields_and_the_latest_values(trained):
    _, client, dataset, job, _, _ = trained
    d = client.get(f"/models/{job.id}.json").get_json()
    assert d["id"] == job.id and d["name"] == "lenet" and d["status"] == DONE
    assert d["directory"] == job.dir and d["framework"] == "caffe" and d["dataset_id"] == dataset.id
    assert d["snapshots"] == [1, 2]
    assert d["progress"] == 1.0 and d["iteration"] == d["max_iter"] == 6 and d["epoch"] == 2
    assert 0 <= d["latest"]["test"]["accuracy"] <= 1 and d["latest"]["train"]["loss"] > 0
    assert d["latest"]["lr"] > 0


def read_events(client, job_id, count, timeout=20):
    events, response = [], client.get(f"/jobs/{job_id}/events", buffered=False)

    def read():
        for chunk in response.response:
            for line in chunk.decode().splitlines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
            if len(events) >= count:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    response.close()
    return events


def test_the_events_carry_the_progress(trained):
    _, client, _, job, _, _ = trained
    events = read_events(client, job.id, 1)
    assert events, "no event"
    e = events[0]
    assert e["status"] == DONE and e["progress"] == 1.0 and e["epoch"] == 2 and e["max_iter"] == 6
    assert e["remaining"] == 0 and isinstance(e["curves_version"], int)


def test_the_download_holds_a_loadable_model(trained):
    from caffelike.proto import caffe_pb2

    from caffelike.net import Net

    _, client, _, job, _, root = trained
    for url in (f"/models/{job.id}/download?epoch=1", f"/models/{job.id}/download.tar.gz?epoch=1"):
        r = client.get(url)
        assert r.status_code == 200, r.get_data(as_text=True)
        with tarfile.open(fileobj=io.BytesIO(r.data), mode="r:gz") as t:
            names = set(t.getnames())
            folder = root / "download"
            t.extractall(folder, filter="data")
    assert {"deploy.prototxt", "snapshot_iter_3.caffemodel", "labels.txt", "mean.binaryproto",
            "info.json"} <= names
    info = json.loads((folder / "info.json").read_text())
    assert info["snapshot epoch"] == 1 and info["job id"] == job.id
    net = Net(str(folder / "deploy.prototxt"), caffe_pb2.TEST, weights=str(folder / "snapshot_iter_3.caffemodel"))
    assert list(net.outputs) == ["softmax"]
    r = client.get(f"/models/{job.id}/download.zip")
    assert r.status_code == 200 and r.data[:2] == b"PK"
    r = client.get(f"/models/{job.id}/download?epoch=7", headers={"Accept": "application/json"})
    assert r.status_code == 400 and "epoch" in r.get_json()["fields"]
    assert client.get(f"/models/{job.id}/download?epoch=7").status_code == 400  # a page for a browser


def test_classify_one_matches_the_net_run_directly(trained):
    from caffelike.proto import caffe_pb2

    from caffelike.digits.classify import classify_image
    from caffelike.net import Net

    _, client, dataset, job, images, _ = trained
    path, _ = images[0]
    with open(path, "rb") as f:
        r = client.post(ONE + ".json", data={"job_id": job.id, "image_file": (f, "digit.png")})
    assert r.status_code == 200, r.get_data(as_text=True)
    predictions = r.get_json()["predictions"]
    assert len(predictions) == 5 and sum(p for _, p in predictions) <= 100.0 + 1e-6
    net = Net(job.path("deploy.prototxt"), caffe_pb2.TEST, weights=job.path("snapshot_iter_6.caffemodel"))
    direct, _ = classify_image(net, path, mean=dataset.path("dataset", "mean.binaryproto"),
                               labels=dataset.path("dataset", "labels.txt"))
    assert [label for label, _ in predictions] == [p.label for p in direct]
    assert [pct for _, pct in predictions] == pytest.approx([100 * p.probability for p in direct], abs=0.006)
    # the same through a server path and an earlier snapshot
    r = client.post(ONE + ".json", data={"job_id": job.id, "image_path": path, "snapshot_epoch": "1"})
    assert r.status_code == 200 and len(r.get_json()["predictions"]) == 5


def test_classify_one_with_visualizations_shows_the_report(trained):
    _, client, _, job, images, _ = trained
    r = client.post(ONE, data={"job_id": job.id, "image_path": images[1][0], "show_visualizations": "on"})
    assert r.status_code == 200, r.get_data(as_text=True)
    page = r.get_data(as_text=True)
    assert 'id="predictions"' in page and 'id="report"' in page and "input.png" in page
    src = page.split('id="report" src="', 1)[1].split('"', 1)[0]
    report = client.get(src)
    assert report.status_code == 200 and "Visualizations and statistics" in report.get_data(as_text=True)
    assert "default-src 'none'" in report.headers["Content-Security-Policy"]
    j = client.post(ONE + ".json", data={"job_id": job.id, "image_path": images[1][0],
                                         "show_visualizations": "1"}).get_json()
    assert j["visualizations"].endswith("report.html") and len(j["predictions"]) == 5


def test_classify_many_with_labels_gives_accuracy_and_a_confusion_matrix(trained):
    _, client, _, job, images, _ = trained
    folder = os.path.dirname(images[0][0])
    lines = "\n".join(f"{os.path.basename(p)} {label}" for p, label in images) + "\nmissing.png 3\n"
    r = client.post(MANY + ".json", data={"job_id": job.id, "image_folder": folder,
                                          "image_list": (io.BytesIO(lines.encode()), "list.txt")})
    assert r.status_code == 200, r.get_data(as_text=True)
    d = r.get_json()
    assert len(d["classifications"]) == len(images)
    assert all(len(top) == 5 for top in d["classifications"].values())
    matrix = np.array(d["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == len(images)
    truth = np.bincount([label for _, label in images], minlength=10)
    assert (matrix.sum(axis=1) == truth).all()
    assert d["top1_accuracy"] == pytest.approx(100 * np.trace(matrix) / len(images), abs=0.01)
    assert d["top1_accuracy"] <= d["top5_accuracy"] <= 100
    assert len(d["per_class_accuracy"]) == 10
    assert list(d["errors"]) == [os.path.join(folder, "missing.png")]
    page = client.post(MANY, data={"job_id": job.id, "image_folder": folder, "num_test_images": "5",
                                   "image_list": (io.BytesIO(lines.encode()), "list.txt")})
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="confusion"' in html and html.count("<code>") == 5


def test_classify_many_without_labels_lists_each_top5(trained):
    _, client, _, job, images, _ = trained
    lines = "\n".join(p for p, _ in images[:3])
    d = client.post(MANY + ".json", data={"job_id": job.id, "image_list": (io.BytesIO(lines.encode()),
                                                                           "l.txt")}).get_json()
    assert sorted(d["classifications"]) == sorted(p for p, _ in images[:3])
    assert "confusion_matrix" not in d


@pytest.mark.parametrize("route, data, status, field", [
    (ONE, {}, 400, "image_file"),
    (ONE, {"image_path": "/no/such/image.png"}, 400, "image_path"),
    (ONE, {"image_path": "relative.png"}, 400, "image_path"),
    (ONE, {"image_file": "NOT_AN_IMAGE"}, 400, "image_file"),
    (ONE, {"job_id": "20000101-000000-beef", "image_path": "/etc/hostname"}, 404, "job_id"),
    (ONE, {"image_path": "IMAGE", "snapshot_epoch": "5"}, 400, "snapshot_epoch"),
    (ONE, {"image_path": "IMAGE", "snapshot_epoch": "one"}, 400, "snapshot_epoch"),
    (MANY, {}, 400, "image_list"),
    (MANY, {"image_list": "TOO_LONG"}, 400, "image_list"),
    (MANY, {"image_list": "IMAGES", "image_folder": "/no/such/folder"}, 400, "image_folder"),
    (MANY, {"image_list": "IMAGES", "num_test_images": "0"}, 400, "num_test_images"),
    (MANY, {"image_list": "MISSING"}, 400, "image_list"),
])
def test_bad_inputs_are_4xx_json_naming_the_field(trained, route, data, status, field):
    _, client, _, job, images, _ = trained
    data = dict(data)
    data.setdefault("job_id", job.id)
    if data.get("image_file") == "NOT_AN_IMAGE":
        data["image_file"] = (io.BytesIO(b"these are not pixels\n" * 10), "notes.png")
    if data.get("image_path") == "IMAGE":
        data["image_path"] = images[0][0]
    lists = {"TOO_LONG": "\n".join(f"{i}.png" for i in range(10001)), "IMAGES": f"{images[0][0]} 1",
             "MISSING": "/no/such/a.png\n/no/such/b.png"}
    if data.get("image_list") in lists:
        data["image_list"] = (io.BytesIO(lists[data["image_list"]].encode()), "list.txt")
    r = client.post(route + ".json", data=data)
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert field in body["fields"] and body["errors"][0].startswith(field)


def test_an_html_form_error_shows_beside_its_field(trained):
    _, client, _, job, _, _ = trained
    r = client.post(ONE, data={"job_id": job.id, "image_path": "/no/such/image.png"})
    assert r.status_code == 400
    page = r.get_data(as_text=True)
    assert 'data-error-for="image_path"' in page and "/no/such/image.png" in page


def test_unknown_models_and_files_are_404(trained):
    _, client, _, job, _, _ = trained
    assert client.get("/models/20000101-000000-beef.json").status_code == 404
    assert client.get("/models/20000101-000000-beef/curves.svg").status_code == 404
    assert client.get(f"/models/{job.id}/files/job.json").status_code == 404
    assert client.get(f"/models/{job.id}/files/deploy.prototxt").status_code == 200
    run = job.path("inference", "20000101-000000-00000000")
    os.makedirs(os.path.join(run, "report"), exist_ok=True)
    for name in ("request.json", "input.png", "report/report.html"):
        with open(os.path.join(run, name), "w") as f:
            f.write("x")
    url = f"/models/{job.id}/inference/20000101-000000-00000000/"
    assert client.get(url + "report/report.html").status_code == 200
    assert client.get(url + "input.png").status_code == 200
    for name in ("../../job.json", "report/../../../job.json", "request.json", "report/../request.json",
                 "report/../../20000101-000000-00000000/request.json"):
        assert client.get(url + name).status_code == 404, name


def test_a_running_model_shows_time_left_and_can_be_aborted(trained):
    app, client, dataset, _, _, _ = trained
    scheduler = app.extensions["caffelike.scheduler"]
    job = make_model(app, dataset, "long", epochs=200)

    def trained_some():
        d = client.get(f"/models/{job.id}.json").get_json()
        return job.status == RUNNING and (d["iteration"] or 0) >= 3

    assert wait_for(scheduler, job, until=trained_some, timeout=120) == RUNNING
    d = client.get(f"/models/{job.id}.json").get_json()
    assert isinstance(d["remaining"], float) and d["remaining"] > 0
    assert 0 < d["progress"] < 1 and d["max_iter"] == 600
    page = client.get(f"/models/{job.id}").get_data(as_text=True)
    assert f'data-watch-job="{job.id}"' in page and "data-abort" in page
    events = read_events(client, job.id, 2, timeout=15)
    assert len(events) == 2 and all(e["status"] == RUNNING for e in events)
    assert isinstance(events[-1]["remaining"], float) and events[-1]["iteration"] >= 3
    r = client.post(f"/models/{job.id}/abort", headers={"Accept": "application/json"})
    assert r.status_code == 200
    assert wait_for(scheduler, job, timeout=60) == ABORTED
    assert client.get(f"/models/{job.id}.json").get_json()["status"] == ABORTED


def test_a_pytorch_model_file_job_downloads_and_classifies(trained):
    app, client, dataset, _, images, _ = trained
    store, scheduler = app.extensions["caffelike.store"], app.extensions["caffelike.scheduler"]
    command = [PY, "-m", "caffelike", "train", "--network", "model.py", "--dataset", dataset.path("dataset"),
               "--epochs", "2", "--seed", "1"]
    job = store.create("model", "torch lenet", {}, command=command, depends_on=[dataset.id],
                       data={"framework": "pytorch", "dataset": dataset.id, "train_iter": 3, "max_iter": 6,
                             "epochs": 2, "snapshot_prefix": "snapshot", "mean": "image",
                             "files": {"network": "model.py"}})
    with open(zoo.path("torch-lenet", "lenet.py")) as src, open(job.path("model.py"), "w") as dst:
        dst.write(src.read())
    scheduler.enqueue(job)
    assert wait_for(scheduler, job) == DONE, job.log_tail()
    d = client.get(f"/models/{job.id}.json").get_json()
    assert d["framework"] == "pytorch" and d["snapshots"] == [1, 2] and d["progress"] == 1.0
    with tarfile.open(fileobj=io.BytesIO(client.get(f"/models/{job.id}/download").data), mode="r:gz") as t:
        assert {"model.py", "snapshot_iter_6.pt", "labels.txt", "mean.binaryproto", "info.json"} <= set(t.getnames())
    r = client.post(ONE + ".json", data={"job_id": job.id, "image_path": images[0][0], "show_visualizations": "on"})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert len(body["predictions"]) == 5 and sum(p for _, p in body["predictions"]) <= 100.0 + 1e-6
    assert client.get(body["visualizations"]).status_code == 200


@pytest.mark.slow
def test_a_python_layer_model_classifies_outside_the_server(trained):
    """DIGITS' occlusion tutorial model: its BlankSquare layer is user code, run only by the subprocess."""
    import sys

    from caffelike.digits.model_files import write_model_files

    app, client, dataset, _, images, _ = trained
    store, scheduler = app.extensions["caffelike.store"], app.extensions["caffelike.scheduler"]
    sys.modules.pop("digits_python_layers", None)  # (earlier tests in this process may have loaded the zoo's)
    job = store.create("model", "occlusion", {}, command=TRAIN, depends_on=[dataset.id])
    info = write_model_files(zoo.path("digits-occlusion", "lenet_blank_square.prototxt"), dataset.path("dataset"),
                             job.dir, epochs=1, random_seed=1,
                             python_layer=zoo.path("digits-occlusion", "digits_python_layers.py"))
    job.data = {"framework": "caffe", "dataset": dataset.id, "train_iter": info["train_iter"],
                "max_iter": info["max_iter"], "snapshot_prefix": "snapshot", "mean": "image",
                "files": {k: os.path.basename(v) for k, v in info["files"].items() if k != "original"}}
    store.save(job)
    scheduler.enqueue(job)
    assert wait_for(scheduler, job) == DONE, job.log_tail()
    r = client.post(ONE, data={"job_id": job.id, "image_path": images[0][0], "show_visualizations": "on"})
    assert r.status_code == 200, r.get_data(as_text=True)
    src = r.get_data(as_text=True).split('id="report" src="', 1)[1].split('"', 1)[0]
    assert "scaled" in client.get(src).get_data(as_text=True)
    with tarfile.open(fileobj=io.BytesIO(client.get(f"/models/{job.id}/download").data), mode="r:gz") as t:
        assert "digits_python_layers.py" in t.getnames()
    assert "digits_python_layers" not in sys.modules
