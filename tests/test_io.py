"""caffelike.io (pycaffe's caffe.io): BlobProto and Datum round trips, the Transformer's order of operations
against a hand computation, resize_image against values worked out by hand for scikit-image's arithmetic,
load_image on PNG/JPEG files written here, and the positions of oversample's ten crops."""
import numpy as np
import pytest
from caffelike.proto import caffe_pb2
from PIL import Image

from caffelike import io as cio
from caffelike.errors import CaffeError


# ------------------------------------------------------------------------------------------------------ BlobProto
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (2, 3, 1, 2, 2), ()], ids=["4d", "1d", "5d", "scalar"])
def test_blobproto_nd_round_trip(shape):
    rng = np.random.default_rng(0)
    arr = rng.standard_normal(shape).astype(np.float32)
    diff = rng.standard_normal(shape).astype(np.float32)
    blob = caffe_pb2.BlobProto.FromString(cio.array_to_blobproto(arr, diff).SerializeToString())
    assert list(blob.shape.dim) == list(shape) and not blob.HasField("num")
    data = cio.blobproto_to_array(blob)
    assert data.dtype == np.float64 and data.shape == shape  # pycaffe hands out float64
    np.testing.assert_array_equal(data, arr)
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), diff)


def test_blobproto_legacy_dims_win_over_shape():
    """A mean.binaryproto written by old tools: num/channels/height/width, which take precedence."""
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    blob.shape.dim.extend([24])
    blob.data.extend(np.arange(24, dtype=np.float32))
    out = cio.blobproto_to_array(blob)
    assert out.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(out.ravel(), np.arange(24))


def test_blobproto_legacy_with_only_some_dims_set():
    """Unset legacy fields read as their proto default 0 (pycaffe fails the same way, with a bare reshape
    error); the message says which shape was read."""
    blob = caffe_pb2.BlobProto(channels=3, height=2, width=2)
    blob.data.extend(range(12))
    with pytest.raises(CaffeError, match=r"holds 12 data values but its shape \(0, 3, 2, 2\) needs 0"):
        cio.blobproto_to_array(blob)


def test_blobproto_double_data_and_size_mismatch():
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 2])
    blob.double_data.extend([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(cio.blobproto_to_array(blob), [[0.1, 0.2], [0.3, 0.4]])
    blob.shape.dim[:] = [3, 2]
    with pytest.raises(CaffeError, match=r"holds 4 data values but its shape \(3, 2\) needs 6"):
        cio.blobproto_to_array(blob)


def test_blobprotovector_round_trip():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.full((1, 2, 2, 1), -1.5, np.float32)]
    back = cio.blobprotovector_str_to_arraylist(cio.arraylist_to_blobprotovector_str(arrays))
    assert [a.shape for a in back] == [(2, 3), (1, 2, 2, 1)]
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CaffeError, match="BlobProtoVector"):
        cio.blobprotovector_str_to_arraylist(b"\xff\xff\xff")


# ---------------------------------------------------------------------------------------------------------- Datum
def test_datum_uint8_round_trip():
    arr = np.random.default_rng(1).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = caffe_pb2.Datum.FromString(cio.array_to_datum(arr, label=7).SerializeToString())
    assert (datum.channels, datum.height, datum.width, datum.label) == (3, 4, 5, 7)
    assert datum.data == arr.tobytes() and not datum.float_data
    back = cio.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, arr)


def test_datum_float_round_trip():
    arr = np.random.default_rng(2).standard_normal((2, 3, 3)).astype(np.float32)
    datum = cio.array_to_datum(arr)
    assert not datum.data and len(datum.float_data) == 18 and not datum.HasField("label")
    np.testing.assert_array_equal(cio.datum_to_array(datum), arr)


def test_datum_needs_three_axes():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        cio.array_to_datum(np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------------------------------------------- Transformer
def _colour_transformer(shape=(1, 3, 4, 5), mean=(104.0, 117.0, 123.0)):
    t = cio.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255.0)
    t.set_mean("data", np.array(mean, dtype=np.float32))
    t.set_input_scale("data", 0.017)
    return t


