"""caffelike's layer library: one module per Caffe layer family, each layer registering its Caffe type name."""
from .base import Layer, is_meta, layer_class, layer_type_list, register  # noqa: F401

# Importing a family module registers its layers.
from . import common, data, data_sources, loss, neuron, norm, python, vision, loss_extra, data_output, neuron_extra, common_extra, recurrent  # noqa: F401,E402

__all__ = ["Layer", "register", "layer_class", "layer_type_list", "is_meta"]
