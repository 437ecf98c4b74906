"""Net-level semantics: state filtering, split insertion, loss weights, backward planning, sharing, reshape,
the torch path versus the pycaffe path, and the pycaffe Net API surface."""
import numpy as np
import pytest
import torch
from helpers import assert_blob_close

import caffelike as caffe
from caffelike.format.prototxt import parse_net
from caffelike.net.netstate import filter_net, make_state
from caffelike.net.splits import insert_splits


def net_from(text: str, phase=caffe.TEST, **kw) -> caffe.Net:
    return caffe.Net(parse_net(text), phase, **kw)


# ---------------------------------------------------------------------------------------------------- NetState filter
FILTER_NET = """
name: "f"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "data" top: "b" include { phase: TEST } }
layer { name: "level_ge_2" type: "ReLU" bottom: "data" top: "c" include { min_level: 2 } }
layer { name: "level_le_1" type: "ReLU" bottom: "data" top: "d" include { max_level: 1 } }
layer { name: "stage_ab" type: "ReLU" bottom: "data" top: "e" include { stage: "a" stage: "b" } }
layer { name: "a_or_b" type: "ReLU" bottom: "data" top: "f" include { stage: "a" } include { stage: "b" } }
layer { name: "not_deploy" type: "ReLU" bottom: "data" top: "g" include { not_stage: "deploy" } }
layer { name: "excl_train" type: "ReLU" bottom: "data" top: "h" exclude { phase: TRAIN } }
layer { name: "excl_val_test" type: "ReLU" bottom: "data" top: "i" exclude { phase: TEST stage: "val" } }
"""


@pytest.mark.parametrize("phase,level,stages,expected", [
    (caffe.TRAIN, 0, [], ["data", "train_only", "level_le_1", "not_deploy", "excl_val_test"]),
    (caffe.TEST, 0, [], ["data", "test_only", "level_le_1", "not_deploy", "excl_train", "excl_val_test"]),
    (caffe.TEST, 2, [], ["data", "test_only", "level_ge_2", "not_deploy", "excl_train", "excl_val_test"]),
    (caffe.TEST, 0, ["a"], ["data", "test_only", "level_le_1", "a_or_b", "not_deploy", "excl_train",
                             "excl_val_test"]),
    (caffe.TEST, 0, ["a", "b"], ["data", "test_only", "level_le_1", "stage_ab", "a_or_b", "not_deploy",
                                  "excl_train", "excl_val_test"]),
    (caffe.TEST, 0, ["deploy"], ["data", "test_only", "level_le_1", "excl_train", "excl_val_test"]),
    (caffe.TEST, 0, ["val"], ["data", "test_only", "level_le_1", "not_deploy", "excl_train"]),
], ids=["train", "test", "level2", "stage-a", "stages-ab", "deploy", "val"])
def test_state_filtering_follows_caffe_rules(phase, level, stages, expected):
    kept = filter_net(parse_net(FILTER_NET), make_state(phase, level, stages))
    assert [lp.name for lp in kept.layer] == expected


def test_include_and_exclude_together_is_an_error():
    text = FILTER_NET + 'layer { name: "both" type: "ReLU" bottom: "data" top: "z" include { phase: TEST } ' \
                        'exclude { phase: TRAIN } }'
    with pytest.raises(caffe.PrototxtError, match='"both".*either include rules or exclude rules'):
        net_from(text)


def test_net_state_stages_are_appended_to_the_files_own():
    net = net_from('state { stage: "a" } ' + FILTER_NET, stages=["b"])
    assert "stage_ab" in net._layer_names and list(net.state.stage) == ["a", "b"]


