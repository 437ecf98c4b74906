"""caffelike.classifier.Classifier and caffelike.net.batching (forward_all, forward_backward_all, _batch) on the zoo's
LeNet (batch 64) with the bundled MNIST digits: predictions against the net run by hand, the ten-crop average,
an end-to-end read of digit PNGs, and batching of counts that are not multiples of the batch size."""
import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from PIL import Image

import caffelike as caffe
import caffelike.net
from caffelike import zoo
from caffelike.classifier import Classifier
from caffelike.data.bundled import mnist_5k
from caffelike.errors import CaffeError
from caffelike.format.prototxt import read_net
from caffelike.io import load_image
from caffelike.net import batching

MODEL = zoo.path("lenet", "lenet.prototxt")
WEIGHTS = zoo.path("lenet", "lenet_mnist5k.caffemodel")
LENET_SCALE = 0.00390625  # lenet_train_test.prototxt's transform_param scale: pixel / 256


@pytest.fixture(scope="module")
def digits():
    """100 digits, 10 of each class (a count that is not a multiple of LeNet's batch of 64)."""
    images, labels = mnist_5k()
    pick = np.arange(7, 5000, 50)
    return images[pick], labels[pick]


@pytest.fixture(scope="module")
def classifier():
    """LeNet for images in [0, 1] (what load_image returns): x * 255 -> pixel, then * 1/256 as in training."""
    return Classifier(MODEL, WEIGHTS, raw_scale=255.0, input_scale=LENET_SCALE)


@pytest.fixture(scope="module")
def lenet():
    return caffelike.net.Net(MODEL, caffe_pb2.TEST, weights=WEIGHTS)


@pytest.fixture
def bound(monkeypatch):
    """Net with pycaffe's batch helpers attached as methods, as net.py will attach them."""
    monkeypatch.setattr(caffelike.net.Net, "forward_all", batching.forward_all, raising=False)
    monkeypatch.setattr(caffelike.net.Net, "forward_backward_all", batching.forward_backward_all, raising=False)
    monkeypatch.setattr(caffelike.net.Net, "_batch", batching._batch, raising=False)


def by_hand(net, data, blob="prob"):
    """Run `data` (N, 1, 28, 28) through the net 64 at a time, the last batch zero-padded, without batching.py."""
    out = []
    for start in range(0, len(data), 64):
        chunk = data[start:start + 64]
        batch = np.zeros((64,) + data.shape[1:], np.float32)
        batch[:len(chunk)] = chunk
        out.append(net.forward(blobs=[blob], data=batch)[blob][:len(chunk)].copy())
    return np.concatenate(out)


def as_unit(images):
    return [(im.astype(np.float32) / 255.0)[:, :, None] for im in images]


# ------------------------------------------------------------------------------------------------------ Classifier
def test_classifier_is_a_test_phase_net_with_the_weights(classifier, lenet):
    assert isinstance(classifier, caffelike.net.Net)
    assert classifier.phase == caffe_pb2.TEST
    np.testing.assert_array_equal(classifier.params["conv1"][0].data, lenet.params["conv1"][0].data)
    assert tuple(classifier.crop_dims) == (28, 28) and tuple(classifier.image_dims) == (28, 28)
    assert classifier.transformer.transpose["data"] == (2, 0, 1)


def test_predict_centre_crop_matches_the_net_and_the_labels(classifier, lenet, digits):
    images, labels = digits
    scores = classifier.predict(as_unit(images), oversample=False)
    assert scores.shape == (100, 10) and scores.dtype == np.float32
    expected = by_hand(lenet, images[:, None].astype(np.float32) * LENET_SCALE)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)
    accuracy = float((scores.argmax(1) == labels).mean())
    assert accuracy >= 0.9, f"top-1 {accuracy:.2f} on 100 bundled digits"


def test_predict_oversample_averages_the_ten_crops(classifier, digits):
    """With image_dims = the input size every crop is the whole digit: five plain, five mirrored."""
    images = as_unit(digits[0][:12])
    plain = classifier.predict(images, oversample=False)
    mirrored = classifier.predict([im[:, ::-1] for im in images], oversample=False)
    averaged = classifier.predict(images)
    assert averaged.shape == (12, 10)
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-5, atol=1e-7)


def test_predict_resizes_to_image_dims_before_cropping(digits):
    clf = Classifier(MODEL, WEIGHTS, image_dims=(32, 32), raw_scale=255.0, input_scale=LENET_SCALE)
    images, labels = digits
    scores = clf.predict(as_unit(images[:20]), oversample=False)
    assert scores.shape == (20, 10)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-5)
    assert (scores.argmax(1) == labels[:20]).mean() >= 0.7  # a 2-pixel-margin centre crop of an upscaled digit


def test_predict_reads_digit_pngs(classifier, digits, tmp_path):
    images, labels = digits
    paths = []
    for i, im in enumerate(images[::5]):
        paths.append(tmp_path / f"digit{i}.png")
        Image.fromarray(im, "L").save(paths[-1])
    loaded = [load_image(p, color=False) for p in paths]
    assert loaded[0].shape == (28, 28, 1)
    scores = classifier.predict(loaded, oversample=False)
    assert (scores.argmax(1) == labels[::5]).mean() >= 0.9


