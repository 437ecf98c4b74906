"""The schema: the generated module matches caffe.proto, and field numbers and defaults are BVLC Caffe's."""
import hashlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest
from caffelike.proto import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_module_is_from_the_current_schema():
    digest = hashlib.sha256((ROOT / "proto" / "caffe.proto").read_bytes()).hexdigest()
    header = (ROOT / "proto" / "caffe_pb2.py").read_text().splitlines()[0]
    assert digest in header, "proto/caffe_pb2.py is stale: run python scripts/generate_proto.py"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools (the dev extra)")
def test_regenerating_gives_the_committed_module():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


# LayerParameter field numbers, from BVLC caffe.proto at 9b89154.
LAYER_FIELDS = dict(
    name=1, type=2, bottom=3, top=4, loss_weight=5, param=6, blobs=7, include=8, exclude=9, phase=10,
    propagate_down=11, transform_param=100, loss_param=101, accuracy_param=102, argmax_param=103,
    concat_param=104, contrastive_loss_param=105, convolution_param=106, data_param=107, dropout_param=108,
    dummy_data_param=109, eltwise_param=110, exp_param=111, hdf5_data_param=112, hdf5_output_param=113,
    hinge_loss_param=114, image_data_param=115, infogain_loss_param=116, inner_product_param=117, lrn_param=118,
    memory_data_param=119, mvn_param=120, pooling_param=121, power_param=122, relu_param=123, sigmoid_param=124,
    softmax_param=125, slice_param=126, tanh_param=127, threshold_param=128, window_data_param=129,
    python_param=130, prelu_param=131, spp_param=132, reshape_param=133, log_param=134, flatten_param=135,
    reduction_param=136, embed_param=137, tile_param=138, batch_norm_param=139, elu_param=140, bias_param=141,
    scale_param=142, input_param=143, crop_param=144, parameter_param=145, recurrent_param=146,
    swish_param=147, clip_param=148)


@pytest.mark.parametrize("message,fields", [
    ("LayerParameter", LAYER_FIELDS),
    ("NetParameter", dict(name=1, layers=2, input=3, input_dim=4, force_backward=5, state=6, debug_info=7,
                          input_shape=8, layer=100)),
    ("BlobProto", dict(num=1, channels=2, height=3, width=4, data=5, diff=6, shape=7, double_data=8,
                       double_diff=9)),
    ("Datum", dict(channels=1, height=2, width=3, data=4, label=5, float_data=6, encoded=7)),
    ("SolverParameter", dict(layer_wise_reduce=41, weights=42, type=40, momentum2=39, rms_decay=38,
                             snapshot_format=37, iter_size=36, clip_gradients=35, stepvalue=34,
                             average_loss=33, test_initialization=32, delta=31, solver_type=30)),
    ("V1LayerParameter", dict(param=1001, blob_share_mode=1002, blobs_lr=7, weight_decay=8, loss_weight=35,
                              type=5, blobs=6, layer=1)),
    ("PoolingParameter", dict(pool=1, kernel_size=2, stride=3, pad=4, round_mode=13, global_pooling=12)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_field_numbers(message, fields):
    descriptor = getattr(caffe_pb2, message).DESCRIPTOR
    assert {name: descriptor.fields_by_name[name].number for name in fields} == fields


def test_defaults_that_caffe_semantics_depend_on():
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.ParamSpec().lr_mult == 1 and caffe_pb2.ParamSpec().decay_mult == 1
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL == 0
    assert caffe_pb2.LossParameter().normalization == caffe_pb2.LossParameter.VALID
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
    s = caffe_pb2.SolverParameter()
    assert (s.type, s.regularization_type, s.average_loss, s.iter_size, s.random_seed) == ("SGD", "L2", 1, 1, -1)
    assert s.solver_mode == caffe_pb2.SolverParameter.GPU and s.snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert caffe_pb2.BatchNormParameter().eps == pytest.approx(1e-5)
    assert caffe_pb2.LRNParameter().beta == 0.75 and caffe_pb2.ConcatParameter().axis == 1
    assert caffe_pb2.CropParameter().axis == 2 and caffe_pb2.DataParameter().prefetch == 4