def test_preprocess_order_matches_hand_computation():
    """float32; transpose; channel swap; *raw_scale; -mean; *input_scale — element by element in float32."""
    img = np.random.default_rng(3).random((4, 5, 3)).astype(np.float32)
    mean = np.array([104.0, 117.0, 123.0], np.float32)
    out = _colour_transformer().preprocess("data", img)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    swap = (2, 1, 0)
    expected = np.empty((3, 4, 5), np.float32)
    for c in range(3):
        for y in range(4):
            for x in range(5):
                v = img[y, x, swap[c]] * np.float32(255.0)
                expected[c, y, x] = (v - mean[c]) * np.float32(0.017)
    np.testing.assert_array_equal(out, expected)


def test_preprocess_leaves_the_callers_image_alone():
    img = np.random.default_rng(4).random((4, 5, 3)).astype(np.float32)
    before = img.copy()
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255.0)
    t.preprocess("data", img)
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("batch_axis", [False, True], ids=["chw", "1chw"])
def test_deprocess_inverts_preprocess(batch_axis):
    img = np.random.default_rng(5).random((4, 5, 3)).astype(np.float32)
    t = _colour_transformer()
    blob = t.preprocess("data", img)
    back = t.deprocess("data", blob[None] if batch_axis else blob)
    assert back.shape == img.shape
    np.testing.assert_allclose(back, img, rtol=0, atol=2e-6)


def test_deprocess_single_channel_keeps_its_channel_axis():
    img = np.random.default_rng(6).random((6, 6, 1)).astype(np.float32)
    t = cio.Transformer({"data": (64, 1, 6, 6)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255.0)
    t.set_input_scale("data", 1 / 256)
    blob = t.preprocess("data", img)
    np.testing.assert_allclose(blob[0], img[:, :, 0] * 255 / 256, rtol=1e-6)
    np.testing.assert_allclose(t.deprocess("data", blob), img, atol=1e-6)


def test_preprocess_resizes_to_the_input_size():
    img = np.random.default_rng(7).random((8, 6, 3)).astype(np.float32)
    t = cio.Transformer({"data": (1, 3, 4, 3)})
    t.set_transpose("data", (2, 0, 1))
    out = t.preprocess("data", img)
    np.testing.assert_array_equal(out, cio.resize_image(img, (4, 3)).transpose(2, 0, 1))


def test_set_mean_resizes_an_image_mean():
    """A 2x downscale with pixel centres aligned samples between each 2x2 block: the block average."""
    mean = np.random.default_rng(8).uniform(50, 200, (3, 8, 8))
    t = cio.Transformer({"data": (1, 3, 4, 4)})
    t.set_mean("data", mean)
    blocks = mean.reshape(3, 4, 2, 4, 2).mean(axis=(2, 4))
    assert t.mean["data"].shape == (3, 4, 4)
    np.testing.assert_allclose(t.mean["data"], blocks, rtol=1e-6)


def test_set_mean_of_the_right_size_is_kept_and_constant_mean_works():
    t = cio.Transformer({"data": (1, 3, 4, 4)})
    mean = np.arange(48, dtype=np.float64).reshape(3, 4, 4)
    t.set_mean("data", mean)
    assert t.mean["data"] is not None and np.array_equal(t.mean["data"], mean)
    t.set_mean("data", np.full((3, 8, 8), 5.0))
    np.testing.assert_array_equal(t.mean["data"], np.full((3, 4, 4), 5.0))


@pytest.mark.parametrize("call, message", [
    (lambda t: t.preprocess("image", np.zeros((4, 5, 3))), r"'image' is not one of the Transformer's inputs"),
    (lambda t: t.set_transpose("data", (1, 0)), r"has 2 axes; the input \(1, 3, 4, 5\) needs 3"),
    (lambda t: t.set_channel_swap("data", (1, 0)), r"has 2 entries; the input \(1, 3, 4, 5\) has 3 channels"),
    (lambda t: t.set_mean("data", np.zeros(4)), r"mean for input 'data' has 4 channels"),
    (lambda t: t.set_mean("data", np.zeros((2, 2, 2, 2))), r"must be \(C,\) or \(C, H, W\)"),
], ids=["unknown-input", "transpose-length", "swap-length", "mean-channels", "mean-4d"])
def test_transformer_errors(call, message):
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(cio.TransformerError, match=message) as info:
        call(t)
    assert isinstance(info.value, (CaffeError, ValueError))


def test_preprocess_reports_a_channel_mismatch():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    with pytest.raises(cio.TransformerError, match=r"becomes \(1, 4, 5\) after the transpose; .* \(3, 4, 5\)"):
        t.preprocess("data", np.zeros((4, 5, 1)))


# ---------------------------------------------------------------------------------------------------- resize_image
def test_resize_same_size_is_identity_up_to_rounding():
    img = np.random.default_rng(9).random((5, 7, 3)).astype(np.float32)
    out = cio.resize_image(img, (5, 7))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, img, rtol=0, atol=1e-7)


