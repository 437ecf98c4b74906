"""The data layers other than Data: ImageData (image lists), HDF5Data, MemoryData and DummyData.  Data (LMDB),
the Datum helpers and the prefetcher are in tests/test_layers_data.py."""
import numpy as np
import pytest
from PIL import Image
from test_layers_data import forward, make_net, raw_images

import caffelike as caffe
from caffelike.data.datum import resize_linear
from caffelike.errors import CaffeError, LayerError


# -------------------------------------------------------------------------------------------------- ImageData
@pytest.fixture
def image_list(tmp_path):
    images = raw_images(5, shape=(3, 6, 8), seed=5)
    folder = tmp_path / "img dir"
    folder.mkdir()
    lines = []
    for i, im in enumerate(images):
        Image.fromarray(np.ascontiguousarray(im[::-1].transpose(1, 2, 0)), "RGB").save(folder / f"im {i}.png")
        lines.append(f"im {i}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return images, str(tmp_path / "list.txt"), str(folder) + "/"


def image_net(source, root, batch=2, extra="", transform=""):
    return make_net(f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" '
                    f'transform_param {{ {transform} }} image_data_param {{ source: "{source}" '
                    f'root_folder: "{root}" batch_size: {batch} {extra} }} }}')


@pytest.mark.parametrize("extra", ["", "shuffle: true"], ids=["in_order", "shuffled"])
def test_image_data_skips_by_passes_to_where_reading_would_be(image_list, extra):
    """Skipping before the first batch (a resumed run) lands where reading 7 batches of 3 (4 passes over 5
    images, shuffled at each wrap) would; 10**9 batches in order are skipped by arithmetic, at once."""
    images, source, root = image_list
    caffe.set_random_seed(3)
    reference = image_net(source, root, batch=3, extra=extra)
    expected = [forward(reference)[1] for _ in range(8)]
    caffe.set_random_seed(3)
    net = image_net(source, root, batch=3, extra=extra)
    net.layer_list[0].skip_batches(7)
    np.testing.assert_array_equal(forward(net)[1], expected[7])
    if not extra:
        net = image_net(source, root, batch=3)
        net.layer_list[0].skip_batches(10 ** 9)
        np.testing.assert_array_equal(forward(net)[1], [0, 1, 2])  # 3 * 10**9 is a whole number of passes


def test_image_list_split_at_the_last_space_with_root_folder_and_wrap(image_list):
    images, source, root = image_list
    net = image_net(source, root, batch=3)
    got = [forward(net) for _ in range(2)]
    order = [0, 1, 2, 3, 4, 0]
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), images[order])
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), order)


def test_image_data_gray_and_resize(image_list):
    images, source, root = image_list
    net = image_net(source, root, batch=1, extra="is_color: false new_height: 3 new_width: 4")
    assert net.blobs["data"].shape == [1, 1, 3, 4]
    net.forward()
    b, g, r = images[0].astype(np.float64)
    gray = np.rint(0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8)[None]
    np.testing.assert_allclose(net.blobs["data"].data[0], resize_linear(gray, 3, 4), atol=1)
    with pytest.raises(CaffeError, match="new_height and new_width must both be set"):
        image_net(source, root, extra="new_height: 3")


def test_image_data_shuffle_is_a_seeded_permutation_each_pass(image_list):
    images, source, root = image_list
    caffe.set_random_seed(2)
    net = image_net(source, root, batch=5, extra="shuffle: true")
    first, second = forward(net)[1], forward(net)[1]
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    caffe.set_random_seed(2)
    again = image_net(source, root, batch=5, extra="shuffle: true")
    np.testing.assert_array_equal(forward(again)[1], first)


def test_image_data_errors(image_list, tmp_path):
    images, source, root = image_list
    with pytest.raises(LayerError, match=r'ImageData layer "img": cannot open the image list .*missing.txt'):
        image_net(str(tmp_path / "missing.txt"), root)
    (tmp_path / "broken.txt").write_text("im 0.png 0\nim 1.png\n")
    with pytest.raises(LayerError, match=r"broken.txt line 2: expected '<path> <integer label>'"):
        image_net(str(tmp_path / "broken.txt"), root)
    (tmp_path / "gone.txt").write_text("im 0.png 0\nnot_there.png 1\n")
    net = image_net(str(tmp_path / "gone.txt"), root, batch=1)
    net.forward()
    with pytest.raises(CaffeError, match=r"gone.txt line 2: Could not open or find file .*not_there.png"):
        net.forward()


# --------------------------------------------------------------------------------------------------- HDF5Data
@pytest.fixture
def h5py():
    return pytest.importorskip("h5py")


def write_h5(path, **datasets):
    import h5py

    with h5py.File(path, "w") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=values)
    return str(path)


def hdf5_net(source, batch, tops=("data", "label"), extra=""):
    top_lines = " ".join(f'top: "{t}"' for t in tops)
    return make_net(f'layer {{ name: "h5" type: "HDF5Data" {top_lines} '
                    f'hdf5_data_param {{ source: "{source}" batch_size: {batch} {extra} }} }}')


