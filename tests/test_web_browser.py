"""DIGITS' occlusion tutorial, clicked through `caffelike serve` in a real headless Chromium (playwright driving
Debian's chromium): create the digits dataset, create the plain LeNet and the BlankSquare LeNet (its Python-layer
file uploaded), watch both train, then "Test a single image" with visualizations on the occluded model, whose
`scaled` activation must show the zeroed square.  Screenshots of every page go to $CAFFELIKE_TEST_ARTIFACTS (or
the test's temporary folder).  The server must answer an API call in under a second while both models train."""
import json
import os
import pathlib
import re
import threading
import time
import urllib.request

import numpy as np
import pytest
from helpers import chromium_or_skip
from PIL import Image

from caffelike import zoo
from caffelike.data.bundled import mnist_5k

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_S = 420


@pytest.fixture
def server(tmp_path):
    from werkzeug.serving import make_server

    from caffelike.web.app import create_app

    app = create_app(str(tmp_path / "jobs"), cpu_slots=2)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    app.extensions["caffelike.scheduler"].stop(kill=True)


@pytest.fixture
def browser_page(tmp_path):
    chromium = chromium_or_skip()
    if os.environ.get("CAFFELIKE_REQUIRE_BROWSER") == "1":
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def artifacts(tmp_path) -> pathlib.Path:
    folder = pathlib.Path(os.environ.get("CAFFELIKE_TEST_ARTIFACTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_status(page, wanted=("Done",), timeout=TIMEOUT_S) -> str:
    """Wait for the page's live status badge (updated by server-sent events) to reach an end state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = page.locator("[data-status]").first.inner_text().strip()
        if status in ("Done", "Error", "Aborted"):
            assert status in wanted, f"{page.url}: job ended {status}: {page.content()[:3000]}"
            return status
        page.wait_for_timeout(500)
    raise AssertionError(f"{page.url}: still {status} after {timeout} s")


def api_seconds(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        r.read()
    return time.perf_counter() - start


def running_span(url: str) -> tuple[float, float]:
    """When a job started running and when it ended, from its JSON status history."""
    history = json.loads(urllib.request.urlopen(url, timeout=10).read())["status_history"]
    start = next(t for status, t in history if status == "Running")
    end = next(t for status, t in history if status in ("Done", "Error", "Aborted") and t >= start)
    return start, end


def new_model(page, base, dataset_id, name, *, epochs=1, custom=None, python_layer=None):
    page.goto(base + "/models/new")
    page.select_option("#dataset", dataset_id)
    page.fill("#train_epochs", str(epochs))
    page.fill("#random_seed", "1")
    if custom is None:
        page.check("input[name=method][value=standard]")
        page.check("input[name=standard_networks][value=lenet]")
    else:
        page.check("input[name=method][value=custom]")
        page.fill("#custom_network", custom)
        page.set_input_files("#python_layer_client_file", python_layer)
    page.fill("#model_name", name)
    page.click("#model-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/models/\d{8}-\d{6}-[0-9a-f]{4}$"))
    return page.url.rsplit("/", 1)[1]


def test_occlusion_tutorial_in_the_browser(server, browser_page, tmp_path):
    page, base, shots = browser_page, server, artifacts(tmp_path)

    # 1. The dataset: the bundled digits in one click.
    page.goto(base + "/")
    page.screenshot(path=str(shots / "01-home.png"))
    page.click("text=New dataset")
    page.screenshot(path=str(shots / "02-new-dataset.png"), full_page=True)
    page.click("#bundled-quick button[type=submit]")
    page.wait_for_url(re.compile(r".*/datasets/\d{8}-\d{6}-[0-9a-f]{4}$"))
    dataset_id = page.url.rsplit("/", 1)[1]
    wait_status(page)
    page.reload()
    assert page.locator("img[src*='mean']").count() >= 1
    page.screenshot(path=str(shots / "03-dataset.png"), full_page=True)

    # 2. The two models, training side by side.
    # The plain model trains longer, so that its run surely spans the occlusion model's start.
    plain = new_model(page, base, dataset_id, "plain LeNet", epochs=3)
    network = pathlib.Path(zoo.path("digits-occlusion", "lenet_blank_square.prototxt")).read_text()
    layer = zoo.path("digits-occlusion", "digits_python_layers.py")
    occluded = new_model(page, base, dataset_id, "occlusion LeNet", custom=network, python_layer=layer)
    # The live page: the curves are redrawn while the job runs, without reloading the page.
    page.evaluate("window.__sameDocument = true")
    src = page.get_attribute("#curves", "src")
    page.wait_for_function("src => document.querySelector('#curves').getAttribute('src') !== src", arg=src,
                           timeout=TIMEOUT_S * 1000)
    assert page.evaluate("window.__sameDocument === true")
    page.wait_for_timeout(3000)  # a few more points on the curves for the screenshot
    assert page.evaluate("(img => img.complete && img.naturalWidth > 0)(document.querySelector('#curves'))")
    page.screenshot(path=str(shots / "04-model-training.png"), full_page=True)

    # While the jobs train the server answers at once: they run in their own processes.
    slowest, checked = 0.0, 0
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        index = urllib.request.urlopen(base + "/index.json", timeout=10).read().decode()
        if '"Running"' in index:
            slowest = max(slowest, api_seconds(base + "/index.json"), api_seconds(f"{base}/models/{plain}.json"))
            checked += 1
        if '"Running"' not in index and '"Waiting"' not in index:
            break
        time.sleep(0.5)
    # The two trainings overlapped in time (two CPU slots): read from the jobs' status histories, not sampled.
    spans = [running_span(f"{base}/models/{job}.json") for job in (plain, occluded)]
    assert max(s for s, _ in spans) < min(e for _, e in spans), f"the two trainings never overlapped: {spans}"
    assert checked, "no API call was timed while a training ran"
    assert slowest < 1.0, f"an API call took {slowest:.2f} s while a training ran"

    for job in (plain, occluded):
        page.goto(f"{base}/models/{job}")
        wait_status(page)
    page.wait_for_selector("#curves")
    page.screenshot(path=str(shots / "05-model-trained.png"), full_page=True)

    # 3. "Test a single image" with visualizations on the occlusion model.
    images, _ = mnist_5k()
    digit = tmp_path / "digit.png"  # as the dataset holds it: DIGITS' MNIST is inverted (black on white)
    Image.fromarray(255 - np.asarray(images[0], dtype=np.uint8).reshape(28, 28)).save(digit)
    page.set_input_files("#image_file", str(digit))
    page.check("input[name=show_visualizations]")
    page.click("#test-one + form button[type=submit]")
    page.wait_for_selector("#predictions")
    assert page.locator("#predictions tr").count() >= 6  # the header and the top 5
    report = page.frame_locator("#report")
    row = report.locator("#blob-scaled")
    row.wait_for()
    zeros = row.locator("tr", has_text="Zeros").locator("td.v").inner_text()
    count, total = (int(v.replace(",", "")) for v in re.findall(r"[\d,]+", zeros)[:2])
    assert total == 28 * 28 and count >= 14 * 14, zeros  # BlankSquare zeroed a 14x14 square
    page.screenshot(path=str(shots / "06-test-one-image.png"), full_page=True)
