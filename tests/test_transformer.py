"""caffelike.data.transformer.DataTransformer against an independent element-by-element reference of Caffe's
DataTransformer::Transform loops (mirror drawn first, crop, (x - mean) * scale in float32, mean_file indexed at
the uncropped position), plus its randomness and its errors."""
import numpy as np
import pytest
from caffelike.proto import caffe_pb2

import caffelike as caffe
from caffelike.data.transformer import DataTransformer, load_mean_file
from caffelike.errors import CaffeError


def reference(img, *, scale=1.0, crop=0, mean=None, mean_values=None, do_mirror=False, h_off=0, w_off=0):
    """Caffe's loop, one element at a time, in float32."""
    c, h, w = img.shape
    oh, ow = (crop, crop) if crop else (h, w)
    out = np.zeros((c, oh, ow), np.float32)
    if mean_values is not None and len(mean_values) == 1:
        mean_values = list(mean_values) * c
    for ch in range(c):
        for y in range(oh):
            for x in range(ow):
                pixel = np.float32(img[ch, h_off + y, w_off + x])
                if mean is not None:
                    value = (pixel - np.float32(mean[ch, h_off + y, w_off + x])) * np.float32(scale)
                elif mean_values is not None:
                    value = (pixel - np.float32(mean_values[ch])) * np.float32(scale)
                else:
                    value = pixel * np.float32(scale)
                out[ch, y, ow - 1 - x if do_mirror else x] = value
    return out


def tparam(**fields) -> caffe_pb2.TransformationParameter:
    p = caffe_pb2.TransformationParameter()
    for k, v in fields.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


def write_mean(path, mean):
    """A mean.binaryproto as compute_image_mean writes it (legacy num/channels/height/width)."""
    bp = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    bp.data.extend(mean.ravel().tolist())
    path.write_bytes(bp.SerializeToString())
    return str(path)


@pytest.fixture
def image():
    return np.random.default_rng(3).integers(0, 256, (3, 7, 9), dtype=np.uint8)


@pytest.fixture
def mean(tmp_path):
    values = np.random.default_rng(4).uniform(0, 255, (3, 7, 9)).astype(np.float32)
    return values, write_mean(tmp_path / "mean.binaryproto", values)


@pytest.mark.parametrize("do_mirror", [False, True], ids=["plain", "mirrored"])
@pytest.mark.parametrize("h_off,w_off", [(0, 0), (2, 4), (1, 3)], ids=["corner", "far", "inside"])
def test_mean_file_crop_mirror_scale_match_the_reference_exactly(image, mean, do_mirror, h_off, w_off):
    values, path = mean
    t = DataTransformer(tparam(scale=0.017, crop_size=5, mirror=True, mean_file=path), caffe.TRAIN)
    # Raw draws as the sequential planner hands them over: Rand(n) = raw % n.
    raw = np.array([int(do_mirror), h_off, w_off], dtype=np.uint64)
    got = t(image, raw)
    want = reference(image, scale=0.017, crop=5, mean=values, do_mirror=do_mirror, h_off=h_off, w_off=w_off)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mean_values", [[104.0, 117.0, 123.0], [127.5]], ids=["per-channel", "one-value"])
def test_mean_value_is_per_channel_or_replicated(image, mean_values):
    t = DataTransformer(tparam(scale=0.5, mean_value=mean_values), caffe.TEST)
    np.testing.assert_array_equal(t(image), reference(image, scale=0.5, mean_values=mean_values))


def test_float_input_and_no_mean(image):
    x = image.astype(np.float32) / 7
    t = DataTransformer(tparam(scale=3.0), caffe.TEST)
    np.testing.assert_array_equal(t(x), reference(x, scale=3.0))


def test_test_phase_takes_the_centre_crop_with_integer_division(image, mean):
    values, path = mean
    t = DataTransformer(tparam(crop_size=4, mean_file=path), caffe.TEST)
    assert t.rng is None  # nothing random: no mirror, TEST phase
    # (7 - 4) // 2 = 1, (9 - 4) // 2 = 2
    np.testing.assert_array_equal(t(image), reference(image, crop=4, mean=values, h_off=1, w_off=2))


def test_train_crop_offsets_cover_the_whole_range(image):
    caffe.set_random_seed(11)
    t = DataTransformer(tparam(crop_size=5), caffe.TRAIN)
    seen = set()
    for _ in range(200):
        out = t(image)
        # find where the crop came from
        hits = [(y, x) for y in range(3) for x in range(5) if np.array_equal(image[:, y:y + 5, x:x + 5], out)]
        assert len(hits) >= 1
        seen.add(hits[0])
    assert seen == {(y, x) for y in range(3) for x in range(5)}, "TRAIN offsets must span 0 .. H-crop, 0 .. W-crop"


def test_mirror_is_random_in_the_test_phase_too(image):
    caffe.set_random_seed(5)
    t = DataTransformer(tparam(mirror=True), caffe.TEST)
    outs = [t(image) for _ in range(40)]
    flipped = sum(np.array_equal(o, image[:, :, ::-1]) for o in outs)
    plain = sum(np.array_equal(o, image) for o in outs)
    assert flipped + plain == 40 and flipped > 5 and plain > 5