def test_hdf5_rows_run_across_files_and_wrap(tmp_path, h5py):
    a = np.arange(3 * 2, dtype=np.float64).reshape(3, 2)
    b = np.arange(100, 104, dtype=np.float64).reshape(2, 2)
    write_h5(tmp_path / "a.h5", data=a, label=np.arange(3, dtype=np.int32))
    write_h5(tmp_path / "b.h5", data=b, label=np.arange(10, 12, dtype=np.int32))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    net = hdf5_net(tmp_path / "list.txt", batch=4)
    assert net.blobs["data"].shape == [4, 2] and net.blobs["label"].shape == [4]
    rows = np.concatenate([a, b])
    labels = [0, 1, 2, 10, 11]
    for start in (0, 4):
        net.forward()
        idx = [(start + i) % 5 for i in range(4)]
        np.testing.assert_array_equal(net.blobs["data"].data, rows[idx].astype(np.float32))
        np.testing.assert_array_equal(net.blobs["label"].data, [labels[i] for i in idx])
        assert net.blobs["label"].data.dtype == np.float32


def test_hdf5_shuffle_visits_every_row_once_per_pass(tmp_path, h5py):
    write_h5(tmp_path / "a.h5", data=np.arange(6, dtype=np.float32)[:, None])
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))
    caffe.set_random_seed(4)
    net = hdf5_net(tmp_path / "list.txt", batch=6, tops=("data",), extra="shuffle: true")
    passes = []
    for _ in range(3):
        net.forward()
        passes.append(net.blobs["data"].data[:, 0].tolist())
    assert all(sorted(p) == [0, 1, 2, 3, 4, 5] for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_hdf5_errors(tmp_path, h5py):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3), np.float32))
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))
    with pytest.raises(LayerError, match=r"has no dataset 'label' .*\['data'\]"):
        hdf5_net(tmp_path / "list.txt", batch=1)
    with pytest.raises(LayerError, match="does not transform data"):
        make_net(f'layer {{ name: "h5" type: "HDF5Data" top: "data" transform_param {{ scale: 2 }} '
                 f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 1 }} }}')
    with pytest.raises(LayerError, match="cannot open the HDF5 file list"):
        hdf5_net(tmp_path / "nope.txt", batch=1, tops=("data",))


# ------------------------------------------------------------------------------------------------- MemoryData
def memory_net(batch=2):
    return make_net(f'layer {{ name: "mem" type: "MemoryData" top: "data" top: "label" '
                    f'memory_data_param {{ batch_size: {batch} channels: 1 height: 2 width: 2 }} }}')


def test_memory_data_checks_like_set_input_arrays():
    net = memory_net()
    layer = net.layer_list[0]
    with pytest.raises(LayerError, match="needs to be initialized by calling Reset"):
        net.forward()
    data = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(LayerError, match="must be float32"):
        layer.reset(data.astype(np.float64), np.zeros(4, np.float32))
    with pytest.raises(LayerError, match="n must be a multiple of batch size"):
        layer.reset(data[:3], np.zeros(3, np.float32))
    with pytest.raises(LayerError, match="wrong shape"):
        layer.reset(np.zeros((4, 2, 2, 2), np.float32), np.zeros(4, np.float32))
    with pytest.raises(LayerError, match="same first dimension"):
        layer.reset(data, np.zeros(2, np.float32))
    labels = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)
    layer.reset(data, labels)
    net.forward()
    assert net.blobs["label"].shape == [2, 1, 1, 1]


# -------------------------------------------------------------------------------------------------- DummyData
def test_dummy_data_refills_random_tops_and_keeps_constant_ones():
    net = make_net('layer { name: "dd" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                   'num: 2 channels: 3 height: 1 width: 2 num: 1 channels: 1 height: 1 width: 4 '
                   'data_filler { type: "gaussian" } data_filler { type: "constant" value: 7 } } }')
    assert net.blobs["a"].shape == [2, 3, 1, 2] and net.blobs["b"].shape == [1, 1, 1, 4]
    net.forward()
    first = net.blobs["a"].data.copy()
    net.blobs["b"].data[...] = 3  # a constant top is filled once; what is written into it stays, as in Caffe
    net.forward()
    assert not np.array_equal(first, net.blobs["a"].data)
    assert (net.blobs["b"].data == 3).all()


def test_dummy_data_errors():
    with pytest.raises(LayerError, match="Both shape and legacy fields were specified"):
        make_net('layer { name: "dd" type: "DummyData" top: "a" dummy_data_param { num: 1 shape { dim: 1 } } }')
    with pytest.raises(LayerError, match="Must specify 'shape' once, or once per top blob"):
        make_net('layer { name: "dd" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                 'shape { dim: 1 } shape { dim: 2 } } }')
    # Found by tests/test_fuzz.py: these escaped as torch's RuntimeError or an error naming no layer.
    with pytest.raises(LayerError, match=r'DummyData layer "dd": top 0 \(\'a\'\) would have a negative dimension'):
        make_net('layer { name: "dd" type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 dim: -1 } } }')
    with pytest.raises(LayerError, match=r'DummyData layer "dd": data_filler of top 0 .*Unknown filler name'):
        make_net('layer { name: "dd" type: "DummyData" top: "a" dummy_data_param { shape { dim: 2 } '
                 'data_filler { type: "gaus" } } }')
