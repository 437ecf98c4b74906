"""`caffelike classify` and caffelike.digits.report: DIGITS' "Test a single image" with zoo LeNet on bundled digits —
the prediction, the preprocessing numbers, the report's content and its pictures."""
import importlib.util
import pathlib
import re

import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from helpers import chromium_or_skip
from PIL import Image

import caffelike as caffe
from caffelike import zoo
from caffelike.cli import main
from caffelike.data.bundled import mnist_5k
from caffelike.digits import classify, pictures
from caffelike.digits import report as visualize
from caffelike.errors import CaffeError

MODEL = zoo.path("lenet", "lenet.prototxt")
WEIGHTS = zoo.path("lenet", "lenet_mnist5k.caffemodel")
SCALE = 0.00390625  # LeNet was trained on pixel / 256
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BLOBS = ["data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
PARAMS = {"conv1": 2, "conv2": 2, "ip1": 2, "ip2": 2}
SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "screenshot_report.py"


def digit(index: int) -> tuple[np.ndarray, int]:
    images, labels = mnist_5k()
    return images[index], int(labels[index])


def save_digit(folder: pathlib.Path, index: int) -> tuple[str, int]:
    """A bundled digit (held out from LeNet's training: index % 5 == 0) as a gray PNG."""
    pixels, label = digit(index)
    path = folder / f"digit{index}_{label}.png"
    Image.fromarray(pixels, "L").save(path)
    return str(path), label


@pytest.fixture(scope="module")
def lenet():
    return caffe.Net(MODEL, caffe.TEST, weights=WEIGHTS)


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(NAMES) + "\n\n")  # a trailing blank line is skipped, as DIGITS does
    return str(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory, lenet, labels_file):
    """A report of zoo LeNet on a held-out '7'."""
    folder = tmp_path_factory.mktemp("report")
    image, _ = save_digit(folder, 3500)
    top, net = classify.classify_image(lenet, image, labels=labels_file, scale=SCALE)
    pixels = classify.load_image(image, 28, 28, color=False)
    path = visualize.write_report(net, str(folder / "out"), top, pixels, {"model": MODEL, "image": image})
    return pathlib.Path(path), top