def test_draws_are_reproducible_from_set_random_seed(image):
    caffe.set_random_seed(1701)
    a = DataTransformer(tparam(mirror=True, crop_size=3), caffe.TRAIN).draw(8)
    caffe.set_random_seed(1701)
    b = DataTransformer(tparam(mirror=True, crop_size=3), caffe.TRAIN).draw(8)
    np.testing.assert_array_equal(a, b)


def test_writes_into_a_batch_slot(image):
    t = DataTransformer(tparam(scale=2.0), caffe.TEST)
    batch = np.zeros((2,) + image.shape, np.float32)
    t(image, out=batch[1])
    np.testing.assert_array_equal(batch[1], image.astype(np.float32) * 2)
    assert not batch[0].any()


def test_mean_file_loads_legacy_and_shape_blobs(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(load_mean_file(write_mean(tmp_path / "legacy.binaryproto", values)), values)
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([1, 3, 2, 2])
    bp.data.extend(values.ravel().tolist())
    (tmp_path / "shape.binaryproto").write_bytes(bp.SerializeToString())
    np.testing.assert_array_equal(load_mean_file(str(tmp_path / "shape.binaryproto")), values)


# ------------------------------------------------------------------------------------------------------- errors
def test_mean_shape_mismatch_names_both_shapes(tmp_path):
    path = write_mean(tmp_path / "m.binaryproto", np.zeros((1, 28, 28), np.float32))
    t = DataTransformer(tparam(mean_file=path), caffe.TEST, where='Data layer "d"')
    with pytest.raises(CaffeError, match=r'Data layer "d".*1x28x28.*3x32x32'):
        t(np.zeros((3, 32, 32), np.uint8))


def test_crop_larger_than_the_image():
    t = DataTransformer(tparam(crop_size=30), caffe.TEST)
    with pytest.raises(CaffeError, match=r"crop_size 30 is larger than the image.*1x28x28"):
        t(np.zeros((1, 28, 28), np.uint8))


def test_mean_file_and_mean_value_together(tmp_path):
    path = write_mean(tmp_path / "m.binaryproto", np.zeros((1, 2, 2), np.float32))
    with pytest.raises(CaffeError, match="Cannot specify mean_file and mean_value at the same time"):
        DataTransformer(tparam(mean_file=path, mean_value=[1.0]), caffe.TEST)


def test_wrong_number_of_mean_values():
    t = DataTransformer(tparam(mean_value=[1.0, 2.0]), caffe.TEST)
    with pytest.raises(CaffeError, match="Specify either 1 mean_value or as many as channels: 2 .* 3 channels"):
        t(np.zeros((3, 4, 4), np.uint8))


def test_missing_mean_file_and_both_force_flags():
    with pytest.raises(CaffeError, match="mean_file 'no/such/mean.binaryproto' not found"):
        DataTransformer(tparam(mean_file="no/such/mean.binaryproto"), caffe.TEST)
    with pytest.raises(CaffeError, match="both force_color and force_gray"):
        DataTransformer(tparam(force_color=True, force_gray=True), caffe.TEST)


@pytest.mark.parametrize("fields,phase", [
    ({"scale": 0.00390625}, caffe.TRAIN),
    ({"mean_file": "MEAN", "scale": 0.017}, caffe.TRAIN),
    ({"mean_file": "MEAN", "crop_size": 4}, caffe.TEST),
    ({"mean_value": [104.0, 117.0, 123.0]}, caffe.TEST),
    ({"mean_value": [127.5], "scale": 0.5}, caffe.TRAIN),
], ids=["scale", "mean-file", "test-crop", "mean-values", "one-mean-value"])
def test_a_batch_at_once_gives_the_bits_of_each_sample_alone(mean, fields, phase):
    """The Data layer's batch path (no random draws) against the per-sample transform and Caffe's loop."""
    values, path = mean
    fields = {k: (path if v == "MEAN" else v) for k, v in fields.items()}
    t = DataTransformer(tparam(**fields), phase)
    batch = np.random.default_rng(5).integers(0, 256, (4, 3, 7, 9), dtype=np.uint8)
    out = np.empty((4,) + t.output_shape(batch.shape[1:]), np.float32)
    t.transform_batch(batch, out=out)
    crop = fields.get("crop_size", 0)
    for i, image in enumerate(batch):
        np.testing.assert_array_equal(out[i], t(image))
        want = reference(image, scale=fields.get("scale", 1.0), crop=crop,
                         mean=values if "mean_file" in fields else None, mean_values=fields.get("mean_value"),
                         h_off=(7 - crop) // 2 if crop else 0, w_off=(9 - crop) // 2 if crop else 0)
        np.testing.assert_array_equal(out[i], want)


def test_a_batch_at_once_is_refused_when_samples_draw():
    t = DataTransformer(tparam(mirror=True), caffe.TEST)
    with pytest.raises(ValueError, match="per sample"):
        t.transform_batch(np.zeros((2, 1, 3, 3), np.uint8), out=np.empty((2, 1, 3, 3), np.float32))
