"""`caffelike serve`'s dataset jobs: the new-dataset form and DIGITS' REST route (every bad field answered beside
its field and with a 400), uploads unpacked safely into the job folder, the jobs run by the scheduler as
subprocesses (`python -m caffelike dataset create` in the job folder), and the dataset page and JSON."""
import io
import json
import os
import re
import tarfile
import time
import zipfile

import pytest
from PIL import Image

from caffelike.web import dataset_info, uploads
from caffelike.web.app import create_app
from caffelike.web.uploads import UploadError, extract_archive, save_upload

CREATE = "/datasets/images/classification"
CREATE_JSON = CREATE + ".json"
COLORS = {"cat": (220, 40, 40), "dog": (40, 40, 220), "red_fox": (40, 200, 40)}
ARCHIVE_CAP = 1 << 20


# --------------------------------------------------------------------------------------------------- helpers
def make_class_folders(root, n=6, size=(10, 8)):
    """One sub-folder of n tiny PNGs per class of COLORS."""
    for name, color in COLORS.items():
        os.makedirs(os.path.join(root, name))
        for i in range(n):
            shade = tuple(min(255, c + 3 * i) for c in color)
            Image.new("RGB", size, shade).save(os.path.join(root, name, f"{i:02d}.png"))
    return str(root)


def zip_of(folder, top="pets"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for dirpath, _, files in os.walk(folder):
            for f in sorted(files):
                full = os.path.join(dirpath, f)
                zf.write(full, os.path.join(top, os.path.relpath(full, folder)))
    return buf.getvalue()


def zip_with(*members):
    """A zip of (ZipInfo or name, bytes) members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return buf.getvalue()


def tar_with(*members, mode="w:gz"):
    """A tar of (TarInfo, bytes or None) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def png_bytes(color=(1, 2, 3)):
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, "PNG")
    return out.getvalue()


