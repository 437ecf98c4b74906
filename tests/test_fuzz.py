"""Property-based fuzzing of Caffe's file readers and of SolverParameter values (hypothesis).

What is generated (the file corruptions are in tests/test_fuzz_files.py, the machinery in tests/fuzzing.py):
  * prototxt texts from a small grammar of real layer types, fields, numbers, strings and nesting, then mangled
    (truncated, garbage, non-UTF-8 and NUL bytes inserted), built as nets (caffelike.Net(path, TEST/TRAIN)) and
    run forward;
  * byte corruptions (flip, set, truncate, insert, delete) of valid files: a prototxt, zoo/lenet's .caffemodel,
    a .solverstate of a tiny net trained 2 iterations, a serialized Datum (raw and PNG-encoded), an LMDB of
    Datums (its values and its data.mdb file, read through a Data layer net and through caffelike.data.datum),
    and a mean.binaryproto;
  * SolverParameter values (negative, zero, huge, NaN) built into a Solver on a tiny net and stepped twice.

The property: every case either succeeds or raises one of caffelike's own errors (caffelike.errors.CaffeError and
subclasses) whose message names the file, or the layer or field at fault: never another exception type, never a
crash of the interpreter, never a hang, never a `.tmp-*` half-written file left in the folder written to.

Each case runs in a forked child process (where fork exists): the hard per-case timeout (CASE_TIMEOUT_S) kills
it, and a crash in a C library (liblmdb, zlib, protobuf's parser) is reported instead of killing the test run.
Hypothesis' own `deadline` is set as well.

Environment variables:
  CAFFELIKE_FUZZ_EXAMPLES  examples per test (default 20: the whole file runs in well under 2 minutes on 2 cores);
                           raise it for a long local fuzzing run, e.g. CAFFELIKE_FUZZ_EXAMPLES=2000.
  CAFFELIKE_FUZZ_RANDOM    set to 1 for fresh random examples; by default hypothesis is derandomized (a fixed seed
                           per test, no example database), so CI runs are reproducible.
"""
from __future__ import annotations

import re

from fuzzing import (
    FUZZ,
    _build_and_run,
    check,
    no_leftovers,
    write,
)
from hypothesis import given
from hypothesis import strategies as st

import caffelike as caffe

# ------------------------------------------------------------------------------------------- a prototxt grammar
SMALL = st.integers(-2, 6)
COUNT = st.one_of(st.integers(-1, 5), st.just(0))
BIG = st.sampled_from([2**31 - 1, 2**32 - 1, 2**32, -2**31, 10**6])
INT = st.one_of(SMALL, SMALL, BIG)
FLOAT = st.one_of(st.sampled_from(["0", "1", "-1", "0.5", "nan", "inf", "-inf", "1e40", "-1e-40", "2"]),
                  st.floats(-10, 10, width=32).map(lambda x: f"{x:g}"))
BOOL = st.sampled_from(["true", "false", "1", "0", "yes"])
AXIS = st.one_of(st.integers(-5, 5), BIG)


def _fields(**spec):
    """A strategy for `name: value` lines of the given fields (each present or not, some repeated)."""
    return st.fixed_dictionaries({}, optional={k: st.lists(v, min_size=1, max_size=2) for k, v in spec.items()})


