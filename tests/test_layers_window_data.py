"""WindowData (window_data_layer.cpp) on window files and PNG/JPEG images generated in tmp_path: the fg/bg split
and the order of a batch, the crop geometry (warp, square, context_pad, clipping, mirrored padding) against
boxes worked out by hand and a NumPy bilinear reference, mean_file / mean_value / scale, cache_images,
prefetching, the V1 upgrade of its fields, and the errors people meet."""
import logging

import numpy as np
import pytest
from caffelike.layers.window_data import window_geometry
from caffelike.proto import caffe_pb2
from google.protobuf import text_format
from PIL import Image

import caffelike as caffe
from caffelike.data.datum import resize_linear
from caffelike.errors import CaffeError, LayerError


# ------------------------------------------------------------------------------------------------------- helpers
def write_window_file(path, blocks) -> str:
    """blocks: [(image path, (channels, height, width), [(class, overlap, x1, y1, x2, y2), ...]), ...]"""
    lines = []
    for i, (image, dims, windows) in enumerate(blocks):
        lines += [f"# {i}", image, " ".join(str(d) for d in dims), str(len(windows))]
        lines += [" ".join(str(v) for v in w) for w in windows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def bgr(path) -> np.ndarray:
    """An image file as (3, H, W) BGR uint8, read with Pillow directly."""
    return np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1].transpose(2, 0, 1).copy()


def window_net(source, batch=4, transform="crop_size: 8", extra="", phase=caffe.TRAIN, prefetch=None) -> caffe.Net:
    data = f"data_param {{ prefetch: {prefetch} }}" if prefetch is not None else ""
    text = (f'layer {{ name: "win" type: "WindowData" top: "data" top: "label" transform_param {{ {transform} }} '
            f'window_data_param {{ source: "{source}" batch_size: {batch} {extra} }} {data} }}')
    return caffe.Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def batch(net):
    net.forward()
    return net.blobs["data"].data.copy(), net.blobs["label"].data.copy()