# ------------------------------------------------------------------------------------------------- split insertion
FANOUT = """
name: "fanout"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""


def test_splits_are_inserted_after_the_last_producer_with_caffes_names():
    net = insert_splits(parse_net(FANOUT))
    names = [lp.name for lp in net.layer]
    assert names == ["data", "label_data_1_split", "ip", "relu", "ip_relu_0_split", "loss", "acc"]
    split = net.layer[4]
    assert list(split.bottom) == ["ip"] and list(split.top) == ["ip_relu_0_split_0", "ip_relu_0_split_1"]
    assert net.layer[5].bottom[0] == "ip_relu_0_split_0" and net.layer[6].bottom[0] == "ip_relu_0_split_1"
    assert net.layer[5].bottom[1] == "label_data_1_split_0" and net.layer[6].bottom[1] == "label_data_1_split_1"


def test_a_top_with_a_loss_weight_and_a_consumer_is_split_with_the_loss_on_split_0():
    text = """
    layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" loss_weight: 2
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "relu" type: "ReLU" bottom: "y" top: "z" }
    """
    net = insert_splits(parse_net(text))
    split = net.layer[2]
    assert split.name == "y_ip_0_split" and list(split.loss_weight) == [2.0, 0.0]
    assert list(net.layer[1].loss_weight) == [] and net.layer[3].bottom[0] == "y_ip_0_split_1"


def test_fan_out_gradients_add_up_through_the_split():
    net = net_from(FANOUT.replace('name: "fanout"', 'name: "fanout" force_backward: true'))
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.normal(size=(2, 3))
    net.blobs["label"].data[...] = [0, 2]
    net.forward()
    net.backward()
    split_diffs = net.blobs["ip_relu_0_split_0"].diff + net.blobs["ip_relu_0_split_1"].diff
    relu_mask = net.blobs["ip"].data > 0
    w = net.params["ip"][0].data
    assert_blob_close(net.blobs["data"].diff, (split_diffs * relu_mask) @ w, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- loss weights, outputs
def test_loss_weights_default_to_one_for_loss_layers_only():
    net = net_from(FANOUT)
    assert net.blob_loss_weights["loss"] == 1.0 and net.blob_loss_weights["acc"] == 0.0
    assert net.outputs == ["acc", "loss"]  # sorted by name, as Caffe's std::set gives them
    assert net.inputs == ["data", "label"]
    assert list(net.layer_list[net.layer_index("loss")].param.loss_weight) == [1.0]


def test_explicit_loss_weight_on_a_non_loss_layer_scales_the_loss_and_seeds_backward():
    text = """
    force_backward: true
    layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "scale" type: "Power" bottom: "x" top: "y" loss_weight: 2.5 power_param { scale: 3 } }
    """
    net = net_from(text)
    net.blobs["x"].data[...] = np.arange(6).reshape(2, 3)
    loss = net.run_forward()
    assert loss == pytest.approx(2.5 * 3 * 15)
    net.backward()
    assert_blob_close(net.blobs["x"].diff, np.full((2, 3), 7.5, np.float32))
    assert_blob_close(net.blobs["y"].diff, np.full((2, 3), 2.5, np.float32))


def test_two_top_loss_without_loss_weights_is_rejected_like_caffe():
    text = FANOUT.replace('top: "loss" }', 'top: "loss" top: "prob" }')
    with pytest.raises(caffe.LayerError, match="loss_weight must be unspecified or specified once per top"):
        net_from(text)


def test_two_top_loss_with_two_loss_weights_is_rejected_like_caffe():
    """Caffe's SoftmaxWithLoss hands a copy of its parameters to its inner Softmax (one top), whose once-per-top
    check then fails on two loss_weight values: a probability top cannot be built either way."""
    text = FANOUT.replace('top: "loss" }', 'top: "loss" top: "prob" loss_weight: 1 loss_weight: 0 }')
    with pytest.raises(caffe.LayerError, match=r'SoftmaxWithLoss layer "loss": loss_weight is given 2 times.*inner '
                                               r"Softmax.*add a separate Softmax layer"):
        net_from(text)


# ----------------------------------------------------------------------------- gradients Caffe cannot give
REFUSAL_BASE = """name: "refusals"
layer { name: "in" type: "Input" top: "x" top: "l" top: "h"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 3 } }
"""
REFUSED = {
    # name: (layers after REFUSAL_BASE, force_backward, the error's layer and reason, why)
    "softmax_label": ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "l" top: "loss" '
                      "propagate_down: true propagate_down: true }", False,
                      r'SoftmaxWithLoss layer "loss": SoftmaxWithLoss cannot backpropagate to its label input: '
                      r'bottom 1 "l"', "propagate_down is true for bottom 1"),
    "infogain_h": ('layer { name: "loss" type: "InfogainLoss" bottom: "y" bottom: "l" bottom: "h" top: "loss" }',
                   True, r'InfogainLoss layer "loss": InfogainLoss cannot backpropagate to its infogain matrix H: '
                   r'bottom 2 "h"', "force_backward: true"),
    "infogain_label": ('layer { name: "loss" type: "InfogainLoss" bottom: "y" bottom: "l" bottom: "h" top: "loss" '
                       "propagate_down: true propagate_down: true propagate_down: false }", False,
                       r"InfogainLoss cannot backpropagate to its label input", "propagate_down is true"),
    "batchreindex_index": ('layer { name: "r" type: "BatchReindex" bottom: "y" bottom: "l" top: "r" }', True,
                           r'BatchReindex layer "r": BatchReindex cannot backpropagate to its index input',
                           "force_backward"),
    "filter_selector": ('layer { name: "f" type: "Filter" bottom: "y" bottom: "l" top: "f" }', True,
                        r'Filter layer "f": Filter cannot backpropagate to its selector \(last\) input: bottom 1',
                        "force_backward"),
    "embed_indices": ('layer { name: "e" type: "Embed" bottom: "l" top: "e" '
                      "embed_param { num_output: 2 input_dim: 4 } }", True,
                      r'Embed layer "e": Embed cannot backpropagate to its integer indices', "force_backward"),
    "threshold": ('layer { name: "t" type: "Threshold" bottom: "y" top: "t" } '
                  'layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "y" top: "loss" }', False,
                  r'Threshold layer "t": Threshold has no backward in Caffe \(NOT_IMPLEMENTED\)',
                  "a layer below it has learnable parameters"),
    "argmax": ('layer { name: "a" type: "ArgMax" bottom: "y" top: "a" }', True,
               r'ArgMax layer "a": ArgMax has no backward in Caffe', "force_backward"),
    "accuracy_as_a_loss": ('layer { name: "acc" type: "Accuracy" bottom: "y" bottom: "l" top: "acc" loss_weight: 1 }',
                           False, r'Accuracy layer "acc": Accuracy has no backward in Caffe',
                           "a layer below it has learnable parameters"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_gradients_caffe_cannot_give_are_refused_at_build_time(name):
    layers, force, message, why = REFUSED[name]
    text = REFUSAL_BASE + layers + ("\nforce_backward: true" if force else "")
    with pytest.raises(caffe.LayerError, match=message) as error:
        net_from(text, caffe.TRAIN)
    assert why in str(error.value)


@pytest.mark.parametrize("layers,force", [
    ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "l" top: "loss" }', True),
    ('layer { name: "r" type: "BatchReindex" bottom: "y" bottom: "l" top: "r" } '
     'layer { name: "loss" type: "EuclideanLoss" bottom: "r" bottom: "r" top: "loss" }', False),
    ('layer { name: "t" type: "Threshold" bottom: "x" top: "t" } '
     'layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "y" top: "loss" }', False),
    ('layer { name: "acc" type: "Accuracy" bottom: "y" bottom: "l" top: "acc" }', True),
], ids=["label_untouched", "index_untouched", "threshold_on_data", "accuracy"])
def test_the_same_layers_build_when_nothing_asks_for_those_gradients(layers, force):
    """(force_backward never reaches a loss layer's label, nor Accuracy here, as its backward is never run.)"""
    net_from(REFUSAL_BASE + layers, caffe.TRAIN)
    if force:
        net_from(REFUSAL_BASE + layers + "\nforce_backward: true", caffe.TRAIN)


def test_absval_in_place_is_refused_like_caffe():
    text = REFUSAL_BASE + 'layer { name: "abs" type: "AbsVal" bottom: "y" top: "y" }'
    with pytest.raises(caffe.LayerError, match=r'AbsVal layer "abs": does not allow in-place computation'):
        net_from(text)


def test_backward_without_a_forward_reads_what_the_blobs_hold():
    """pycaffe's net.backward() straight after setting a top diff (BVLC's test_backward_start_end): the diffs are
    computed from the blobs' current data, and the tops' data is left as it is."""
    caffe.set_random_seed(5)
    net = net_from(CHAIN.replace('name: "chain"', 'name: "chain" force_backward: true') % ("", ""))
    rng = np.random.default_rng(2)
    net.blobs["h"].data[...] = rng.normal(size=(2, 4))
    y_before = net.blobs["y"].data.copy()
    dy = rng.normal(size=(2, 2)).astype(np.float32)
    net.blobs["y"].diff[...] = dy
    diffs = net.backward(start="ip2", end="ip2")
    w = net.params["ip2"][0].data
    assert_blob_close(diffs["h"], dy @ w, rtol=1e-5, atol=1e-6)
    assert_blob_close(net.params["ip2"][0].diff, dy.T @ net.blobs["h"].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.blobs["y"].data, y_before)


# ------------------------------------------------------------------------------------------- backward planning
CHAIN = """
name: "chain"
layer { name: "data" type: "Input" top: "x" top: "t" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" %s
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y" %s
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def _run_chain(text):
    caffe.set_random_seed(3)
    net = net_from(text)
    rng = np.random.default_rng(1)
    net.blobs["x"].data[...] = rng.normal(size=(2, 3))
    net.blobs["t"].data[...] = rng.normal(size=(2, 2))
    net.forward()
    net.backward()
    return net


def test_inputs_get_no_diff_without_force_backward():
    net = _run_chain(CHAIN % ("", ""))
    assert not net.blobs["x"].diff.any()
    assert net.params["ip1"][0].diff.any() and net.blobs["h"].diff.any()


def test_lr_mult_zero_everywhere_below_stops_backward_there():
    frozen = "param { lr_mult: 0 } param { lr_mult: 0 }"
    net = _run_chain(CHAIN % (frozen, ""))
    assert not net.plans[1].need_backward
    assert not net.params["ip1"][0].diff.any() and not net.blobs["h"].diff.any()
    assert net.params["ip2"][0].diff.any()


def test_propagate_down_false_stops_the_gradient_into_that_bottom():
    text = CHAIN.replace('bottom: "h" top: "y"', 'bottom: "h" top: "y" propagate_down: false') % ("", "")
    net = _run_chain(text)
    assert not net.blobs["h"].diff.any() and not net.params["ip1"][0].diff.any()
    assert net.params["ip2"][0].diff.any()


def test_force_backward_reaches_inputs_but_never_labels():
    net = _run_chain(CHAIN.replace('name: "chain"', 'name: "chain" force_backward: true') % ("", ""))
    assert net.blobs["x"].diff.any()
    # EuclideanLoss lets its second bottom have a gradient; a SoftmaxWithLoss label would not.
    assert net.blobs["t"].diff.any()
    net2 = net_from(FANOUT.replace('name: "fanout"', 'name: "fanout" force_backward: true'))
    net2.blobs["label"].data[...] = [1, 0]
    net2.forward()
    net2.backward()
    assert not net2.blobs["label"].diff.any()


def test_param_diffs_accumulate_across_backward_calls_until_cleared():
    net = _run_chain(CHAIN % ("", ""))
    once = net.params["ip2"][0].diff.copy()
    net.backward()
    assert_blob_close(net.params["ip2"][0].diff, 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not net.params["ip2"][0].diff.any()


def test_torch_path_matches_pycaffe_path():
    net = _run_chain(CHAIN % ("", ""))
    grads = {k: [b.diff.copy() for b in v] for k, v in net.params.items()}
    loss_caffe = float(net.blobs["loss"].data)
    net.clear_param_diffs()
    outs = net.run(x=torch.from_numpy(net.blobs["x"].data.copy()), t=torch.from_numpy(net.blobs["t"].data.copy()))
    net.loss(outs).backward()
    assert float(outs["loss"].detach()) == pytest.approx(loss_caffe, rel=1e-6)
    for k, v in net.params.items():
        for b, g in zip(v, grads[k]):
            assert_blob_close(b.diff, g, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------- weight sharing
SHARED = """
force_backward: true
layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya" param { name: "w" lr_mult: 2 } param { name: "bias" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "yb" param { name: "w" } param { name: "bias" decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ya" bottom: "yb" top: "loss" }
"""


def test_params_shared_by_name_are_one_tensor_and_their_gradients_add():
    net = net_from(SHARED)
    la, lb = net.layer_list[1], net.layer_list[2]
    assert la.blobs[0] is lb.blobs[0] and la.blobs[1] is lb.blobs[1]
    assert [(p.layer, p.index) for p in net.learnable] == [("ip_a", 0), ("ip_a", 1)]
    assert net.learnable[0].lr_mult == 2 and net.learnable[1].decay_mult == 0  # sharer's value adopted
    rng = np.random.default_rng(2)
    net.blobs["a"].data[...] = rng.normal(size=(2, 3))
    net.blobs["b"].data[...] = rng.normal(size=(2, 3))
    net.forward()
    net.backward()
    d = net.blobs["ya"].data - net.blobs["yb"].data  # dL/dya = d/N, dL/dyb = -d/N
    expected = (d / 2).T @ net.blobs["a"].data - (d / 2).T @ net.blobs["b"].data
    assert_blob_close(net.params["ip_a"][0].diff, expected, rtol=1e-5, atol=1e-6)


def test_sharing_params_of_different_shapes_is_an_error():
    text = SHARED.replace('inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }\n'
                          'layer { name: "loss"', 'inner_product_param { num_output: 3 } }\nlayer { name: "loss"')
    with pytest.raises(caffe.LayerError, match="cannot share param 'w'.*shape mismatch"):
        net_from(text)


# ----------------------------------------------------------------------------------------------------- reshaping
def test_shapes_follow_an_input_reshape():
    net = caffe.Net(str(pytest.importorskip("caffelike.zoo").path("lenet", "lenet.prototxt")), caffe.TEST)
    assert net.blobs["prob"].shape == [64, 10]
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    assert net.blobs["prob"].shape == [3, 10] and net.blobs["pool2"].shape == [3, 50, 4, 4]
    net.blobs["data"].data[...] = np.random.default_rng(0).random((3, 1, 28, 28))
    out = net.forward()
    assert out["prob"].shape == (3, 10) and np.allclose(out["prob"].sum(axis=1), 1, atol=1e-5)


# ------------------------------------------------------------------------------------------------- pycaffe surface
def test_pycaffe_properties():
    net = net_from(FANOUT)
    assert net._layer_names == ["data", "label_data_1_split", "ip", "relu", "ip_relu_0_split", "loss", "acc"]
    assert list(net.blobs) == ["data", "label", "label_data_1_split_0", "label_data_1_split_1", "ip",
                               "ip_relu_0_split_0", "ip_relu_0_split_1", "loss", "acc"]
    assert list(net.params) == ["ip"] and [b.shape for b in net.params["ip"]] == [[3, 3], [3]]
    assert net.layer_dict["ip"].type == "InnerProduct" and net.layers[2].blobs[0].shape == [3, 3]
    assert net.top_names["loss"] == ["loss"] and net.bottom_names["acc"] == ["ip_relu_0_split_1",
                                                                             "label_data_1_split_1"]
    blob = net.blobs["data"]
    assert (blob.num, blob.channels, blob.height, blob.width, blob.count) == (2, 3, 1, 1, 6)
    assert isinstance(net, torch.nn.Module) and len(list(net.parameters())) == 2
    assert caffe.layer_type_list() == sorted(caffe.layer_type_list())


def test_forward_and_backward_over_layer_ranges():
    net = _run_chain(CHAIN.replace('name: "chain"', 'name: "chain" force_backward: true') % ("", ""))
    h = net.blobs["h"].data.copy()
    net.blobs["h"].data[...] = 0
    out = net.forward(start="ip1", end="ip1")
    assert set(out) == {"h"} and np.allclose(out["h"], h)
    diffs = net.backward(start="ip2", end="ip2")
    assert set(diffs) == {"h"}
    full = net.backward()
    assert set(full) == {"x", "t"}


def test_forward_kwargs_must_be_the_inputs_with_the_right_shape():
    net = net_from(FANOUT)
    x, label = np.ones((2, 3), np.float32), np.zeros(2, np.float32)
    out = net.forward(data=x, label=label)
    assert set(out) == {"acc", "loss"}
    with pytest.raises(caffe.CaffeError, match="do not match the net's input"):
        net.forward(data=x)
    with pytest.raises(caffe.CaffeError, match=r"input blob 'data' has shape \(2, 3\) \(2 axes\); got an array of "
                                               r"shape \(2, 1, 3\)"):
        net.forward(data=x[:, None], label=label)


def test_legacy_constructor_and_weights_keyword(tmp_path):
    src = net_from(CHAIN % ("", ""))
    weights = tmp_path / "w.caffemodel"
    src.save(str(weights))
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(CHAIN % ("", ""))
    a = caffe.Net(str(prototxt), str(weights), caffe.TEST)
    b = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
    for net in (a, b):
        assert np.array_equal(net.params["ip1"][0].data, src.params["ip1"][0].data)
    with pytest.raises(TypeError, match="needs a phase"):
        caffe.Net(str(prototxt))


def test_share_with_makes_the_nets_use_the_same_parameters():
    train = net_from(CHAIN % ("", ""), caffe.TRAIN)
    test = net_from(CHAIN % ("", ""))
    test.share_with(train)
    train.params["ip1"][0].data[...] = 7
    assert (test.params["ip1"][0].data == 7).all()


def test_writes_into_blob_data_reach_the_next_forward():
    net = net_from(CHAIN % ("", ""))
    net.params["ip1"][0].data[...] = 0
    net.params["ip1"][1].data[...] = 1
    net.forward()
    assert (net.blobs["h"].data == 1).all()


ATTRIBUTE_NAMES = ["double", "train", "eval", "forward", "update", "to", "type", "cpu", "cuda", "half", "float",
                   "compile", "keys", "items", "values", "pop", "clear", "apply", "modules", "children",
                   "parameters", "buffers", "state_dict", "_modules", "__init__", "layer_double", "a.b", ""]


def test_layers_named_like_torch_attributes_build_and_run():
    """Any string is a valid Caffe layer name, those of nn.Module's own attributes included."""
    layers = ['layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }']
    bottom = "x"
    for i, name in enumerate(ATTRIBUTE_NAMES):
        layers.append(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "t{i}" '
                      'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }')
        bottom = f"t{i}"
    net = net_from("\n".join(layers))
    assert list(net.params) == [n for n in ATTRIBUTE_NAMES]
    net.blobs["x"].data[...] = 1
    net.forward()
    assert net.blobs[bottom].data.shape == (2, 3)
    net.double()  # the module's own methods are still its own
    assert len(net.state_dict()) == 2 * len(ATTRIBUTE_NAMES)