LAYERS = {
    "Convolution": ("convolution_param", 1, 1, dict(num_output=COUNT, kernel_size=COUNT, stride=INT, pad=SMALL,
                                                    group=INT, dilation=INT, axis=AXIS, bias_term=BOOL,
                                                    kernel_h=COUNT, kernel_w=COUNT)),
    "Deconvolution": ("convolution_param", 1, 1, dict(num_output=COUNT, kernel_size=COUNT, stride=SMALL, pad=SMALL,
                                                      group=INT)),
    "Im2col": ("convolution_param", 1, 1, dict(kernel_size=COUNT, stride=INT, pad=SMALL, dilation=SMALL)),
    "Pooling": ("pooling_param", 1, 1, dict(pool=st.sampled_from(["MAX", "AVE", "STOCHASTIC", "7", "NONE"]),
                                            kernel_size=COUNT, stride=INT, pad=SMALL, global_pooling=BOOL,
                                            kernel_h=COUNT, kernel_w=COUNT, round_mode=st.sampled_from(
                                                ["CEIL", "FLOOR", "2"]))),
    "InnerProduct": ("inner_product_param", 1, 1, dict(num_output=COUNT, axis=AXIS, transpose=BOOL)),
    "LRN": ("lrn_param", 1, 1, dict(local_size=INT, alpha=FLOAT, beta=FLOAT, k=FLOAT,
                                    norm_region=st.sampled_from(["ACROSS_CHANNELS", "WITHIN_CHANNEL", "5"]))),
    "ReLU": ("relu_param", 1, 1, dict(negative_slope=FLOAT)),
    "ELU": ("elu_param", 1, 1, dict(alpha=FLOAT)),
    "Dropout": ("dropout_param", 1, 1, dict(dropout_ratio=FLOAT)),
    "Softmax": ("softmax_param", 1, 1, dict(axis=AXIS)),
    "Concat": ("concat_param", 2, 1, dict(axis=AXIS, concat_dim=INT)),
    "Slice": ("slice_param", 1, 2, dict(axis=AXIS, slice_point=INT, slice_dim=INT)),
    "Eltwise": ("eltwise_param", 2, 1, dict(operation=st.sampled_from(["SUM", "PROD", "MAX", "9"]), coeff=FLOAT,
                                            stable_prod_grad=BOOL)),
    "Power": ("power_param", 1, 1, dict(power=FLOAT, scale=FLOAT, shift=FLOAT)),
    "Exp": ("exp_param", 1, 1, dict(base=FLOAT, scale=FLOAT, shift=FLOAT)),
    "Log": ("log_param", 1, 1, dict(base=FLOAT, scale=FLOAT, shift=FLOAT)),
    "Flatten": ("flatten_param", 1, 1, dict(axis=AXIS, end_axis=AXIS)),
    "BatchNorm": ("batch_norm_param", 1, 1, dict(use_global_stats=BOOL, moving_average_fraction=FLOAT, eps=FLOAT)),
    "Scale": ("scale_param", 1, 1, dict(axis=AXIS, num_axes=SMALL, bias_term=BOOL)),
    "Bias": ("bias_param", 1, 1, dict(axis=AXIS, num_axes=SMALL)),
    "Reduction": ("reduction_param", 1, 1, dict(operation=st.sampled_from(["SUM", "ASUM", "SUMSQ", "MEAN", "8"]),
                                                axis=AXIS, coeff=FLOAT)),
    "ArgMax": ("argmax_param", 1, 1, dict(top_k=INT, axis=AXIS, out_max_val=BOOL)),
    "Tile": ("tile_param", 1, 1, dict(axis=AXIS, tiles=COUNT)),
    "Embed": ("embed_param", 1, 1, dict(num_output=COUNT, input_dim=COUNT, bias_term=BOOL)),
    "PReLU": ("prelu_param", 1, 1, dict(channel_shared=BOOL)),
    "Threshold": ("threshold_param", 1, 1, dict(threshold=FLOAT)),
    "MVN": ("mvn_param", 1, 1, dict(normalize_variance=BOOL, across_channels=BOOL, eps=FLOAT)),
    "SPP": ("spp_param", 1, 1, dict(pyramid_height=st.integers(-1, 4), pool=st.sampled_from(["MAX", "AVE"]))),
    "Crop": ("crop_param", 2, 1, dict(axis=AXIS, offset=SMALL)),
    "Clip": ("clip_param", 1, 1, dict(min=FLOAT, max=FLOAT)),
    "Swish": ("swish_param", 1, 1, dict(beta=FLOAT)),
    "Reshape": ("reshape_param", 1, 1, dict(axis=AXIS, num_axes=SMALL)),
    "Accuracy": ("accuracy_param", 2, 1, dict(top_k=INT, axis=AXIS, ignore_label=SMALL)),
    "SoftmaxWithLoss": ("loss_param", 2, 1, dict(ignore_label=SMALL, normalize=BOOL,
                                                 normalization=st.sampled_from(["FULL", "VALID", "BATCH_SIZE",
                                                                                "NONE", "4"]))),
    "EuclideanLoss": (None, 2, 1, {}),
    "Split": (None, 1, 2, {}),
    "Sigmoid": (None, 1, 1, {}),
    "TanH": (None, 1, 1, {}),
    "AbsVal": (None, 1, 1, {}),
    "BNLL": (None, 1, 1, {}),
    "Silence": (None, 1, 0, {}),
    "NoSuchLayer": (None, 1, 1, {}),
}


