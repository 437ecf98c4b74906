"""What every layer and net builds on, as in Caffe's common.hpp, blob.hpp and filler.hpp: the run mode, device
and seed (`runtime`), pycaffe's `Blob` over a torch tensor (`blob`), and the weight fillers (`fillers`); and
two performance settings: the memory format of 4-D activations (`layout`) and keeping freed host memory for the
next pass (`host_memory`)."""
