"""Caffe's files: prototxt text and binary (`prototxt`), the V0/V1 net and solver upgrades (`upgrade`), BlobProto
arrays (`blobproto`), .caffemodel and HDF5 weights (`weights`), and crash-safe writing (`files`).

Nothing here knows about torch graphs or training: this room reads and writes messages and arrays only.
"""