@st.composite
def prototxt_nets(draw):
    """(text, layer names) of a random net: an Input of random shape, then layers chained on existing blobs."""
    # Half the nets get a plain 4-D input, so that the layers' own parameter checks are reached.
    dims = draw(st.one_of(st.just([2, 3, 6, 6]), st.lists(st.integers(-1, 5), min_size=0, max_size=5)))
    label_dims = draw(st.lists(st.integers(0, 4), min_size=1, max_size=2))
    lines = ['name: "fuzz"',
             'layer { name: "fz_input" type: "Input" top: "data" top: "label" input_param { shape { '
             + " ".join(f"dim: {d}" for d in dims) + " } shape { "
             + " ".join(f"dim: {d}" for d in label_dims) + " } } }"]
    blobs, names = ["data", "label"], ["fz_input"]
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(sorted(LAYERS)))
        block, n_bottom, n_top, spec = LAYERS[kind]
        name = f"fz_{i}_{kind.lower()}"
        names.append(name)
        bottoms = [draw(st.sampled_from(blobs[-2:] + ["data", "nowhere"])) if j else blobs[-1]
                   for j in range(n_bottom + draw(st.sampled_from([0, 0, 0, 1, -1])))]
        tops = [f"b{i}_{j}" for j in range(n_top)]
        if n_top == 1 and draw(st.integers(0, 5)) == 0:
            tops = [bottoms[0]] if bottoms else tops  # in place
        parts = [f'name: "{name}" type: "{kind}"'] + [f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops]
        if draw(st.integers(0, 4)) == 0:
            parts.append(f"include {{ phase: {draw(st.sampled_from(['TRAIN', 'TEST']))} }}")
        if draw(st.integers(0, 5)) == 0:
            parts.append(f"param {{ name: \"shared\" lr_mult: {draw(FLOAT)} }}")
        if draw(st.integers(0, 6)) == 0:
            parts.append(f"loss_weight: {draw(FLOAT)}")
        if draw(st.integers(0, 6)) == 0:
            parts.append(f"propagate_down: {draw(BOOL)}")
        if block is not None and spec:
            values = draw(_fields(**spec))
            body = " ".join(f"{k}: {v}" for k, vs in values.items() for v in vs)
            if kind == "Reshape":
                body += " shape { " + " ".join(f"dim: {d}" for d in draw(st.lists(st.integers(-2, 6), max_size=4))) + " }"
            parts.append(f"{block} {{ {body} }}")
        lines.append("layer { " + " ".join(parts) + " }")
        blobs += tops
    return "\n".join(lines) + "\n", names


GARBAGE = st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(
    [b"\x00", b"\xff\xfe", b"\xc3\x28", b"}", b"{", b"layer {", b'"', b"#", b"\n", b"\xe2\x82"]))


@st.composite
def mangled(draw, text: str) -> bytes:
    data = text.encode()
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["truncate", "insert", "insert"]))
        at = draw(st.integers(0, len(data)))
        data = data[:at] if kind == "truncate" else data[:at] + draw(GARBAGE) + data[at:]
    return data


@FUZZ
@given(net=prototxt_nets(), data=st.data(), phase=st.sampled_from([caffe.TEST, caffe.TRAIN]))
def test_fuzz_prototxt_grammar(net, data, phase, case_dir):
    text, names = net
    raw = data.draw(mangled(text), label="bytes")
    folder = case_dir()
    path = write(folder, "fuzz.prototxt", raw)
    # The names as the mangled file spells them (garbage may land inside one), bare: fz_... is distinctive.
    names = names + [n.decode("utf-8", "replace") for n in re.findall(rb'name: "([^"\n]+)"', raw)]
    check(_build_and_run(path, phase), [path] + names, raw.decode("utf-8", "replace"))


