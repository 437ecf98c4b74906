"""caffelike's layer library: one module per Caffe layer family, each layer registering its Caffe type name."""
# Importing a family module registers its layers.
from . import (  # noqa: F401,E402
    common,
    common_extra,
    data,
    data_output,
    data_sources,
    loss,
    loss_extra,
    neuron,
    neuron_extra,
    norm,
    pooling,
    python,
    recurrent,
    torch_module,
    vision,
    window_data,
)
from .base import Layer, is_meta, layer_class, layer_type_list, register  # noqa: F401

__all__ = ["Layer", "register", "layer_class", "layer_type_list", "is_meta"]
