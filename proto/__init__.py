"""The Caffe schema (`caffe.proto`) and its generated module, served as `caffelike.proto`."""
from . import caffe_pb2  # noqa: F401

__all__ = ["caffe_pb2"]