def test_resize_downscale_by_two_is_the_block_average():
    img = np.random.default_rng(10).random((6, 8, 1)).astype(np.float32)
    out = cio.resize_image(img, (3, 4))
    np.testing.assert_allclose(out, img.reshape(3, 2, 4, 2, 1).mean(axis=(1, 3)), rtol=1e-6)


def test_resize_upscale_blends_the_border_toward_the_minimum():
    """scikit-image's mode='constant' on the min-max normalised image: source positions -0.25, 0.25, 0.75, 1.25
    read [0*(.25) + a*(.75)] -> the minimum, then 0.25, 0.75, and 0.75 (the sample past the end reads 0)."""
    a, b = 10.0, 30.0
    out = cio.resize_image(np.array([[[a], [b]]], np.float32), (1, 4))
    np.testing.assert_allclose(out[0, :, 0], [a, a + 5, a + 15, a + 15], rtol=1e-6)


def test_resize_nearest_rounds_half_away_from_zero():
    img = np.arange(4, dtype=np.float32).reshape(1, 4, 1)
    np.testing.assert_array_equal(cio.resize_image(img, (1, 2), interp_order=0)[0, :, 0], [1, 3])


def test_resize_other_channel_counts_align_the_corners():
    """pycaffe sends K not in (1, 3) to scipy.ndimage.zoom, which maps output i to i * (in - 1) / (out - 1)."""
    img = np.stack([np.array([[0.0, 2.0, 4.0]]), np.array([[1.0, 1.0, 3.0]])], axis=-1).astype(np.float32)
    out = cio.resize_image(img, (1, 5))
    np.testing.assert_allclose(out[0, :, 0], [0, 1, 2, 3, 4])
    np.testing.assert_allclose(out[0, :, 1], [1, 1, 1, 2, 3])


def test_resize_constant_2d_and_cubic():
    np.testing.assert_array_equal(cio.resize_image(np.full((3, 3, 3), 7.0), (5, 4)), np.full((5, 4, 3), 7.0))
    flat = cio.resize_image(np.random.default_rng(11).random((6, 6)), (3, 9))
    assert flat.shape == (3, 9) and flat.dtype == np.float32
    smooth = np.add.outer(np.linspace(0, 1, 16), np.linspace(0, 1, 16))[:, :, None].astype(np.float32)
    cubic, linear = cio.resize_image(smooth, (24, 24), 3), cio.resize_image(smooth, (24, 24), 1)
    np.testing.assert_allclose(cubic[2:-2, 2:-2], linear[2:-2, 2:-2], atol=1e-2)  # an approximation
    with pytest.raises(cio.ImageError, match="interp_order must be 0..5"):
        cio.resize_image(smooth, (4, 4), 7)


# ------------------------------------------------------------------------------------------------------ load_image
@pytest.fixture
def rgb_pixels():
    rng = np.random.default_rng(12)
    return rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)