# ------------------------------------------------------------------------------------------ SolverParameter values
FLOATS = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e30", "-1e-30", "1e-3", "0.9", "1"]),
                   st.floats(-2, 2, width=32).map(lambda x: f"{x:g}"))
INTS = st.one_of(st.integers(-3, 4), st.sampled_from([2**31 - 1, -2**31]))
# Fields whose huge values would make Caffe itself loop for ages (iter_size, test_iter) get only small ones.
SOLVER_FIELDS = dict(
    base_lr=FLOATS, momentum=FLOATS, momentum2=FLOATS, delta=FLOATS, gamma=FLOATS, power=FLOATS,
    weight_decay=FLOATS, clip_gradients=FLOATS, rms_decay=FLOATS,
    iter_size=st.integers(-2, 3), max_iter=INTS, stepsize=INTS, snapshot=INTS, test_interval=INTS,
    average_loss=INTS, display=INTS, stepvalue=INTS,
    test_iter=st.integers(-2, 2),
    lr_policy=st.sampled_from(["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "", "Step", "cosine"]),
    type=st.sampled_from(["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam", "sgd", "LBFGS", ""]),
    regularization_type=st.sampled_from(["L1", "L2", "L3", ""]),
)
STRINGS = {"lr_policy", "type", "regularization_type"}

# Values Caffe accepts and trains with: what must already work without the solver-level validation.
IN_RANGE = dict(
    base_lr=st.sampled_from(["0", "0.01", "1e-3"]), momentum=st.sampled_from(["0", "0.9"]),
    momentum2=st.sampled_from(["0.999", "0.5"]), delta=st.sampled_from(["1e-8", "0.1"]),
    gamma=st.sampled_from(["0.1", "1", "0.5"]), power=st.sampled_from(["0.75", "1", "2"]),
    weight_decay=st.sampled_from(["0", "5e-4"]), clip_gradients=st.sampled_from(["-1", "0.1", "10"]),
    rms_decay=st.sampled_from(["0.98", "0"]), iter_size=st.integers(1, 2), max_iter=st.integers(1, 10**6),
    stepsize=st.integers(1, 10), snapshot=st.integers(0, 3), test_interval=st.integers(1, 3),
    average_loss=st.integers(1, 5), display=st.integers(0, 2), stepvalue=st.integers(1, 5),
    test_iter=st.integers(1, 2),
    regularization_type=st.sampled_from(["L1", "L2"]),
)
VALID_NAMES = dict(lr_policy=st.sampled_from(["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]),
                   type=st.sampled_from(["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]))


def _solver_case(values: dict, net: str, folder: str):
    from caffelike.train.solver import Solver

    lines = [f'net: "{net}"', f'snapshot_prefix: "{folder}/snap"', "random_seed: 5", "snapshot_after_train: false"]
    for k, v in values.items():
        lines.append(f'{k}: "{v}"' if k in STRINGS else f"{k}: {v}")
    if "test_iter" in values and "test_interval" not in values:
        lines.append("test_interval: 1")
    path = write(folder, "solver.prototxt", "\n".join(lines).encode())

    def case():
        s = Solver(path)
        s.step(2)
        _ = s.lr

    return case, path


def _solver_check(values, tiny, case_dir):
    folder = case_dir()
    case, path = _solver_case(values, tiny[0], folder)
    check(case, [path] + sorted(values), str(values))
    no_leftovers(folder)


@FUZZ
@given(values=st.fixed_dictionaries(VALID_NAMES, optional=IN_RANGE))
def test_fuzz_solver_parameters_in_caffes_ranges(values, tiny, case_dir):
    _solver_check(values, tiny, case_dir)


@FUZZ
@given(values=st.fixed_dictionaries({}, optional=SOLVER_FIELDS))
def test_fuzz_solver_parameters_out_of_range(values, tiny, case_dir):
    _solver_check(values, tiny, case_dir)