# ------------------------------------------------------------------------------------------------- prediction
@pytest.mark.parametrize("index", [0, 1500, 3500, 4500], ids=["0", "3", "7", "9"])
def test_lenet_classifies_a_bundled_digit(tmp_path, lenet, labels_file, index):
    image, label = save_digit(tmp_path, index)
    top, net = classify.classify_image(lenet, image, labels=labels_file, scale=SCALE)
    assert net is lenet
    assert len(top) == 5
    assert top[0].index == label and top[0].label == NAMES[label]
    assert top[0].probability > 0.9
    probabilities = [p.probability for p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    # The input blob holds exactly pixel * 2^-8 (float32), one sample.
    expected = digit(index)[0].astype(np.float32)[None, None] * np.float32(SCALE)
    np.testing.assert_array_equal(net.blobs["data"].data, expected)


def test_mean_is_subtracted_before_the_scale(tmp_path, lenet):
    image, _ = save_digit(tmp_path, 500)
    pixels = digit(500)[0].astype(np.float32)
    mean = np.arange(28 * 28, dtype=np.float32).reshape(1, 28, 28) % 7 + 0.25
    bp = caffe_pb2.BlobProto(num=1, channels=1, height=28, width=28)
    bp.data.extend(mean.ravel().tolist())
    mean_file = tmp_path / "mean.binaryproto"
    mean_file.write_bytes(bp.SerializeToString())
    classify.classify_image(lenet, image, mean=str(mean_file), scale=SCALE)
    expected = (pixels[None] - mean) * np.float32(SCALE)
    np.testing.assert_array_equal(lenet.blobs["data"].data[0], expected)


def test_a_mean_of_another_size_is_resized(tmp_path, lenet):
    image, _ = save_digit(tmp_path, 500)
    bp = caffe_pb2.BlobProto(num=1, channels=1, height=14, width=10)
    bp.data.extend([7.0] * 140)
    mean_file = tmp_path / "mean.binaryproto"
    mean_file.write_bytes(bp.SerializeToString())
    classify.classify_image(lenet, image, mean=str(mean_file))
    np.testing.assert_array_equal(lenet.blobs["data"].data[0], digit(500)[0].astype(np.float32)[None] - 7)


def test_top_predictions_ignore_indices_past_the_labels():
    scores = np.array([0.1, 0.05, 0.5, 0.05, 0.3])
    top = classify.top_predictions(scores, ["a", "b", "c", "d"])
    assert [(p.label, p.index) for p in top] == [("c", 2), ("a", 0), ("b", 1), ("d", 3)]
    assert [p.label for p in classify.top_predictions(scores)] == ["2", "4", "0", "1", "3"]


# ----------------------------------------------------------------------------------------------------- errors
def test_undecodable_image_names_the_file(tmp_path, lenet):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(CaffeError, match=re.escape(str(bad))):
        classify.classify_image(lenet, str(bad))


def test_missing_image_names_the_file(tmp_path, lenet):
    with pytest.raises(CaffeError, match="nowhere.png"):
        classify.classify_image(lenet, str(tmp_path / "nowhere.png"))


def test_colour_reading_for_a_gray_net_is_refused(tmp_path, lenet):
    image, _ = save_digit(tmp_path, 0)
    with pytest.raises(CaffeError, match=r"colour \(3 channels\).*'data' has 1 channel"):
        classify.classify_image(lenet, image, color=True)


# --------------------------------------------------------------------------------------------------- pictures
def test_jet_map_endpoints_and_middle():
    lut = pictures.jet_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert tuple(lut[0]) == (0, 0, 128)      # dark blue
    assert tuple(lut[255]) == (128, 0, 0)    # dark red
    middle = pictures.jet(np.uint8(128)).astype(int)  # level 128 is x = 0.502, a hair past the centre
    assert middle[1] == 255 and abs(middle[0] - 128) <= 2 and abs(middle[2] - 128) <= 2  # light green
    assert (lut[:96, 0] == 0).all() and (lut[160:, 2] == 0).all()  # no red below 3/8, no blue above 5/8


@pytest.mark.parametrize("n, grid", [(1, (1, 1)), (2, (2, 1)), (10, (4, 3)), (16, (4, 4)), (20, (5, 4)),
                                     (50, (8, 7)), (500, (23, 22))], ids=lambda v: str(v))
def test_grid_shape(n, grid):
    assert pictures.grid_shape(n) == grid


def test_tiling_shape_padding_and_order():
    tiles = np.arange(20, dtype=np.uint8).reshape(20, 1, 1).repeat(5, 1).repeat(5, 2)
    out = pictures.tile(tiles)
    assert out.shape == (5 * 6 - 1, 4 * 6 - 1)  # 5 rows x 4 columns of 5x5 tiles, 1-pixel gaps
    assert (out[5, :] == 255).all() and (out[:, 5] == 255).all()
    assert (out[0:5, 6:11] == 1).all() and (out[6:11, 0:5] == 4).all()  # row by row
    values = pictures.tile(np.arange(10, dtype=np.uint8).reshape(10, 1, 1))
    assert values.shape == (4, 3)  # 1x1 tiles: no gaps
    assert values[3, 0] == 9 and values[3, 1] == 255  # the unused cells are white


def test_picture_of_conv_weights_is_a_heat_map_grid():
    weights = np.random.default_rng(0).standard_normal((20, 1, 5, 5)).astype(np.float32)
    pic = pictures.picture(weights)
    assert pic.pixels.dtype == np.uint8 and pic.pixels.ndim == 3 and pic.pixels.shape[2] == 3
    assert pic.pixels.shape == (5 * 29, 5 * 23, 3)  # 5x4 tiles with gaps (29x23), x5 to reach 100 px
    colours = {tuple(c) for c in pic.pixels.reshape(-1, 3)}
    assert (0, 0, 128) in colours and (128, 0, 0) in colours  # min and max reach the ends of the map


def test_picture_of_a_wide_weight_matrix_is_stretched_to_stay_readable():
    pic = pictures.picture(np.random.default_rng(2).standard_normal((10, 500)))
    assert pic.pixels.shape == (400, 2000, 3)  # x4 across (2400 px cap), rows x40 for at most 5:1


def test_picture_of_an_input_blob_is_gray():
    pic = pictures.picture(np.linspace(-1, 1, 28 * 28).reshape(1, 28, 28), "gray")
    assert pic.pixels.shape == (112, 112)
    assert pic.pixels.min() == 0 and pic.pixels.max() == 255


def test_statistics_match_numpy():
    a = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32)
    s = pictures.Stats(a)
    assert s.shape == (3, 4, 5)
    assert s.mean == pytest.approx(float(a.astype(np.float64).mean()))
    assert s.std == pytest.approx(float(a.astype(np.float64).std()))
    assert (s.min, s.max) == (float(a.min()), float(a.max()))
    assert s.counts.sum() == a.size and len(s.counts) == 20
    assert s.zeros == 0
    a[0, :2] = 0
    assert pictures.Stats(a).zeros == 10