def bilinear(pixels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Centre-aligned bilinear resampling in float64, edges clamped: the continuous version of INTER_LINEAR."""
    _, h, w = pixels.shape

    def taps(src, dst):
        pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, pos - lo

    y0, y1, fy = taps(h, out_h)
    x0, x1, fx = taps(w, out_w)
    p = pixels.astype(np.float64)
    rows = p[:, y0] * (1 - fy)[:, None] + p[:, y1] * fy[:, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


@pytest.fixture
def scene(tmp_path):
    """Three images: img0.png 12x16 and img1.png 20x24 (random colours), img2.jpg 10x10."""
    rng = np.random.default_rng(7)
    sizes = {"img0.png": (12, 16), "img1.png": (20, 24), "img2.jpg": (10, 10)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / name, quality=95)
    return tmp_path


def one_window(scene, box, image="img0.png", dims=(3, 12, 16)) -> str:
    """A file whose only foreground window is `box` (class 5) plus one background window elsewhere."""
    return write_window_file(scene / "one.txt", [(str(scene / image), dims, [(5, 0.9, *box), (0, 0.1, 0, 0, 3, 3)])])


# ------------------------------------------------------------------------------------------- sampling and labels
MIXED = [("img0.png", (3, 12, 16), [(1, 0.9, 0, 0, 7, 7), (0, 0.2, 1, 1, 8, 8), (2, 0.5, 2, 2, 9, 9),
                                    (4, 0.4, 3, 3, 10, 10)]),  # overlap 0.4: neither fg (>= 0.5) nor bg (< 0.3)
         ("img1.png", (3, 20, 24), [(3, 0.7, 4, 4, 11, 11), (7, 0.05, 0, 0, 7, 7)])]  # a bg class becomes 0


def mixed_file(scene) -> str:
    return write_window_file(scene / "mixed.txt", [(str(scene / n), d, w) for n, d, w in MIXED])


@pytest.mark.parametrize("fg_fraction,num_fg", [(1, 8), (0, 0), (0.25, 2), (0.3, 2)],
                         ids=["all-fg", "all-bg", "quarter", "floor"])
def test_batch_is_background_first_then_foreground(scene, fg_fraction, num_fg):
    caffe.set_random_seed(3)
    net = window_net(mixed_file(scene), batch=8,
                     extra=f"fg_fraction: {fg_fraction} fg_threshold: 0.5 bg_threshold: 0.3")
    assert net.blobs["data"].shape == [8, 3, 8, 8] and net.blobs["label"].shape == [8]
    seen = set()
    for _ in range(20):
        _, labels = batch(net)
        np.testing.assert_array_equal(labels[:8 - num_fg], 0)
        assert set(labels[8 - num_fg:]) <= {1, 2, 3}
        seen |= set(labels[8 - num_fg:].tolist())
    assert seen == ({1.0, 2.0, 3.0} if num_fg else set())


def test_thresholds_split_windows_and_zero_background_labels(scene):
    net = window_net(mixed_file(scene), extra="fg_threshold: 0.5 bg_threshold: 0.3")
    layer = net.layer_list[0]
    assert [(w.image, w.label, w.x1) for w in layer.fg] == [(0, 1, 0), (0, 2, 2), (1, 3, 4)]
    assert [(w.image, w.label, w.x1) for w in layer.bg] == [(0, 0, 1), (1, 0, 0)]  # class 7 forced to 0


def test_foreground_windows_are_drawn_uniformly(scene):
    caffe.set_random_seed(11)
    net = window_net(mixed_file(scene), batch=16, extra="fg_fraction: 1")
    counts = np.zeros(4)
    for _ in range(30):
        _, labels = batch(net)
        counts += np.bincount(labels.astype(int), minlength=4)
    assert counts[0] == 0 and all(120 <= c <= 200 for c in counts[1:])  # 480 draws, 160 expected each


def test_seeded_runs_repeat_and_prefetching_changes_nothing(scene):
    source = mixed_file(scene)
    runs = []
    for prefetch in (None, 0, None):
        caffe.set_random_seed(5)
        net = window_net(source, batch=6, transform="crop_size: 8 mirror: true", extra="context_pad: 2",
                         prefetch=prefetch)
        runs.append([batch(net) for _ in range(3)])
    for other in runs[1:]:
        for (d0, l0), (d1, l1) in zip(runs[0], other):
            np.testing.assert_array_equal(d0, d1)
            np.testing.assert_array_equal(l0, l1)


# ------------------------------------------------------------------------------------------------ crop geometry
def test_warp_of_a_crop_sized_box_is_the_box_itself_in_bgr(scene):
    net = window_net(one_window(scene, (3, 2, 10, 9)), extra="fg_fraction: 1")
    data, labels = batch(net)
    np.testing.assert_array_equal(labels, 5)
    expected = bgr(scene / "img0.png")[:, 2:10, 3:11].astype(np.float32)
    for item in data:
        np.testing.assert_array_equal(item, expected)


def test_warp_by_one_half_averages_two_by_two_blocks(scene):
    net = window_net(one_window(scene, (0, 2, 15, 17), image="img1.png", dims=(3, 20, 24)), extra="fg_fraction: 1")
    box = bgr(scene / "img1.png")[:, 2:18, 0:16].astype(np.int64)
    blocks = box[:, 0::2, 0::2] + box[:, 1::2, 0::2] + box[:, 0::2, 1::2] + box[:, 1::2, 1::2]
    np.testing.assert_array_equal(batch(net)[0][0], (blocks + 2) // 4)


def test_warp_at_any_scale_is_bilinear(scene):
    net = window_net(one_window(scene, (4, 1, 8, 7)), extra="fg_fraction: 1")  # 5 x 7 box -> 8 x 8
    box = bgr(scene / "img0.png")[:, 1:8, 4:9]
    got = batch(net)[0][0]
    np.testing.assert_array_equal(got, resize_linear(box, 8, 8))  # OpenCV's fixed-point INTER_LINEAR
    assert np.abs(got - bilinear(box, 8, 8)).max() <= 1.0


def test_square_mode_expands_the_short_side_about_the_centre(scene):
    # x 4..7, y 2..9: half sizes 2 and 4, centre (6, 6); square -> (6 -/+ 4) on both axes: a 9 x 9 box from (2, 2).
    g = window_geometry((4, 2, 7, 9), (12, 16), 8, 0, square=True, mirror=False)
    assert (g.x1, g.y1, g.x2, g.y2, g.height, g.width, g.pad_h, g.pad_w) == (2, 2, 10, 10, 8, 8, 0, 0)
    net = window_net(one_window(scene, (4, 2, 7, 9)), extra='fg_fraction: 1 crop_mode: "square"')
    box = bgr(scene / "img0.png")[:, 2:11, 2:11]
    np.testing.assert_array_equal(batch(net)[0][0], resize_linear(box, 8, 8))


def test_context_pad_clipped_at_the_corner_leaves_zero_padding(scene):
    # A 4 x 4 box at the corner, crop 8, context_pad 2: scale 8 / 4 = 2 about the centre (2, 2) gives x, y in
    # -2..6 (9 x 9); clipped to 0..6 (7 x 7), warped to round(7 * 8/9) = 6 and offset by round(2 * 8/9) = 2.
    g = window_geometry((0, 0, 3, 3), (12, 16), 8, 2, square=False, mirror=False)
    assert (g.x1, g.y1, g.x2, g.y2, g.height, g.width, g.pad_h, g.pad_w) == (0, 0, 6, 6, 6, 6, 2, 2)
    net = window_net(one_window(scene, (0, 0, 3, 3)), extra="fg_fraction: 1 context_pad: 2")
    item = batch(net)[0][0]
    expected = np.zeros((3, 8, 8), np.float32)
    expected[:, 2:, 2:] = resize_linear(bgr(scene / "img0.png")[:, 0:7, 0:7], 6, 6)
    np.testing.assert_array_equal(item, expected)


def test_context_pad_at_the_far_edge_pads_after_the_patch(scene):
    # Box x 12..15, y 8..11 of the 16 x 12 image: expanded to 10..18 and 6..14, clipped by 3 on the right and bottom.
    g = window_geometry((12, 8, 15, 11), (12, 16), 8, 2, square=False, mirror=False)
    assert (g.x1, g.y1, g.x2, g.y2, g.height, g.width, g.pad_h, g.pad_w) == (10, 6, 15, 11, 5, 5, 0, 0)


def test_expanded_box_rounds_halves_away_from_zero_as_c_does(scene):
    # Box 4..6 with context_pad 2 of crop 8 (scale 2): centre 5.5, half width 1.5 * 2 = 3 -> round(2.5) = 3 and
    # round(8.5) = 9 (Python's round would give 2 and 8).  Box 1..3: round(-0.5) = -1, so 1 pixel of padding.
    g = window_geometry((4, 4, 6, 6), (12, 16), 8, 2, square=False, mirror=False)
    assert (g.x1, g.y1, g.x2, g.y2, g.height, g.width, g.pad_h, g.pad_w) == (3, 3, 9, 9, 8, 8, 0, 0)
    g = window_geometry((1, 1, 3, 3), (12, 16), 8, 2, square=False, mirror=True)
    assert (g.x1, g.y1, g.x2, g.y2, g.height, g.width, g.pad_h, g.pad_w) == (0, 0, 6, 6, 7, 7, 1, 0)


def test_mirror_flips_the_patch_and_its_padding(scene):
    caffe.set_random_seed(2)
    net = window_net(one_window(scene, (0, 0, 3, 3)), batch=16, transform="crop_size: 8 mirror: true",
                     extra="fg_fraction: 1 context_pad: 2")
    patch = resize_linear(bgr(scene / "img0.png")[:, 0:7, 0:7], 6, 6)
    plain, mirrored = np.zeros((3, 8, 8), np.float32), np.zeros((3, 8, 8), np.float32)
    plain[:, 2:, 2:] = patch
    mirrored[:, 2:, :6] = patch[:, :, ::-1]  # the left padding moves to the right (pad_w = the clipped right side, 0)
    data, _ = batch(net)
    kinds = [0 if np.array_equal(x, plain) else 1 if np.array_equal(x, mirrored) else -1 for x in data]
    assert -1 not in kinds and 0 in kinds and 1 in kinds


def test_mirror_is_drawn_in_test_phase_too(scene):
    caffe.set_random_seed(2)
    net = window_net(one_window(scene, (3, 2, 10, 9)), batch=16, transform="crop_size: 8 mirror: true",
                     extra="fg_fraction: 1", phase=caffe.TEST)
    box = bgr(scene / "img0.png")[:, 2:10, 3:11].astype(np.float32)
    data, _ = batch(net)
    flipped = [bool(np.array_equal(x, box[:, :, ::-1])) for x in data]
    assert all(np.array_equal(x, box) or f for x, f in zip(data, flipped)) and any(flipped) and not all(flipped)


def test_jpeg_images_are_read_in_colour(scene):
    net = window_net(one_window(scene, (1, 1, 8, 8), image="img2.jpg", dims=(3, 10, 10)), extra="fg_fraction: 1")
    np.testing.assert_array_equal(batch(net)[0][0], bgr(scene / "img2.jpg")[:, 1:9, 1:9])


# ---------------------------------------------------------------------------------------------- values and means
def write_mean(path, mean: np.ndarray) -> str:
    bp = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1], width=mean.shape[2])
    bp.data.extend(mean.ravel().tolist())
    path.write_bytes(bp.SerializeToString())
    return str(path)


def test_mean_file_offset_and_scale(scene):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 11, 10)).astype(np.float32)  # offset (10 - 8) / 2 = 1
    mean_file = write_mean(scene / "mean.binaryproto", mean)
    net = window_net(one_window(scene, (3, 2, 10, 9)), transform=f'crop_size: 8 mean_file: "{mean_file}"',
                     extra="fg_fraction: 1 scale: 0.5")
    box = bgr(scene / "img0.png")[:, 2:10, 3:11].astype(np.float32)
    np.testing.assert_array_equal(batch(net)[0][0], (box - mean[:, 1:9, 1:9]) * np.float32(0.5))


def test_mean_file_follows_the_padding_and_the_padding_stays_zero(scene):
    mean = np.random.default_rng(1).uniform(0, 255, (3, 10, 10)).astype(np.float32)
    mean_file = write_mean(scene / "mean.binaryproto", mean)
    net = window_net(one_window(scene, (0, 0, 3, 3)), transform=f'crop_size: 8 mean_file: "{mean_file}"',
                     extra="fg_fraction: 1 context_pad: 2 scale: 2")
    patch = resize_linear(bgr(scene / "img0.png")[:, 0:7, 0:7], 6, 6).astype(np.float32)
    expected = np.zeros((3, 8, 8), np.float32)
    expected[:, 2:, 2:] = (patch - mean[:, 3:9, 3:9]) * np.float32(2)
    np.testing.assert_array_equal(batch(net)[0][0], expected)


@pytest.mark.parametrize("values", [[10.5], [10, 20, 30]], ids=["one", "per-channel"])
def test_mean_value(scene, values):
    text = " ".join(f"mean_value: {v}" for v in values)
    net = window_net(one_window(scene, (3, 2, 10, 9)), transform=f"crop_size: 8 {text}", extra="fg_fraction: 1")
    box = bgr(scene / "img0.png")[:, 2:10, 3:11].astype(np.float32)
    expected = box - np.resize(np.float32(values), 3)[:, None, None]
    np.testing.assert_array_equal(batch(net)[0][0], expected)


def test_transform_param_scale_is_ignored_as_in_caffe(scene, caplog):
    with caplog.at_level(logging.WARNING, logger="caffelike"):
        net = window_net(one_window(scene, (3, 2, 10, 9)), transform="crop_size: 8 scale: 0.25",
                         extra="fg_fraction: 1 scale: 2")
    assert "transform_param.scale 0.25 is ignored" in caplog.text
    box = bgr(scene / "img0.png")[:, 2:10, 3:11].astype(np.float32)
    np.testing.assert_array_equal(batch(net)[0][0], box * 2)


def test_v1_fields_move_to_transform_param_and_the_scale_is_lost_as_in_caffe(scene, tmp_path, caplog):
    # Caffe's data upgrade moves V1 window_data_param scale/crop_size/mirror/mean_file into transform_param; the
    # layer then reads crop_size/mirror/mean_file there but its scale from window_data_param (now 1).
    mean = np.full((3, 8, 8), 7, np.float32)
    mean_file = write_mean(scene / "mean.binaryproto", mean)
    path = tmp_path / "v1.prototxt"
    path.write_text(f'layers {{ name: "win" type: WINDOW_DATA top: "data" top: "label" window_data_param {{ '
                    f'source: "{one_window(scene, (3, 2, 10, 9))}" batch_size: 2 fg_fraction: 1 crop_size: 8 '
                    f'mean_file: "{mean_file}" scale: 0.5 }} }}')
    with caplog.at_level(logging.WARNING, logger="caffelike"):
        net = caffe.Net(str(path), caffe.TRAIN)
    assert "ignored" in caplog.text
    box = bgr(scene / "img0.png")[:, 2:10, 3:11].astype(np.float32)
    np.testing.assert_array_equal(batch(net)[0][0], box - 7)


# ------------------------------------------------------------------------------------------------ cache_images
def test_cache_images_reads_the_files_once_at_setup(scene):
    source = mixed_file(scene)
    caffe.set_random_seed(4)
    cached = window_net(source, batch=6, extra="cache_images: true")
    plain = window_net(source, batch=6)
    (scene / "img1.png").unlink()
    for _ in range(4):
        batch(cached)  # the deleted image is still in memory
    with pytest.raises(CaffeError, match=r"img1.png' \(.*mixed.txt line 10\): Could not open or find file"):
        for _ in range(4):
            batch(plain)


def test_cache_images_gives_the_same_batches(scene):
    source = mixed_file(scene)
    out = []
    for cache in ("true", "false"):
        caffe.set_random_seed(4)
        net = window_net(source, batch=6, extra=f"cache_images: {cache} context_pad: 1")
        out.append(np.concatenate([batch(net)[0] for _ in range(2)]))
    np.testing.assert_array_equal(out[0], out[1])


# ------------------------------------------------------------------------------------------------------- errors
HEAD, FG, BG = "# 0\nIMG\n3 12 16\n", "1 0.9 0 0 7 7\n", "0 0.1 0 0 3 3\n"  # IMG: the path of img0.png


@pytest.mark.parametrize("text,message", [
    (HEAD + "1\n1 0.9 0 0 x 7\n", r"bad.txt line 5: expected a window's x2 \(an integer\), got 'x'"),
    (HEAD + "2\n" + FG, r"bad.txt: the file ends where a window's class"),
    ("#0\nIMG\n3 12 16\n0\n", r'bad.txt line 1: expected "# image_index", got \'#0\''),
    ("# 1\nIMG\n3 12 16\n0\n", r"bad.txt line 1: image index 1, expected 0"),
    (HEAD + "2\n0 0.9 0 0 7 7\n" + BG, r"bad.txt line 5: a foreground window .*class > 0"),
    (HEAD + "2\n1 0.9 5 0 4 7\n" + BG, r"bad.txt line 5: the window \(5, 0, 4, 7\) has x2 < x1"),
    (HEAD + "1\n" + BG, r"0 foreground .* and 1 background .* needs at least one of each"),
    (HEAD + "1\n" + FG, r"1 foreground .* and 0 background"),
    ("# 0\nIMG\n1 12 16\n2\n" + FG + BG, r"bad.txt line 2: the image declares 1 channels"),
    ("\n\n", r"Window file .*bad.txt' is empty"),
], ids=["not-an-integer", "truncated", "no-hashtag", "image-index", "fg-class-0", "inverted-box", "no-fg", "no-bg",
        "gray-channels", "empty"])
def test_window_file_errors(scene, text, message):
    (scene / "bad.txt").write_text(text.replace("IMG", str(scene / "img0.png")))
    with pytest.raises(LayerError, match=r'WindowData layer "win": .*' + message):
        window_net(str(scene / "bad.txt"))


def test_missing_window_file(scene):
    with pytest.raises(LayerError, match=r'WindowData layer "win": Failed to open window file .*missing.txt'):
        window_net(str(scene / "missing.txt"))


@pytest.mark.parametrize("transform,extra,message", [
    ("", "", r"transform_param.crop_size must be > 0"),
    ("", "crop_size: 8", r"window_data_param.crop_size is not read by WindowData; set transform_param.crop_size"),
    ("crop_size: 8", "mirror: true", r"window_data_param.mirror is not read"),
    ("crop_size: 8", 'crop_mode: "Square"', r'crop_mode must be "warp" or "square", got \'Square\''),
    ("crop_size: 8", "context_pad: 4", r"context_pad 4 leaves no room in a crop of 8"),
    ("crop_size: 8", "fg_fraction: 1.5", r"fg_fraction must be within \[0, 1\]"),
    ("crop_size: 8 force_gray: true", "", r"force_gray cannot be honoured"),
    ("crop_size: 8 mean_value: 1 mean_value: 2", "", r"Specify either 1 mean_value or as many as channels: 3"),
], ids=["no-crop", "v1-crop-field", "v1-mirror-field", "crop-mode", "context-pad", "fg-fraction", "force-gray",
        "mean-values"])
def test_parameter_errors(scene, transform, extra, message):
    with pytest.raises(LayerError, match=r'WindowData layer "win": .*' + message):
        window_net(mixed_file(scene), transform=transform, extra=extra)


def test_mean_file_smaller_than_the_crop(scene):
    mean_file = write_mean(scene / "small.binaryproto", np.zeros((3, 6, 6), np.float32))
    with pytest.raises(LayerError, match=r"mean_file .* is 3x6x6; .* needs 3 channels and at least crop_size 8"):
        window_net(mixed_file(scene), transform=f'crop_size: 8 mean_file: "{mean_file}"')


def test_box_outside_the_image_names_the_window_line(scene):
    net = window_net(one_window(scene, (10, 0, 17, 7)), extra="fg_fraction: 1")
    with pytest.raises(LayerError, match=r"one.txt line 5: the window \(10, 0, 17, 7\) .* not inside the 16x12"):
        net.forward()


def test_missing_image_names_the_file_and_line(scene):
    source = write_window_file(scene / "gone.txt", [(str(scene / "nope.png"), (3, 12, 16),
                                                     [(1, 0.9, 0, 0, 7, 7), (0, 0.1, 0, 0, 3, 3)])])
    net = window_net(source)
    with pytest.raises(CaffeError, match=r"nope.png' \(.*gone.txt line 2\): Could not open or find file"):
        net.forward()
    with pytest.raises(CaffeError, match=r"nope.png' \(.*gone.txt line 2\): Could not open or find file"):
        window_net(source, extra="cache_images: true")