def test_load_png_colour(tmp_path, rgb_pixels):
    path = tmp_path / "colour.png"
    Image.fromarray(rgb_pixels, "RGB").save(path)
    img = cio.load_image(str(path))
    assert img.shape == (6, 9, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, rgb_pixels / 255.0, rtol=1e-7)
    gray = cio.load_image(path, color=False)
    assert gray.shape == (6, 9, 1)
    np.testing.assert_allclose(gray[:, :, 0], rgb_pixels @ np.array([0.2125, 0.7154, 0.0721]) / 255.0, rtol=1e-6)


def test_load_png_gray_and_alpha(tmp_path, rgb_pixels):
    gray_path, rgba_path = tmp_path / "gray.png", tmp_path / "rgba.png"
    Image.fromarray(rgb_pixels[:, :, 0], "L").save(gray_path)
    rgba = np.concatenate([rgb_pixels, np.full((6, 9, 1), 9, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(rgba_path)
    tiled = cio.load_image(gray_path)
    assert tiled.shape == (6, 9, 3)
    for k in range(3):
        np.testing.assert_allclose(tiled[:, :, k], rgb_pixels[:, :, 0] / 255.0, rtol=1e-7)
    single = cio.load_image(gray_path, color=False)
    assert single.shape == (6, 9, 1)
    np.testing.assert_array_equal(single[:, :, 0], tiled[:, :, 0])
    np.testing.assert_allclose(cio.load_image(rgba_path), rgb_pixels / 255.0, rtol=1e-7)


def test_load_png_16_bit(tmp_path):
    wide = np.array([[0, 257, 65535]], dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    np.testing.assert_allclose(cio.load_image(path, color=False)[0, :, 0], [0, 257 / 65535, 1.0], rtol=1e-7)


def test_load_jpeg(tmp_path):
    smooth = np.zeros((16, 16, 3), np.uint8)
    smooth[..., 0] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
    smooth[..., 1] = 128
    smooth[..., 2] = np.linspace(255, 0, 16, dtype=np.uint8)[:, None]
    path = tmp_path / "smooth.jpg"
    Image.fromarray(smooth, "RGB").save(path, quality=100, subsampling=0)
    img = cio.load_image(path)
    assert img.shape == (16, 16, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, smooth / 255.0, atol=6 / 255)
    assert cio.load_image(path, color=False).shape == (16, 16, 1)


def test_load_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is text, not pixels")
    with pytest.raises(cio.ImageError, match=r"could not decode '.*not_an_image\.png'"):
        cio.load_image(bad)
    with pytest.raises(CaffeError, match=r"no such file '.*missing\.jpg'"):
        cio.load_image(tmp_path / "missing.jpg")


# ------------------------------------------------------------------------------------------------------ oversample
def test_oversample_positions_and_mirrors():
    """Pixel value = 1000*image + 100*y + x (+ 0.5 in channel 1), so each crop's corner names its origin."""
    height, width, ch, cw = 7, 9, 4, 5
    y, x = np.mgrid[0:height, 0:width]
    images = [np.stack([100 * y + x + 1000 * n, 100 * y + x + 1000 * n + 0.5], axis=-1) for n in range(2)]
    crops = cio.oversample(images, (ch, cw))
    assert crops.shape == (20, ch, cw, 2) and crops.dtype == np.float32
    origins = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw), (1, 2)]  # centre: (3//2, 4//2)
    for n in range(2):
        for k, (oy, ox) in enumerate(origins):
            np.testing.assert_array_equal(crops[10 * n + k], images[n][oy:oy + ch, ox:ox + cw])
            np.testing.assert_array_equal(crops[10 * n + 5 + k], images[n][oy:oy + ch, ox:ox + cw][:, ::-1])


def test_oversample_errors():
    with pytest.raises(cio.ImageError, match=r"crop \(8, 2\) does not fit in images of 7 x 9"):
        cio.oversample([np.zeros((7, 9, 3))], (8, 2))
    with pytest.raises(cio.ImageError, match="all of one shape"):
        cio.oversample([np.zeros((7, 9, 3)), np.zeros((7, 8, 3))], (2, 2))