def test_file_names_escape_slashes():
    assert visualize.file_name("conv1/3x3_s1") == "conv1%2F3x3_s1"
    assert "/" not in visualize.file_name("../x") and not visualize.file_name("../x").startswith(".")


# ----------------------------------------------------------------------------------------------------- report
def test_report_is_self_contained_and_shows_every_blob(report):
    path, top = report
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for forbidden in ("http://", "https://", 'src="file', "<link", "<script", "url("):
        assert forbidden not in text
    for name in BLOBS:
        assert f'id="blob-{name}"' in text
    rows = len(BLOBS) + sum(PARAMS.values())
    assert text.count('alt="histogram of the ') == rows  # one matplotlib histogram per row
    assert text.count('src="data:image/png;base64,') == 1 + 2 * rows  # input, then a picture and a histogram
    assert "431,080 learned parameters" in text  # DIGITS' total for this LeNet
    assert "seven" in text and top[0].label == "seven"


def test_report_pictures_are_png_files(report):
    path, _ = report
    folder = path.parent
    files = [folder / "input.png"] + [folder / "blobs" / f"{b}.png" for b in BLOBS] + \
            [folder / "weights" / f"{layer}_{i}.png" for layer, n in PARAMS.items() for i in range(n)]
    for f in files:
        with Image.open(f) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) > 0
    with Image.open(folder / "blobs" / "data.png") as im:
        assert im.mode == "L"  # the input blob in gray
    with Image.open(folder / "blobs" / "conv1.png") as im:
        assert im.mode == "RGB"  # activations as heat maps
    with Image.open(folder / "input.png") as im:
        assert im.size == (28, 28)
        np.testing.assert_array_equal(np.asarray(im), digit(3500)[0])
    assert not list(folder.rglob(".tmp-*"))  # every temporary file renamed into place


# -------------------------------------------------------------------------------------------- command line
def test_cli_classifies_and_writes_the_report(tmp_path, capsys, labels_file):
    image, _ = save_digit(tmp_path, 3500)
    out = tmp_path / "vis"
    rc = main(["classify", "--model", MODEL, "--weights", WEIGHTS, "--scale", str(SCALE), "--labels", labels_file,
               "--visualize", str(out), image])
    printed = capsys.readouterr().out
    assert rc == 0
    lines = printed.splitlines()
    assert lines[0].startswith(f"Predictions for {image}")
    assert re.match(r"^ +1\. seven +\d+\.\d\d%$", lines[1])
    assert sum(1 for line in lines if re.match(r"^ +\d\. ", line)) == 5
    assert (out / "report.html").is_file() and f"report: {out / 'report.html'}" in printed


