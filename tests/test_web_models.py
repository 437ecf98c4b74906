"""caffelike serve's model jobs (caffelike.web.model_views, model_prep): the new model form and DIGITS' REST route,
Caffe networks (standard, custom with an uploaded Python layer, previous) and PyTorch model files trained to Done
in their own subprocess, every bad field a 400 naming it, waiting on a dataset, cloning, and deletion rules."""
import io
import os
import shutil
import time

import pytest

from caffelike import zoo
from caffelike.web.app import create_app
from caffelike.web.jobs import DONE, ERROR, RUNNING, WAITING

URL = "/models/images/classification.json"
OCCLUSION = ("digits-occlusion", "lenet_blank_square.prototxt")
LAYER = ("digits-occlusion", "digits_python_layers.py")
RAISING_LAYER = b'''import caffe


class BlankSquareLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        raise RuntimeError("the square fell off the image")

    def backward(self, top, propagate_down, bottom):
        pass
'''


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from caffelike.digits.dataset import create_dataset

    folder = tmp_path_factory.mktemp("digits") / "dataset"
    create_dataset(str(folder), "bundled", max_per_class=20)  # 150 train, 50 val images of 28x28
    return str(folder)


@pytest.fixture
def app(tmp_path):
    return create_app(str(tmp_path / "jobs"), start_scheduler=False)


@pytest.fixture
def client(app):
    return app.test_client()


def stores(app):
    return app.extensions["caffelike.store"], app.extensions["caffelike.scheduler"]


def dataset_job(app, tiny_dataset, status=DONE):
    store, _ = stores(app)
    job = store.create("dataset", "tiny digits", {"folder": "bundled"})
    if status == DONE:
        shutil.copytree(tiny_dataset, job.path("dataset"))
    job.set_status(status)
    store.save(job)
    return job


def run_to_end(app, job_id, timeout=180):
    store, scheduler = stores(app)
    job = store.get(job_id)
    deadline = time.monotonic() + timeout
    while job.status not in (DONE, ERROR, "Aborted"):
        assert time.monotonic() < deadline, f"job stuck in {job.status}: {job.log_tail()}"
        scheduler.poll()
        time.sleep(0.1)
    return job


def fields(**kw):
    values = {"method": "standard", "standard_networks": "lenet", "train_epochs": "1", "batch_size": "16",
              "model_name": "m", "random_seed": "1"}
    values.update(kw)
    return {k: v for k, v in values.items() if v is not None}


def post(client, **kw):
    return client.post(URL, data=fields(**kw), content_type="multipart/form-data")


