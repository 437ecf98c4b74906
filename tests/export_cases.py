"""Small nets for the per-layer export tests (tests/test_export_layers.py): the places where Caffe's numbers differ
from other frameworks', one net each, merged into one graph so that one export covers them all.

CASES: name -> (prototxt layers reading the case's inputs, {input: (shape, kind)}, expected top shapes derived by
hand from Caffe's rules, or {}).  Input kinds: "normal", "positive" (for Power/Log bases), "ties" (few distinct
values), "cont" (0/1 sequence flags, 0 at t = 0), ("index", n) (integers in [0, n)).
"""
from __future__ import annotations

import numpy as np
import torch
from caffelike.proto import caffe_pb2
from google.protobuf import text_format

G = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 }'
X = {"x": ((2, 3, 9, 9), "normal")}


def _pool(spec: str, shape=(2, 3, 9, 9)):
    return (f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {spec} }} }}',
            {"x": (shape, "normal")})


CASES = {
    # Pooling: ceil-mode partial windows (GoogLeNet's 112 -> 56), Caffe's clip of a window starting in the right
    # padding, AVE divisors that count padding but not the ceil overhang, a pad torch refuses (> kernel / 2).
    "pool_max_ceil_partial": (*_pool("pool: MAX kernel_size: 3 stride: 2", (1, 2, 10, 10)), {"y": (1, 2, 5, 5)}),
    "pool_max_pad_clip": (*_pool("pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5)), {"y": (1, 2, 3, 3)}),
    "pool_ave_pad_clip": (*_pool("pool: AVE kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5)), {"y": (1, 2, 3, 3)}),
    "pool_ave_ceil_partial": (*_pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 3, 8, 8)),
                              {"y": (2, 3, 5, 5)}),
    "pool_ave_big_pad": (*_pool("pool: AVE kernel_size: 3 stride: 1 pad: 2", (1, 2, 4, 4)), {"y": (1, 2, 6, 6)}),
    "pool_max_big_pad": (*_pool("pool: MAX kernel_size: 3 stride: 2 pad: 2", (1, 2, 6, 6)), {"y": (1, 2, 4, 4)}),
    "pool_max_same_pad": (*_pool("pool: MAX kernel_size: 3 stride: 1 pad: 1", (1, 2, 6, 6)), {"y": (1, 2, 6, 6)}),
    "pool_ave_same_pad": (*_pool("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 7)), {"y": (1, 2, 4, 4)}),
    "pool_max_rect_floor": (*_pool("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 round_mode: FLOOR",
                                   (1, 2, 10, 11)), {"y": (1, 2, 4, 4)}),
    "pool_ave_global": (*_pool("pool: AVE global_pooling: true", (2, 3, 5, 7)), {"y": (2, 3, 1, 1)}),
    "pool_max_global": (*_pool("pool: MAX global_pooling: true", (2, 3, 5, 7)), {"y": (2, 3, 1, 1)}),
    "pool_stochastic_test": (*_pool("pool: STOCHASTIC kernel_size: 3 stride: 2", (1, 2, 8, 8)), {"y": (1, 2, 4, 4)}),
    "pool_max_mask": (('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" top: "mask" '
                      'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }'), {"x": ((1, 2, 7, 7), "normal")},
                      {"y": (1, 2, 4, 4), "mask": (1, 2, 4, 4)}),
    "spp": ('layer { name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 pool: AVE } }',
            {"x": ((2, 3, 7, 9), "normal")}, {"y": (2, 3 * 21)}),
    # LRN across channels (alpha / n, k) and within a channel (n x n windows, padding counted)
    "lrn_across": (('layer { name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.3 '
                   'beta: 0.75 k: 2 } }'), {"x": ((2, 7, 4, 4), "normal")}, {}),
    "lrn_within": (('layer { name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.5 '
                   'beta: 0.6 norm_region: WITHIN_CHANNEL } }'), {"x": ((2, 3, 5, 5), "normal")}, {}),
    # Blob plumbing
    "crop_offsets": (('layer { name: "crop" type: "Crop" bottom: "x" bottom: "ref" top: "y" '
                     'crop_param { axis: 1 offset: 1 offset: 2 offset: 3 } }'),
                     {"x": ((2, 5, 8, 9), "normal"), "ref": ((2, 3, 4, 5), "normal")}, {"y": (2, 3, 4, 5)}),
    "slice_points": (('layer { name: "slice" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
                     'slice_param { axis: -1 slice_point: 2 slice_point: 7 } }'), X,
                     {"a": (2, 3, 9, 2), "b": (2, 3, 9, 5), "c": (2, 3, 9, 2)}),
    "concat_axis2": ('layer { name: "cat" type: "Concat" bottom: "x" bottom: "z" top: "y" concat_param { axis: 2 } }',
                     {"x": ((2, 3, 4, 5), "normal"), "z": ((2, 3, 2, 5), "normal")}, {"y": (2, 3, 6, 5)}),
    "eltwise_coeff": (('layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "z" bottom: "w" top: "y" '
                      'eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 3 } }'),
                      {n: ((2, 3, 4, 4), "normal") for n in "xzw"}, {}),
    "eltwise_max3": (('layer { name: "max" type: "Eltwise" bottom: "x" bottom: "z" bottom: "w" top: "y" '
                     'eltwise_param { operation: MAX } }'), {n: ((2, 3, 4, 4), "ties") for n in "xzw"}, {}),
    "eltwise_prod": (('layer { name: "prod" type: "Eltwise" bottom: "x" bottom: "z" top: "y" '
                     'eltwise_param { operation: PROD } }'), {n: ((2, 3, 4, 4), "normal") for n in "xz"}, {}),
    "reshape_0_minus1": (('layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 '
                         'dim: -1 dim: 3 } axis: 1 num_axes: 2 } }'), {"x": ((2, 4, 6, 5), "normal")},
                         {"y": (2, 4, 2, 3, 5)}),
    "flatten_axes": ('layer { name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 } }',
                     {"x": ((2, 3, 4, 5), "normal")}, {"y": (2, 12, 5)}),
    "tile": ('layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 } }',
             {"x": ((2, 2, 3), "normal")}, {"y": (2, 6, 3)}),
    "split_silence": (('layer { name: "s" type: "Split" bottom: "x" top: "y" top: "gone" } '
                      'layer { name: "quiet" type: "Silence" bottom: "gone" }'), {"x": ((2, 3), "normal")}, {}),
    # Neurons with their parameters
    "prelu_shared": (('layer { name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true '
                     'filler { type: "constant" value: 0.3 } } }'), X, {}),
    "prelu_channels": (('layer { name: "p" type: "PReLU" bottom: "x" top: "y" '
                       'prelu_param { filler { type: "gaussian" std: 0.5 } } }'), X, {}),
    "power": (('layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 2.5 scale: 0.7 shift: 0.2 }'
              ' }'), {"x": ((2, 3, 4), "positive")}, {}),
    "power_constant": (('layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 0.5 scale: 0 '
                       'shift: -2 } }'), X, {}),
    "power_square": ('layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { power: 2 shift: -1 } }',
                     X, {}),
    "exp_base": ('layer { name: "e" type: "Exp" bottom: "x" top: "y" exp_param { base: 2 scale: 0.5 shift: 1 } }',
                 X, {}),
    "log_base": ('layer { name: "l" type: "Log" bottom: "x" top: "y" log_param { base: 10 scale: 2 shift: 0.5 } }',
                 {"x": ((2, 3, 4), "positive")}, {}),
    "relu_slope": ('layer { name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { negative_slope: 0.1 } }', X, {}),
    "elu_alpha": ('layer { name: "e" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.7 } }', X, {}),
    "swish_beta": ('layer { name: "s" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1.5 } }', X, {}),
    "clip": ('layer { name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -0.5 max: 0.8 } }', X, {}),
    "threshold": ('layer { name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.2 } }',
                  X, {}),
    "in_place_chain": (('layer { name: "a" type: "AbsVal" bottom: "x" top: "a" } '
                       'layer { name: "b" type: "BNLL" bottom: "a" top: "a" } '
                       'layer { name: "s" type: "Sigmoid" bottom: "a" top: "a" } '
                       'layer { name: "t" type: "TanH" bottom: "a" top: "y" } '
                       'layer { name: "d" type: "Dropout" bottom: "y" top: "y" dropout_param { dropout_ratio: 0.3 } }'),
                       X, {}),
    # Reductions and normalisations
    "argmax_ties_topk": (('layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 3 '
                         'out_max_val: true } }'), {"x": ((3, 2, 2, 2), "ties")}, {"y": (3, 2, 3, 1)}),
    "argmax_axis": ('layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 top_k: 2 } }',
                    {"x": ((2, 5, 3), "ties")}, {"y": (2, 2, 3)}),
    "reduction_sumsq": (('layer { name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: SUMSQ '
                        'axis: 1 coeff: 0.5 } }'), X, {"y": (2,)}),
    "reduction_asum": (('layer { name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: ASUM '
                       'axis: 2 } }'), X, {"y": (2, 3)}),
    "reduction_mean": (('layer { name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { operation: MEAN '
                       'axis: -1 coeff: -2 } }'), X, {"y": (2, 3, 9)}),
    "mvn_across": ('layer { name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true eps: 0.01 } }',
                   X, {}),
    "mvn_mean_only": ('layer { name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { normalize_variance: false } }',
                      {"x": ((2, 3, 4), "normal")}, {"y": (2, 3, 4, 1)}),
    "softmax_axis": ('layer { name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 2 } }', X, {}),
    # BatchNorm: the moving-average factor folded (blobs set in test_export_layers), batch statistics in TRAIN
    "batchnorm_factor": (('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { eps: 0.001 } '
                         '} layer { name: "sc" type: "Scale" bottom: "y" top: "y" scale_param { bias_term: true '
                         'filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }'), X, {}),
    "batchnorm_batch_stats": ('layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" phase: TRAIN }', X, {}),
    "scale_two_bottoms": (('layer { name: "s" type: "Scale" bottom: "x" bottom: "z" top: "y" scale_param { axis: 1 '
                          'bias_term: true bias_filler { type: "gaussian" std: 1 } } }'),
                          {"x": ((2, 3, 4, 5), "normal"), "z": ((3, 4), "normal")}, {}),
    "bias_axes": (('layer { name: "b" type: "Bias" bottom: "x" top: "y" bias_param { axis: 2 num_axes: 2 '
                  'filler { type: "gaussian" std: 1 } } }'), X, {}),
    # Learned layers with Caffe's geometry
    "conv_truncated": ((f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                       f'num_output: 4 kernel_size: 4 stride: 3 pad: 1 {G} }} }}'), {"x": ((1, 3, 8, 8), "normal")},
                       {"y": (1, 4, 3, 3)}),
    "conv_group_dilation": ((f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                            f'num_output: 6 kernel_size: 3 dilation: 2 group: 3 pad: 1 {G} }} }}'),
                            {"x": ((2, 3, 9, 9), "normal")}, {"y": (2, 6, 7, 7)}),
    "conv_1d_axis": ((f'layer {{ name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ '
                     f'num_output: 2 kernel_size: 3 axis: 2 {G} }} }}'), {"x": ((2, 3, 4, 7), "normal")},
                     {"y": (2, 3, 2, 5)}),
    "deconv_stride": ((f'layer {{ name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ '
                      f'num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 {G} }} }}'),
                      {"x": ((1, 2, 5, 5), "normal")}, {"y": (1, 4, 10, 10)}),
    "innerproduct_axis_transpose": ((f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                                    f'inner_product_param {{ num_output: 5 axis: 2 transpose: true {G} }} }}'),
                                    X, {"y": (2, 3, 5)}),
    "im2col": (('layer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 stride: 2 '
               'pad: 1 } }'), {"x": ((1, 2, 5, 5), "normal")}, {"y": (1, 18, 3, 3)}),
    # Index layers
    "embed": ((f'layer {{ name: "e" type: "Embed" bottom: "idx" top: "y" embed_param {{ num_output: 4 input_dim: 7 '
              f'{G} }} }}'), {"idx": ((2, 5), ("index", 7))}, {"y": (2, 5, 4)}),
    "batch_reindex": ('layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "idx" top: "y" }',
                      {"x": ((4, 3), "normal"), "idx": ((6,), ("index", 4))}, {"y": (6, 3)}),
    "parameter": (('layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } } '
                  'layer { name: "add" type: "Eltwise" bottom: "x" bottom: "p" top: "y" }'),
                  {"x": ((2, 3), "normal")}, {}),
    # Recurrent layers from zero state and with exposed states
    "lstm_exposed": ((f'layer {{ name: "l" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0" top: "y" '
                     f'top: "hT" top: "cT" recurrent_param {{ num_output: 3 expose_hidden: true {G} }} }}'),
                     {"x": ((4, 2, 5), "normal"), "cont": ((4, 2), "cont"), "h0": ((1, 2, 3), "normal"),
                      "c0": ((1, 2, 3), "normal")}, {"y": (4, 2, 3), "hT": (1, 2, 3), "cT": (1, 2, 3)}),
    "rnn_static": ((f'layer {{ name: "r" type: "RNN" bottom: "x" bottom: "cont" bottom: "s" top: "y" '
                   f'recurrent_param {{ num_output: 3 {G} }} }}'),
                   {"x": ((3, 2, 4), "normal"), "cont": ((3, 2), "cont"), "s": ((2, 5), "normal")}, {"y": (3, 2, 3)}),
    "lstm_unit": ('layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "gates" bottom: "cont" top: "cy" top: "y" }',
                  {"c": ((1, 3, 2), "normal"), "gates": ((1, 3, 8), "normal"), "cont": ((1, 3), "cont")}, {}),
}


def case_inputs(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """The case's input arrays, drawn per kind (prefixed with the case name as in the merged net)."""
    rng = np.random.default_rng(seed)
    out = {}
    for blob, (shape, kind) in CASES[name][1].items():
        if kind == "normal":
            a = rng.standard_normal(shape)
        elif kind == "positive":
            a = rng.uniform(0.2, 2.0, shape)
        elif kind == "ties":
            a = rng.integers(-2, 3, shape).astype(float)
        elif kind == "cont":
            a = (rng.uniform(size=shape) > 0.3).astype(float)
            a[0] = 0
        else:
            a = rng.integers(0, kind[1], shape).astype(float)
        out[f"{name}/{blob}"] = a.astype(np.float32)
    return out


def prefixed(param: caffe_pb2.NetParameter, prefix: str, phase=None) -> list[caffe_pb2.LayerParameter]:
    """The layers of `param` with every layer, blob and shared-param name under `prefix/`."""
    out = []
    for lp in param.layer:
        new = caffe_pb2.LayerParameter()
        new.CopyFrom(lp)
        new.name = f"{prefix}/{lp.name}"
        new.bottom[:] = [f"{prefix}/{b}" for b in lp.bottom]
        new.top[:] = [f"{prefix}/{t}" for t in lp.top]
        for spec in new.param:
            if spec.name:
                spec.name = f"{prefix}/{spec.name}"
        if phase is not None and not new.HasField("phase"):
            new.phase = phase
        out.append(new)
    return out


def case_net() -> caffe_pb2.NetParameter:
    """Every CASES net in one NetParameter, each under its name (inputs as Input layers)."""
    merged = caffe_pb2.NetParameter(name="export_cases")
    for name, (layers, inputs, _) in CASES.items():
        param = caffe_pb2.NetParameter()
        for blob, (shape, _) in inputs.items():
            param.layer.add(name=blob, type="Input", top=[blob]).input_param.shape.add(dim=list(shape))
        text_format.Merge(layers, param)
        merged.layer.extend(prefixed(param, name))
    return merged


def set_batchnorm_blobs(net, layer_name: str, seed: int = 3) -> None:
    """Running statistics stored as Caffe stores them: accumulators times the moving-average factor s."""
    gen = torch.Generator().manual_seed(seed)
    layer = net.layer_list[net.layer_index(layer_name)]
    channels = layer.blobs[0].numel()
    s = 999.982  # what 0.999 moving-average fractions converge to in a trained caffemodel
    with torch.no_grad():
        layer.blobs[0].copy_(torch.randn(channels, generator=gen) * 0.5 * s)
        layer.blobs[1].copy_(torch.empty(channels).uniform_(0.3, 2.0, generator=gen) * s)
        layer.blobs[2].fill_(s)