def test_cli_reports_an_undecodable_image(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    rc = main(["classify", "--model", MODEL, "--weights", WEIGHTS, str(bad)])
    assert rc == 1
    assert str(bad) in capsys.readouterr().err


PYTHON_LAYER = '''import caffelike as caffe


class ByteScale(caffe.Layer):
    """top = bottom / 256, what the Power layer of a DIGITS net would do."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * 0.00390625

    def backward(self, top, propagate_down, bottom):
        pass
'''


def python_layer_model(module: str) -> str:
    """Zoo LeNet with a Python layer scaling its input by 1/256 (ByteScale in `module`) before conv1."""
    text = pathlib.Path(MODEL).read_text()
    text = text.replace('  bottom: "data"\n  top: "conv1"', '  bottom: "scaled"\n  top: "conv1"')
    text = text.replace('layer {\n  name: "conv1"', 'layer {\n  name: "scale"\n  type: "Python"\n  bottom: "data"\n'
                        f'  top: "scaled"\n  python_param {{ module: "{module}" layer: "ByteScale" }}\n}}\n'
                        'layer {\n  name: "conv1"', 1)
    assert '"scaled"' in text
    return text


def test_cli_python_path_reaches_python_layers(tmp_path, capsys):
    layers, nets = tmp_path / "layers", tmp_path / "nets"
    layers.mkdir()
    nets.mkdir()
    (layers / "classify_test_layers.py").write_text(PYTHON_LAYER)
    text = python_layer_model("classify_test_layers")
    model = nets / "deploy.prototxt"
    model.write_text(text)
    image, _ = save_digit(tmp_path, 4500)
    assert main(["classify", "--model", str(model), "--weights", WEIGHTS, image]) == 1  # module not found
    capsys.readouterr()
    out = tmp_path / "vis"
    rc = main(["classify", "--model", str(model), "--weights", WEIGHTS, "--python-path", str(layers),
               "--visualize", str(out), image])
    printed = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"^ +1\. 9 ", printed, re.MULTILINE)
    assert 'id="blob-scaled"' in (out / "report.html").read_text()
    with Image.open(out / "blobs" / "scaled.png") as im:
        assert im.mode == "RGB"  # not the input: a heat map, as DIGITS shows its "scaled" blob


def test_cli_runs_a_module_beside_the_model_only_with_trust_model_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    model = tmp_path / "deploy.prototxt"
    model.write_text(python_layer_model("classify_beside_layers"))
    (tmp_path / "classify_beside_layers.py").write_text(PYTHON_LAYER)
    image, _ = save_digit(tmp_path, 4500)
    assert main(["classify", "--model", str(model), "--weights", WEIGHTS, image]) == 1
    err = capsys.readouterr().err
    assert (f'Python layer "scale" (classify_beside_layers.ByteScale) would import '
            f"{tmp_path / 'classify_beside_layers.py'} from the model's folder") in err
    assert "--trust-model-dir" in err
    assert main(["classify", "--model", str(model), "--weights", WEIGHTS, "--trust-model-dir", image]) == 0
    assert re.search(r"^ +1\. 9 ", capsys.readouterr().out, re.MULTILINE)


# ------------------------------------------------------------------------------------------------- screenshot
def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_screenshot_fails_clearly_without_chromium(tmp_path, monkeypatch, report):
    shot = _screenshot_module()
    monkeypatch.setattr(shot, "CANDIDATES", ())
    monkeypatch.delenv("CHROMIUM", raising=False)
    with pytest.raises(shot.ScreenshotError, match="Chromium was not found"):
        shot.screenshot(str(report[0]), str(tmp_path / "x.png"))
    assert shot.main([str(report[0]), str(tmp_path / "x.png")]) == 2


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path, report):
    shot = _screenshot_module()
    chromium_or_skip()
    out = shot.screenshot(str(report[0]), str(tmp_path / "report.png"), width=1000, height=1400)
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape == (1400, 1000, 3)
    # The page is drawn: mostly white, with the dark title text and the jet colours of the heat maps.
    assert (pixels == 255).all(axis=2).mean() > 0.5
    colours = pixels.reshape(-1, 3).astype(int)
    assert ((colours[:, 0] < 60) & (colours[:, 1] < 60) & (colours[:, 2] > 100)).any()  # dark blue of jet
    assert ((colours[:, 0] > 200) & (colours[:, 1] > 200) & (colours[:, 2] < 60)).any()  # jet's yellow