# ------------------------------------------------------------------------------------------- training runs
def test_standard_lenet_trains_one_epoch_to_done(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    r = post(client, dataset=ds.id, model_name="LeNet", solver_type="NESTEROV", lr_policy="exp")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["name"] == "LeNet" and body["status"] == WAITING and body["job_id"]
    job = run_to_end(app, body["job_id"])
    assert job.status == DONE, job.error
    for name in ("original.prototxt", "train_val.prototxt", "deploy.prototxt", "solver.prototxt",
                 "snapshot_iter_10.caffemodel"):
        assert os.path.isfile(job.path(name)), name
    d = job.data
    assert d["framework"] == "caffe" and d["dataset"] == ds.id and d["snapshot_prefix"] == "snapshot"
    assert d["files"] == {"original": "original.prototxt", "train_val": "train_val.prototxt",
                          "deploy": "deploy.prototxt", "solver": "solver.prototxt"}
    assert (d["train_iter"], d["max_iter"], d["epochs"], d["num_classes"]) == (10, 10, 1, 10)  # ceil(150 / 16)
    assert d["input_shape"] == [1, 28, 28] and d["mean"] == "image"
    assert job.depends_on == [ds.id]
    assert job.command[:6] == ["{python}", "-m", "caffelike", "train", "--solver", "solver.prototxt"]
    with open(job.path("solver.prototxt")) as f:
        solver = f.read()
    assert 'type: "Nesterov"' in solver and 'lr_policy: "exp"' in solver and "random_seed: 1" in solver
    assert "Iteration 10" in job.log_tail(100000)
    status = client.get(f"/models/{job.id}/status").get_json()
    assert status["status"] == DONE


def test_occlusion_network_with_an_uploaded_python_layer_trains_to_done(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    with open(zoo.path(*OCCLUSION)) as f:
        network = f.read()
    with open(zoo.path(*LAYER), "rb") as f:
        layer = f.read()
    r = post(client, dataset=ds.id, method="custom", custom_network=network, model_name="occlusion",
             python_layer_client_file=(io.BytesIO(layer), "my_layers.py"))
    assert r.status_code == 200, r.get_json()
    job = run_to_end(app, r.get_json()["job_id"])
    assert job.status == DONE, job.error
    with open(job.path("digits_python_layers.py"), "rb") as f:
        assert f.read() == layer
    assert job.data["files"]["python_layer"] == "digits_python_layers.py"
    assert os.path.isfile(job.path("snapshot_iter_10.caffemodel"))
    assert "--trust-model-dir" in job.command


def test_pytorch_lenet_trains_to_done(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    r = post(client, dataset=ds.id, framework="torch", model_name="torch lenet", lr_policy="multistep",
             lr_multistep_values="40,80")
    assert r.status_code == 200, r.get_json()
    job = run_to_end(app, r.get_json()["job_id"])
    assert job.status == DONE, job.error
    assert os.path.isfile(job.path("model.py")) and os.path.isfile(job.path("snapshot_iter_10.pt"))
    d = job.data
    assert d["framework"] == "pytorch" and d["files"] == {"network": "model.py", "solver": "solver.prototxt"}
    assert (d["train_iter"], d["max_iter"], d["num_classes"], d["input_shape"]) == (10, 10, 10, [1, 28, 28])
    cmd = job.command
    assert cmd[cmd.index("--dataset") + 1] == ds.path("dataset") and cmd[cmd.index("--epochs") + 1] == "1"
    with open(job.path("solver.prototxt")) as f:
        solver = f.read()
    assert "stepvalue: 4" in solver and "stepvalue: 8" in solver and "net" not in solver
    r = post(client, dataset=ds.id, method="previous", previous_networks=job.id, model_name="more")
    assert r.status_code == 200, r.get_json()
    again = stores(app)[0].get(r.get_json()["job_id"])
    assert again.data["framework"] == "pytorch" and again.depends_on == [ds.id, job.id]
    assert again.command[again.command.index("--weights") + 1] == job.path("snapshot_iter_10.pt")
    with open(again.path("model.py")) as f, open(zoo.path("torch-lenet", "lenet.py")) as g:
        assert f.read() == g.read()


def test_a_python_layer_that_raises_fails_the_job_not_the_server(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    with open(zoo.path(*OCCLUSION)) as f:
        network = f.read()
    r = post(client, dataset=ds.id, method="custom", custom_network=network,
             python_layer_client_file=(io.BytesIO(RAISING_LAYER), "layers.py"))
    assert r.status_code == 200, r.get_json()
    job = run_to_end(app, r.get_json()["job_id"])
    assert job.status == ERROR
    assert "the square fell off the image" in job.error
    assert client.get("/index.json").status_code == 200
    assert client.get(f"/models/{job.id}/status").get_json()["error"] == job.error


def test_a_previous_model_gives_its_network_and_last_snapshot(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    first = run_to_end(app, post(client, dataset=ds.id).get_json()["job_id"])
    assert first.status == DONE, first.error
    r = post(client, dataset=ds.id, method="previous", previous_networks=first.id, model_name="again")
    assert r.status_code == 200, r.get_json()
    store, _ = stores(app)
    job = store.get(r.get_json()["job_id"])
    assert job.depends_on == [ds.id, first.id]
    assert job.command[job.command.index("--weights") + 1] == first.path("snapshot_iter_10.caffemodel")
    with open(job.path("original.prototxt")) as f, open(first.path("original.prototxt")) as g:
        assert f.read() == g.read()  # same dataset: the same layers, so every weight fits
    assert post(client, dataset=ds.id, method="previous", previous_networks="nope").status_code == 400


# ----------------------------------------------------------------------------------------------- bad fields
BAD = [
    ({"dataset": "20990101-000000-abcd"}, "dataset", "no dataset"),
    ({"train_epochs": "0"}, "train_epochs", "at least 1"),
    ({"train_epochs": "many"}, "train_epochs", "whole number"),
    ({"learning_rate": "-0.1"}, "learning_rate", "at least"),
    ({"learning_rate": "fast"}, "learning_rate", "number"),
    ({"learning_rate": "0.1,0.01"}, "learning_rate", "one value"),
    ({"batch_size": ["16", "32"]}, "batch_size", "one value"),
    ({"batch_size": "0"}, "batch_size", "at least 1"),
    ({"solver_type": "LBFGS"}, "solver_type", "SGD"),
    ({"lr_policy": "cosine"}, "lr_policy", "one of"),
    ({"lr_policy": "multistep", "lr_multistep_values": "50,x"}, "lr_multistep_values", "comma-separated"),
    ({"use_mean": "median"}, "use_mean", "one of"),
    ({"method": "custom", "custom_network": 'layer {\n  name: "a"\n  typo: "ReLU"\n}'}, "custom_network",
     "custom_network:3:"),
    ({"method": "custom", "custom_network": 'layer { name: "a" type: "Bogus" bottom: "data" top: "a" }'},
     "custom_network", "unknown layer type 'Bogus'"),
    ({"method": "custom"}, "custom_network", "required"),
    ({"model_name": ""}, "model_name", "required"),
    ({"standard_networks": "resnet"}, "standard_networks", "one of"),
    ({"framework": "torch", "standard_networks": "alexnet"}, "standard_networks", "one of"),
    ({"framework": "torch", "method": "custom", "custom_network": "def network(params:\n  pass"},
     "custom_network", "model.py:1"),
    ({"framework": "torch", "method": "custom", "custom_network": "import torch\n"}, "custom_network",
     "no network"),
    ({"method": "custom", "custom_network_snapshot": "/no/such/weights.caffemodel"}, "custom_network_snapshot",
     "does not exist"),
    ({"python_layer_server_file": "/no/such/layers.py"}, "python_layer_server_file", "does not exist"),
    ({"select_gpus": "0"}, "select_gpus", "start it with --gpus"),
    ({"crop_size": "64"}, "crop_size", "larger than the images"),
    ({"method": "previous"}, "previous_networks", "required"),
]


@pytest.mark.parametrize("values,field,message", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_every_bad_field_is_a_400_naming_it(app, client, tiny_dataset, values, field, message):
    ds = dataset_job(app, tiny_dataset)
    values = {"dataset": ds.id, **values}
    r = post(client, **values)
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert field in body["fields"], body
    assert message in body["fields"][field], body
    assert any(e.startswith(f"{field}: ") for e in body["errors"])
    store, _ = stores(app)
    assert store.list("model") == []  # nothing was created, nothing queued


def test_a_python_layer_module_without_its_file_is_refused(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    with open(zoo.path(*OCCLUSION)) as f:
        r = post(client, dataset=ds.id, method="custom", custom_network=f.read())
    assert r.status_code == 400
    assert "digits_python_layers" in r.get_json()["fields"]["python_layer_client_file"]


def test_an_uploaded_file_name_never_becomes_a_path(app, client, tiny_dataset, tmp_path):
    ds = dataset_job(app, tiny_dataset)
    with open(zoo.path(*OCCLUSION)) as f:
        network = f.read()
    for name in ("../../x.py", "/tmp/abs_x.py", "..\\..\\x.py"):
        r = post(client, dataset=ds.id, method="custom", custom_network=network,
                 python_layer_client_file=(io.BytesIO(b"import caffe\n"), name))
        assert r.status_code == 200, r.get_json()
        store, _ = stores(app)
        job = store.get(r.get_json()["job_id"])
        assert sorted(n for n in os.listdir(job.dir) if n.endswith(".py")) == ["digits_python_layers.py"]
    assert not os.path.exists(tmp_path / "x.py") and not os.path.exists("/tmp/abs_x.py")
    assert not os.path.exists(os.path.join(store.root, "x.py"))
    r = post(client, dataset=ds.id, method="custom", custom_network=network,
             python_layer_client_file=(io.BytesIO(b"x"), "layers.sh"))
    assert r.status_code == 400 and "python_layer_client_file" in r.get_json()["fields"]


# ----------------------------------------------------------------------------------------- the job's life
def test_a_model_waits_for_a_running_dataset_then_trains(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset, status=RUNNING)
    r = post(client, dataset=ds.id)
    assert r.status_code == 200, r.get_json()
    store, scheduler = stores(app)
    job = store.get(r.get_json()["job_id"])
    scheduler.poll()
    assert job.status == WAITING and not os.path.exists(job.path("solver.prototxt"))
    shutil.copytree(tiny_dataset, ds.path("dataset"))
    ds.set_status(DONE)
    store.save(ds)
    job = run_to_end(app, job.id)
    assert job.status == DONE, job.error
    assert job.data["train_iter"] == 10 and job.data["pending"] is False


def test_a_model_errors_when_its_dataset_errors(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset, status=RUNNING)
    job_id = post(client, dataset=ds.id).get_json()["job_id"]
    store, scheduler = stores(app)
    scheduler.poll()
    assert store.get(job_id).status == WAITING
    ds.set_status(ERROR, "bad images")
    store.save(ds)
    job = run_to_end(app, job_id)
    assert job.status == ERROR and ds.id in job.error
    assert post(client, dataset=ds.id).get_json()["fields"]["dataset"].endswith("choose another")


def test_the_dataset_of_a_model_cannot_be_deleted(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    job_id = post(client, dataset=ds.id).get_json()["job_id"]
    r = client.delete(f"/datasets/{ds.id}")
    assert r.status_code == 409 and job_id in r.get_json()["errors"][0]
    assert os.path.isdir(ds.path("dataset"))


# --------------------------------------------------------------------------------------------------- the page
def test_the_form_page_and_clone(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    for url in ("/models/new", "/models/images/classification/new"):
        page = client.get(url)
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        for name in ("dataset", "standard_networks", "custom_network", "python_layer_client_file",
                     "learning_rate", "lr_policy", "lr_step_size", "solver_type", "model_name", "framework"):
            assert f'name="{name}"' in html, name
        assert ds.name in html
    with open(zoo.path(*LAYER), "rb") as f:
        layer = f.read()
    with open(zoo.path(*OCCLUSION)) as f:
        network = f.read()
    r = post(client, dataset=ds.id, method="custom", custom_network=network, learning_rate="0.05",
             model_name="to clone", python_layer_client_file=(io.BytesIO(layer), "l.py"))
    job_id = r.get_json()["job_id"]
    store, _ = stores(app)
    html = client.get(f"/models/new?clone={job_id}").get_data(as_text=True)
    assert 'value="0.05"' in html and 'value="to clone"' in html and "BlankSquareLayer" in html
    assert store.get(job_id).path("digits_python_layers.py") in html  # the upload, offered from the job
    assert client.get("/models/new?clone=nope").status_code == 404


def test_a_bad_html_submit_shows_the_form_again_with_messages(app, client, tiny_dataset):
    ds = dataset_job(app, tiny_dataset)
    r = client.post("/models/images/classification", data=fields(dataset=ds.id, train_epochs="-3",
                                                                  model_name="kept name"))
    assert r.status_code == 400
    html = r.get_data(as_text=True)
    assert 'data-error-for="train_epochs"' in html and 'value="kept name"' in html
    r = client.post("/models/images/classification", data=fields(dataset=ds.id))
    assert r.status_code == 302 and "/models/" in r.headers["Location"]


def test_the_page_links_and_posts_to_the_canonical_urls(app):
    with app.test_request_context():
        from flask import url_for

        assert url_for("models.new") == "/models/new"
        assert url_for("models.create") == "/models/images/classification"


@pytest.mark.parametrize("framework", ["caffe", "torch"])
def test_chosen_gpus_take_gpu_slots_and_the_command_names_them(tmp_path, tiny_dataset, framework):
    import torch

    app = create_app(str(tmp_path / "jobs"), start_scheduler=False, gpu_ids=[0])
    ds = dataset_job(app, tiny_dataset)
    r = post(app.test_client(), dataset=ds.id, framework=framework, select_gpus="0")
    assert r.status_code == 200, r.get_json()
    job = stores(app)[0].get(r.get_json()["job_id"])
    assert job.gpus == 1 and job.command[-2:] == ["--gpu", "{gpus}"]
    assert post(app.test_client(), dataset=ds.id, select_gpus="3").get_json()["fields"]["select_gpus"]
    assert post(app.test_client(), dataset=ds.id, select_gpu_count="2").get_json()["fields"]["select_gpu_count"]
    if not torch.cuda.is_available():
        return
    job = run_to_end(app, job.id)
    assert job.status == DONE, job.error
    assert "Use CPU" not in job.log_tail(100000)