def test_classifier_errors(classifier):
    with pytest.raises(CaffeError, match="at least one image"):
        classifier.predict([])
    with pytest.raises(CaffeError, match="one channel count"):
        classifier.predict([np.zeros((28, 28, 1)), np.zeros((28, 28, 3))])
    with pytest.raises(CaffeError, match=r"needs \(1, 28, 28\)"):
        classifier.predict([np.zeros((28, 28, 3))], oversample=False)
    with pytest.raises(CaffeError, match=r"image_dims \(20, 20\) are smaller than the net's input \(28, 28\)"):
        Classifier(MODEL, WEIGHTS, image_dims=(20, 20))


# ------------------------------------------------------------------------------------------------------- batching
def test_batch_pads_the_last_batch_with_zeros(lenet, bound):
    data = np.arange(130 * 4, dtype=np.float32).reshape(130, 1, 2, 2) + 1
    batches = list(lenet._batch({"data": data}))
    assert [b["data"].shape[0] for b in batches] == [64, 64, 64]
    np.testing.assert_array_equal(batches[1]["data"], data[64:128])
    np.testing.assert_array_equal(batches[2]["data"][:2], data[128:])
    assert not batches[2]["data"][2:].any()


def test_forward_all_count_not_a_multiple_of_the_batch(lenet, bound, digits):
    data = digits[0][:70, None].astype(np.float32) * LENET_SCALE
    out = lenet.forward_all(blobs=["ip1"], data=data)
    assert sorted(out) == ["ip1", "prob"]
    assert out["prob"].shape == (70, 10) and out["ip1"].shape == (70, 500)
    np.testing.assert_allclose(out["prob"], by_hand(lenet, data), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["ip1"], by_hand(lenet, data, "ip1"), rtol=1e-6, atol=1e-6)
    # the net saw the last 6 digits followed by 58 rows of zero padding
    np.testing.assert_array_equal(lenet.blobs["data"].data[:6], data[64:])
    assert not lenet.blobs["data"].data[6:].any()


def test_forward_all_returns_copies_and_handles_small_and_empty_inputs(lenet, bound, digits):
    data = digits[0][:5, None].astype(np.float32) * LENET_SCALE
    out = lenet.forward_all(data=data)
    assert out["prob"].shape == (5, 10)
    kept = out["prob"].copy()
    lenet.forward_all(data=np.zeros_like(data))
    np.testing.assert_array_equal(out["prob"], kept)
    empty = lenet.forward_all(data=np.zeros((0, 1, 28, 28), np.float32))
    assert empty["prob"].shape == (0, 10)


def test_forward_all_errors(lenet, bound):
    with pytest.raises(CaffeError, match=r"needs the input arrays .*forward_all\(data=images\)"):
        lenet.forward_all()
    with pytest.raises(CaffeError, match=r"no blob\(s\) \['nope'\]"):
        lenet.forward_all(blobs=["nope"], data=np.zeros((3, 1, 28, 28), np.float32))


@pytest.fixture(scope="module")
def lenet_backward():
    param = read_net(MODEL)
    param.force_backward = True  # a deploy net has no loss: make Caffe compute the input diffs anyway
    return caffelike.net.Net(param, caffe_pb2.TEST, weights=WEIGHTS)


def test_forward_backward_all_unpads_outputs_and_diffs(lenet_backward, bound, digits):
    net = lenet_backward
    data = digits[0][:70, None].astype(np.float32) * LENET_SCALE
    top = np.random.default_rng(0).standard_normal((70, 10)).astype(np.float32)
    outs, diffs = net.forward_backward_all(blobs=["ip2"], diffs=["conv1"], data=data, prob=top)
    assert outs["prob"].shape == (70, 10) and outs["ip2"].shape == (70, 10)
    assert diffs["data"].shape == (70, 1, 28, 28) and diffs["conv1"].shape == (70, 20, 24, 24)
    assert np.abs(diffs["data"]).max() > 0
    # each digit's gradient depends on that digit alone: reversing the inputs reverses every row
    outs_r, diffs_r = net.forward_backward_all(data=data[::-1].copy(), prob=top[::-1].copy())
    np.testing.assert_allclose(outs_r["prob"][::-1], outs["prob"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diffs_r["data"][::-1], diffs["data"], rtol=1e-4, atol=1e-7)


def test_forward_backward_all_errors(lenet_backward, bound):
    with pytest.raises(CaffeError, match=r"\['label'\] are neither inputs"):
        lenet_backward.forward_backward_all(data=np.zeros((2, 1, 28, 28)), label=np.zeros(2))
    with pytest.raises(CaffeError, match="different lengths"):
        lenet_backward.forward_backward_all(data=np.zeros((2, 1, 28, 28)), prob=np.zeros((3, 10)))


def test_classifier_asks_consent_for_a_python_layer_beside_its_model(tmp_path, monkeypatch):
    monkeypatch.delenv("CAFFELIKE_TRUST_MODEL_DIR", raising=False)
    (tmp_path / "twice.py").write_text(
        "import caffe\n\nclass Twice(caffe.Layer):\n    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data\n")
    model = tmp_path / "deploy.prototxt"
    model.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 '
                     'dim: 4 } } }\nlayer { name: "twice" type: "Python" bottom: "data" top: "out" '
                     'python_param { module: "twice" layer: "Twice" } }\n')
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(name="data", type="Input")])
                        .SerializeToString())
    with pytest.raises(caffe.LayerError, match="twice.py from the model's folder"):
        caffe.Classifier(str(model), str(weights))
    assert caffe.Classifier(str(model), str(weights), trust_python=True).inputs == ["data"]