# ------------------------------------------------------------------------------------------ DIGITS-style nets
def digits_deploy(folder: pathlib.Path) -> str:
    """zoo LeNet rewritten as DIGITS writes deploy.prototxt: legacy `input` fields and a Power layer "scale"
    (x 0.0125) in front of conv1."""
    text = pathlib.Path(MODEL).read_text()
    start = text.index("layer {")
    first_end = text.index("layer {", start + 1)
    text = ('name: "LeNet"\ninput: "data"\ninput_shape { dim: 1 dim: 1 dim: 28 dim: 28 }\n'
            'layer { name: "scale" type: "Power" bottom: "data" top: "scaled" power_param { scale: 0.0125 } }\n'
            + text[first_end:].replace('  bottom: "data"\n  top: "conv1"', '  bottom: "scaled"\n  top: "conv1"'))
    path = folder / "deploy.prototxt"
    path.write_text(text)
    return str(path)


def test_digits_deploy_net_with_mean_image(tmp_path, labels_file):
    net = caffe.Net(digits_deploy(tmp_path), caffe.TEST, weights=WEIGHTS)
    assert list(net.inputs) == ["data"]
    image, _ = save_digit(tmp_path, 0)
    mean = np.full((1, 28, 28), 33.0, np.float32)
    top, _ = classify.classify_image(net, image, mean=mean, labels=labels_file)
    x = digit(0)[0].astype(np.float32)[None] - np.float32(33)
    np.testing.assert_array_equal(net.blobs["data"].data[0], x)
    np.testing.assert_array_equal(net.blobs["scaled"].data[0], x * np.float32(0.0125))
    path = visualize.write_report(net, str(tmp_path / "vis"), top)
    text = pathlib.Path(path).read_text()
    assert text.index('id="blob-data"') < text.index('id="blob-scaled"') < text.index('id="blob-conv1"')
    with Image.open(tmp_path / "vis" / "blobs" / "data.png") as im:
        assert im.mode == "L"
    with Image.open(tmp_path / "vis" / "blobs" / "scaled.png") as im:
        assert im.mode == "RGB"


COLOUR_NET = """name: "colour"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 16 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_colour_image_is_read_as_bgr_and_drawn_in_colour(tmp_path):
    model = tmp_path / "colour.prototxt"
    model.write_text(COLOUR_NET)
    caffe.set_random_seed(3)
    net = caffe.Net(str(model), caffe.TEST)
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[..., 0] = 200  # pure red in RGB
    rgb[:, :8, 2] = 50
    image = tmp_path / "red.png"
    Image.fromarray(rgb, "RGB").save(image)
    top, _ = classify.classify_image(net, str(image), mean=np.array([10, 20, 30], np.float32))  # B, G, R
    assert len(top) == 3 and abs(sum(p.probability for p in top) - 1) < 1e-5
    data = net.blobs["data"].data
    assert data.shape == (1, 3, 12, 16)  # reshaped from a batch of 2 to one image
    np.testing.assert_array_equal(data[0, 2], np.full((12, 16), 170, np.float32))  # R is the last of B, G, R
    np.testing.assert_array_equal(data[0, 0, :, :8], np.full((12, 8), 40, np.float32))
    pixels = classify.load_image(str(image), 12, 16, color=True)
    visualize.write_report(net, str(tmp_path / "vis"), top, pixels)
    with Image.open(tmp_path / "vis" / "input.png") as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)  # back in RGB order
    with Image.open(tmp_path / "vis" / "blobs" / "data.png") as im:
        assert im.mode == "RGB"
        shown = np.asarray(im)
    # One [min, max] scale over the three channels: red (170) on top, blue 40 on the left, -10 on the right.
    assert shown[0, 0, 0] == 255 and shown[0, 0, 2] > shown[0, -1, 2] > 0
    with Image.open(tmp_path / "vis" / "weights" / "conv_0.png") as im:
        assert im.mode == "RGB" and im.size == (15 * 7, 15 * 7)  # 4 colour 3x3 filters, 2x2 grid, x15