def wait_done(app, ids, timeout=180):
    """Drive the scheduler until every job of `ids` has ended; returns {id: status}."""
    store, sched = app.extensions["caffelike.store"], app.extensions["caffelike.scheduler"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sched.poll()
        if all(not store.get(i).active for i in ids):
            return {i: store.get(i).status for i in ids}
        time.sleep(0.1)
    logs = {i: store.get(i).log_tail() for i in ids}
    pytest.fail(f"jobs still running after {timeout}s: {logs}")


def upload(client, data, filename="images.zip", route=CREATE_JSON, **fields):
    form = {"method": "upload", "dataset_name": "up", "resize_width": "8", "resize_height": "8", **fields,
            "archive": (io.BytesIO(data), filename)}
    return client.post(route, data=form, content_type="multipart/form-data")


# -------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server with four dataset jobs run together: the bundled digits, a folder, an uploaded zip, and one
    the delete test removes."""
    base = tmp_path_factory.mktemp("web_datasets")
    jobs_dir = base / "jobs"
    app = create_app(str(jobs_dir), start_scheduler=False, cpu_slots=4)
    app.config["UPLOAD_MAX_EXTRACT_BYTES"] = ARCHIVE_CAP
    client = app.test_client()
    folder = make_class_folders(base / "pets")
    size = {"resize_channels": "3", "resize_width": "8", "resize_height": "8"}
    ids = {}
    r = client.post(CREATE_JSON, data={"method": "bundled", "dataset_name": "digits",
                                       "folder_train_max_per_class": "20"})
    assert r.status_code == 200, r.get_json()
    ids["bundled"] = r.get_json()["job_id"]
    r = client.post(CREATE_JSON, data={"method": "folder", "dataset_name": "pets", "folder_train": folder,
                                       "folder_pct_val": "25", "folder_pct_test": "20", "resize_mode": "crop",
                                       "seed": "3", **size})
    assert r.status_code == 200, r.get_json()
    ids["folder"] = r.get_json()["job_id"]
    r = upload(client, zip_of(folder), dataset_name="uploaded", encoding="jpg")
    assert r.status_code == 200, r.get_json()
    ids["upload"] = r.get_json()["job_id"]
    r = client.post(CREATE_JSON, data={"method": "folder", "dataset_name": "doomed", "folder_train": folder, **size})
    ids["doomed"] = r.get_json()["job_id"]
    statuses = wait_done(app, list(ids.values()))
    return {"app": app, "client": client, "ids": ids, "statuses": statuses, "folder": folder, "base": base,
            "jobs_dir": str(jobs_dir)}


@pytest.fixture
def client(served):
    return served["client"]


def job_dirs(served):
    return sorted(os.listdir(served["jobs_dir"]))


# ------------------------------------------------------------------------------------------------ the jobs
def test_bundled_dataset_runs_to_done_and_its_page_shows_it(served, client):
    job_id = served["ids"]["bundled"]
    assert served["statuses"][job_id] == "Done"
    job = served["app"].extensions["caffelike.store"].get(job_id)
    states = [s for s, _ in job.history]
    assert states[:4] == ["Initialized", "Waiting", "Running", "Done"]
    assert job.command[:5] == ["{python}", "-m", "caffelike", "dataset", "create"]
    assert "--bundled" in job.command and job.command[-2:] == ["--out", "dataset"]

    page = client.get(f"/datasets/{job_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "data-num-classes>10<" in html
    assert len(re.findall(r'<tr data-class="\d+"', html)) == 10
    assert f'data-watch-job="{job_id}"' in html and "data-reload-when-done" not in html
    assert "Dataset written to" in html  # the creation log
    assert f'href="/datasets/new?clone={job_id}"' in html

    mean = client.get(f"/datasets/{job_id}/mean.jpg")
    assert mean.status_code == 200 and mean.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(mean.data)).size == (28, 28)
    samples = re.findall(rf'src="(/datasets/{job_id}/samples/[^"]+)"', html)
    assert len(samples) == 10 * dataset_info.SAMPLES_PER_CLASS
    for url in (samples[0], samples[-1]):
        r = client.get(url)
        assert r.status_code == 200 and r.mimetype == "image/png"
        im = Image.open(io.BytesIO(r.data))
        assert im.size == (28, 28) and im.mode == "L"


def test_dataset_json_has_digits_fields(served, client):
    job_id = served["ids"]["bundled"]
    d = client.get(f"/datasets/{job_id}.json").get_json()
    assert d["id"] == job_id and d["name"] == "digits" and d["status"] == "Done"
    assert d["directory"] == os.path.join(served["jobs_dir"], job_id)
    assert d["num_classes"] == 10 and d["labels"] == [str(i) for i in range(10)]
    assert d["counts"] == {"train": 150, "val": 50}
    assert d["per_class"]["7"] == {"train": 15, "val": 5}
    assert (d["image_channels"], d["image_height"], d["image_width"]) == (1, 28, 28)
    assert d["encoding"] == "png" and d["backend"] == "lmdb"
    assert d["ParseFolderTasks"][0]["label_count"] == 10
    assert {t["name"]: t["entries"] for t in d["CreateDbTasks"]} == {"Create DB (train)": 150,
                                                                     "Create DB (val)": 50}
    job = served["app"].extensions["caffelike.store"].get(job_id)
    assert job.data["counts"] == {"train": 150, "val": 50} and job.data["num_classes"] == 10
    assert client.get("/datasets/20990101-000000-abcd.json").status_code == 404


def test_folder_dataset(served, client):
    job_id = served["ids"]["folder"]
    assert served["statuses"][job_id] == "Done"
    d = client.get(f"/datasets/{job_id}.json").get_json()
    assert d["labels"] == ["cat", "dog", "red fox"]  # DIGITS reads '_' as a space
    assert d["counts"] == {"train": 9, "val": 6, "test": 3}  # 6 per class: 55% / 25% / 20% as DIGITS rounds
    assert d["per_class"]["dog"] == {"train": 3, "val": 2, "test": 1}
    assert (d["image_channels"], d["image_height"], d["image_width"]) == (3, 8, 8)
    assert d["resize_mode"] == "crop"
    job = served["app"].extensions["caffelike.store"].get(job_id)
    assert job.command[job.command.index("--folder") + 1] == os.path.realpath(served["folder"])
    html = client.get(f"/datasets/{job_id}").get_data(as_text=True)
    assert "red fox" in html and len(re.findall(r'<tr data-class="\d+"', html)) == 3
    sample = re.findall(rf'src="(/datasets/{job_id}/samples/0-0\.png)"', html)[0]
    im = Image.open(io.BytesIO(client.get(sample).data))
    assert im.mode == "RGB" and im.size == (8, 8)
    r, g, b = im.getpixel((4, 4))
    assert r > 150 and g < 100 and b < 100  # class 0 is the red cat: BGR Datums shown in RGB
    assert client.get(f"/datasets/{job_id}/files/labels.txt").get_data(as_text=True).split("\n")[:3] == \
        ["cat", "dog", "red fox"]
    assert client.get(f"/datasets/{job_id}/files/test.txt").status_code == 200


def test_uploaded_zip_dataset(served, client):
    job_id = served["ids"]["upload"]
    assert served["statuses"][job_id] == "Done"
    d = client.get(f"/datasets/{job_id}.json").get_json()
    assert d["labels"] == ["cat", "dog", "red fox"] and d["encoding"] == "jpg"
    assert sum(d["counts"].values()) == 18
    job = served["app"].extensions["caffelike.store"].get(job_id)
    folder = job.command[job.command.index("--folder") + 1]
    assert folder == os.path.join("images", "pets")  # the archive's top folder, relative to the job's
    assert sorted(os.listdir(job.path("images", "pets"))) == ["cat", "dog", "red_fox"]
    assert not [f for f in os.listdir(job.dir) if f.startswith("upload")]  # the archive is not kept
    assert d["source"] == {"type": "upload", "archive": "images.zip"}


def test_delete_dataset(served, client):
    job_id = served["ids"]["doomed"]
    folder = os.path.join(served["jobs_dir"], job_id)
    client.get(f"/datasets/{job_id}")  # opens its LMDB for the samples
    assert os.path.isdir(folder)
    r = client.post(f"/jobs/{job_id}/delete", data={"from": "page"})
    assert r.status_code == 302
    assert not os.path.exists(folder)
    assert client.get(f"/datasets/{job_id}.json").status_code == 404
    assert job_id not in [j["id"] for j in client.get("/index.json").get_json()["datasets"]]


def test_events_carry_progress(served, client, monkeypatch):
    import caffelike.web.app as web_app

    monkeypatch.setattr(web_app, "EVENT_PERIOD_S", 0.0)
    job_id = served["ids"]["bundled"]
    text = client.get(f"/jobs/{job_id}/events").get_data(as_text=True)
    state = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
    assert state["status"] == "Done" and state["progress"] == 1.0 and state["images_total"] == 200


def test_progress_from_the_log(tmp_path):
    class FakeJob:
        status = "Running"
        log_file = str(tmp_path / "job.log")

    (tmp_path / "job.log").write_text("I1 dataset.py:1] Found 2500 images in 10 categories.\n"
                                      "I1 dataset.py:2] train_db: processed 1000/1875 images\n"
                                      "I1 dataset.py:2] train_db: processed 1875/1875 images\n"
                                      "I1 dataset.py:2] val_db: processed 125/625 images\n")
    p = dataset_info.progress(FakeJob())
    assert p == {"progress": 2000 / 2500, "images_done": 2000, "images_total": 2500}


# ---------------------------------------------------------------------------------------------- bad fields
BAD = [
    ({"method": "bundled", "dataset_name": ""}, "dataset_name"),
    ({"dataset_name": "   "}, "dataset_name"),
    ({"folder_pct_val": "150"}, "folder_pct_val"),
    ({"folder_pct_val": "-1"}, "folder_pct_val"),
    ({"folder_pct_val": "60", "folder_pct_test": "40"}, "folder_pct_val"),
    ({"folder_pct_test": "abc"}, "folder_pct_test"),
    ({"resize_channels": "2"}, "resize_channels"),
    ({"resize_width": "0"}, "resize_width"),
    ({"resize_height": "tall"}, "resize_height"),
    ({"resize_width": "100000"}, "resize_width"),
    ({"resize_mode": "stretch"}, "resize_mode"),
    ({"encoding": "gif"}, "encoding"),
    ({"backend": "leveldb"}, "backend"),
    ({"backend": "hdf5"}, "backend"),
    ({"method": "textfile"}, "method"),
    ({"method": "magic"}, "method"),
    ({"folder_train": ""}, "folder_train"),
    ({"folder_train": "/no/such/folder"}, "folder_train"),
    ({"folder_train": "relative/pets"}, "folder_train"),
    ({"folder_train": "http://example.com/pets/"}, "folder_train"),
    ({"folder_train_min_per_class": "0"}, "folder_train_min_per_class"),
    ({"folder_train_min_per_class": "5", "folder_train_max_per_class": "3"}, "folder_train_max_per_class"),
    ({"seed": "-4"}, "seed"),
    ({"has_val_folder": "true"}, "folder_val"),
    ({"has_test_folder": "true", "folder_test": "/no/such/folder"}, "folder_test"),
    ({"has_val_folder": "true", "method": "bundled"}, "has_val_folder"),
    ({"method": "upload"}, "archive"),
]


@pytest.mark.parametrize("fields,field", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_field_answers_400_beside_the_field(served, client, fields, field):
    values = {"method": "folder", "dataset_name": "kept name", "folder_train": served["folder"], **fields}
    before = job_dirs(served)
    r = client.post(CREATE_JSON, data=values)
    assert r.status_code == 400
    body = r.get_json()
    assert field in body["fields"], body
    assert any(e.startswith(f"{field}: ") for e in body["errors"])
    page = client.post(CREATE, data=values)
    assert page.status_code == 400
    html = page.get_data(as_text=True)
    assert f'data-error-for="{field}"' in html
    if field != "dataset_name":
        assert 'value="kept name"' in html  # the values are kept
    assert job_dirs(served) == before  # no job is left behind


def test_folder_that_is_a_file_or_has_one_class(served, client, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "one" / "only").mkdir(parents=True)
    for path, words in ((tmp_path / "file.txt", "is a file"), (tmp_path / "one", "at least two")):
        r = client.post(CREATE_JSON, data={"dataset_name": "x", "folder_train": str(path)})
        assert r.status_code == 400 and words in r.get_json()["fields"]["folder_train"]


def test_json_body_and_bad_json_body(served, client):
    r = client.post(CREATE_JSON, json={"dataset_name": "j", "folder_train": "/no/such"})
    assert r.status_code == 400 and "folder_train" in r.get_json()["fields"]
    r = client.post(CREATE_JSON, data="[1, 2]", content_type="application/json")
    assert r.status_code == 400 and "body" in r.get_json()["fields"]


# ------------------------------------------------------------------------------------------- hostile archives
HOSTILE = {
    "dotdot": lambda: zip_with(("../../../evil.png", png_bytes()), ("a/x.png", png_bytes())),
    "dotdot-inner": lambda: zip_with(("pets/cat/../../../evil.png", png_bytes())),
    "absolute": lambda: zip_with(("/tmp/evil_abs.png", png_bytes())),
    "backslash-absolute": lambda: zip_with(("\\evil\\x.png", png_bytes())),
    "drive": lambda: zip_with(("C:/evil.png", png_bytes())),
    "zip-symlink": lambda: zip_with((_zip_link("pets/cat/link.png"), "/etc/passwd")),
    "tar-symlink": lambda: tar_with((tar_info("pets/cat/link", tarfile.SYMTYPE, "/etc"), None)),
    "tar-hardlink": lambda: tar_with((tar_info("pets/cat/link", tarfile.LNKTYPE, "/etc/passwd"), None)),
    "tar-device": lambda: tar_with((tar_info("pets/cat/dev", tarfile.CHRTYPE), None)),
    "tar-dotdot": lambda: tar_with((tar_info("../evil.png"), png_bytes())),
    "zip-bomb": lambda: zip_with(("pets/cat/big.png", b"\0" * (ARCHIVE_CAP + 1)), ("pets/dog/x.png", png_bytes())),
    "tar-bomb": lambda: tar_with((tar_info("pets/cat/big.png"), b"\0" * (ARCHIVE_CAP + 1))),
    "not-an-archive": lambda: b"this is not a zip file at all",
    "damaged-zip": lambda: zip_with(("pets/cat/x.png", png_bytes()))[:-30],
    "one-class": lambda: zip_with(("pets/cat/x.png", png_bytes()), ("pets/cat/y.png", png_bytes())),
    "empty": lambda: b"",
}


def _zip_link(name):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (0o120777 << 16)
    return info


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_archives_are_refused_with_a_field_error(served, client, kind):
    data = HOSTILE[kind]()
    name = "images.tar.gz" if kind.startswith("tar") else "images.zip"
    before = job_dirs(served)
    r = upload(client, data, name)
    assert r.status_code == 400, r.get_json()
    assert "archive" in r.get_json()["fields"]
    assert job_dirs(served) == before  # the job folder and anything unpacked into it are gone
    for root in (served["base"], served["jobs_dir"], os.path.dirname(str(served["base"])), "/tmp"):
        assert not os.path.exists(os.path.join(root, "evil.png"))
    assert not os.path.exists("/tmp/evil_abs.png")
    page = upload(client, data, name, route=CREATE)
    assert page.status_code == 400 and 'data-error-for="archive"' in page.get_data(as_text=True)


def test_archive_with_too_many_members(served, client):
    served["app"].config["UPLOAD_MAX_MEMBERS"] = 5
    try:
        data = zip_with(*[(f"pets/{c}/{i}.png", png_bytes()) for c in ("cat", "dog") for i in range(4)])
        r = upload(client, data)
    finally:
        del served["app"].config["UPLOAD_MAX_MEMBERS"]
    assert r.status_code == 400 and "at most 5" in r.get_json()["fields"]["archive"]


def test_upload_over_the_request_limit(served, client):
    app = served["app"]
    saved = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 2000
    try:
        r = upload(client, b"x" * 5000)
        page = upload(client, b"x" * 5000, route=CREATE)
    finally:
        app.config["MAX_CONTENT_LENGTH"] = saved
    assert r.status_code == 413 and "limit" in r.get_json()["fields"]["archive"]
    assert page.status_code == 413 and 'data-error-for="archive"' in page.get_data(as_text=True)


def test_archive_of_another_type_is_refused(served, client):
    r = upload(client, b"hello", filename="images.rar")
    assert r.status_code == 400 and "not an archive" in r.get_json()["fields"]["archive"]


# ----------------------------------------------------------------------------------------------- the form
def test_new_form_routes(client):
    for route in ("/datasets/new", "/datasets/images/classification/new"):
        r = client.get(route)
        assert r.status_code == 200
        html = r.get_data(as_text=True)
        for field in ("dataset_name", "folder_train", "folder_pct_val", "folder_pct_test", "resize_channels",
                      "resize_width", "resize_height", "resize_mode", "encoding", "backend", "seed",
                      "folder_train_max_per_class", "archive"):
            assert f'name="{field}"' in html, field
        assert 'value="bundled"' in html
        assert html.count(f'action="{CREATE}"') == 2  # the HTML route, not the .json one


def test_html_create_redirects_to_the_dataset_page(served, client):
    r = client.post(CREATE, data={"dataset_name": "via html", "folder_train": served["folder"],
                                  "resize_width": "8", "resize_height": "8"})
    assert r.status_code == 302
    job_id = r.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    page = client.get(f"/datasets/{job_id}")
    assert page.status_code == 200 and "data-reload-when-done" in page.get_data(as_text=True)
    assert client.post(f"/jobs/{job_id}/abort").get_json()["status"] == "Aborted"
    assert client.delete(f"/datasets/{job_id}").status_code == 200


def test_clone_prefills_the_form(served, client):
    html = client.get(f"/datasets/new?clone={served['ids']['folder']}").get_data(as_text=True)
    assert f'value="{served["folder"]}"' in html
    assert 'value="pets"' in html
    assert re.search(r'name="folder_pct_test"[^>]*value="20"', html)
    assert re.search(r'<option value="crop"\s+selected>', html)
    assert re.search(r'id="method-folder" value="folder"\s+checked', html)
    html = client.get(f"/datasets/new?clone={served['ids']['upload']}").get_data(as_text=True)
    assert "data-note" in html and re.search(r'id="method-upload" value="upload"\s+checked', html)
    assert client.get("/datasets/new?clone=20990101-000000-abcd").status_code == 404


def test_files_are_served_only_from_the_job_folder(served, client):
    job_id = served["ids"]["bundled"]
    for url in (f"/datasets/{job_id}/samples/..%2Fjob.json", f"/datasets/{job_id}/samples/job.json",
                f"/datasets/{job_id}/files/..%2F..%2Fjob.json", f"/datasets/{job_id}/files/job.json",
                f"/datasets/{job_id}/samples/99-0.png"):
        assert client.get(url).status_code == 404, url
    assert client.get(f"/datasets/{job_id}/files/dataset.json").get_json()["labels"][0] == "0"


# ------------------------------------------------------------------------------------------------- uploads
def test_extract_tar_gz_and_skip_junk(tmp_path):
    data = tar_with((tar_info("top/cat/a.png"), png_bytes()), (tar_info("top/dog", tarfile.DIRTYPE), None),
                    (tar_info("top/dog/b.png"), png_bytes()), (tar_info("top/dog/._b.png"), b"junk"),
                    (tar_info("__MACOSX/top/x"), b"junk"))
    (tmp_path / "a.tgz").write_bytes(data)
    assert extract_archive(str(tmp_path / "a.tgz"), str(tmp_path / "out")) == 2
    assert sorted(os.listdir(tmp_path / "out")) == ["top"]
    assert sorted(os.listdir(tmp_path / "out" / "top" / "dog")) == ["b.png"]


def test_a_refused_archive_leaves_nothing(tmp_path):
    data = zip_with(("a/x.png", png_bytes()), ("a/big.png", b"\0" * 5000))
    (tmp_path / "a.zip").write_bytes(data)
    with pytest.raises(UploadError, match="unpacks to more than"):
        extract_archive(str(tmp_path / "a.zip"), str(tmp_path / "out"), max_bytes=4000)
    assert not os.path.exists(tmp_path / "out")


class FakeUpload:
    def __init__(self, data, filename):
        self.stream, self.filename = io.BytesIO(data), filename


def test_save_upload(tmp_path):
    path = save_upload(FakeUpload(b"print(1)\n", "../../layer.py"), str(tmp_path), "digits_python_layers.py",
                       max_bytes=100, extensions=(".py",))
    assert path == str(tmp_path / "digits_python_layers.py")
    assert (tmp_path / "digits_python_layers.py").read_text() == "print(1)\n"
    with pytest.raises(UploadError, match="larger than"):
        save_upload(FakeUpload(b"x" * 101, "a.py"), str(tmp_path), "big.py", max_bytes=100)
    assert not (tmp_path / "big.py").exists()
    with pytest.raises(UploadError, match="empty"):
        save_upload(FakeUpload(b"", "a.py"), str(tmp_path), "empty.py", max_bytes=100)
    with pytest.raises(UploadError, match="not a .py file"):
        save_upload(FakeUpload(b"x", "a.sh"), str(tmp_path), "x.py", max_bytes=100, extensions=(".py",))
    with pytest.raises(ValueError):
        save_upload(FakeUpload(b"x", "a.py"), str(tmp_path), "../x.py", max_bytes=100)
    os.symlink("/nonexistent-target", tmp_path / "planted.py")
    with pytest.raises(UploadError):
        save_upload(FakeUpload(b"x", "a.py"), str(tmp_path), "planted.py", max_bytes=100)
    assert uploads.check_filename("C:\\Users\\me\\layer.py", (".py",)) == "layer.py"


def test_separate_validation_and_test_folders_become_the_command_flags(tmp_path):
    """DIGITS' has_val_folder/folder_val and has_test_folder/folder_test: the percentages are then not read."""
    from caffelike.web import dataset_form
    train, val, test = (make_class_folders(tmp_path / name) for name in ("train", "val", "test"))
    spec, _, errors = dataset_form.read_form({"dataset_name": "pets", "folder_train": train, "has_val_folder": "on",
                                              "folder_val": val, "folder_pct_val": "30", "has_test_folder": "true",
                                              "folder_test": test}, {})
    assert not errors
    argv = dataset_form.command(spec, spec["folder"])
    assert argv[argv.index("--val-folder") + 1] == os.path.realpath(val)
    assert argv[argv.index("--test-folder") + 1] == os.path.realpath(test)
    assert argv[argv.index("--val-percent") + 1] == "0" and argv[argv.index("--test-percent") + 1] == "0"


def test_a_dataset_page_names_its_separate_validation_folder(tmp_path):
    """Created through the form and run to the end: the page says where the validation images came from."""
    train, val = make_class_folders(tmp_path / "train"), make_class_folders(tmp_path / "val", n=2)
    app = create_app(str(tmp_path / "jobs"), start_scheduler=False, cpu_slots=1)
    client = app.test_client()
    r = client.post(CREATE_JSON, data={"method": "folder", "dataset_name": "pets", "folder_train": train,
                                       "has_val_folder": "true", "folder_val": val, "resize_channels": "3",
                                       "resize_width": "8", "resize_height": "8"})
    assert r.status_code == 200, r.get_json()
    job_id = r.get_json()["job_id"]
    assert wait_done(app, [job_id])[job_id] == "Done"
    assert client.get(f"/datasets/{job_id}.json").get_json()["counts"] == {"train": 18, "val": 6}
    html = client.get(f"/datasets/{job_id}").get_data(as_text=True)
    assert re.search(rf"Validation images from</th><td>{re.escape(os.path.realpath(val))}<", html)
