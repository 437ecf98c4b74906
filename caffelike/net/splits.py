"""Caffe's automatic Split insertion (insert_splits.cpp).

A top consumed by more than one bottom (or consumed once and also carrying an explicit loss weight) gets a Split
layer right after its producer, with tops `<blob>_<producer>_<top index>_split_<k>`; the consumers are renamed in
order.  The split layers and blobs are real: they appear in net.layers, net.blobs and saved caffemodels, as in
Caffe, so pycaffe scripts and fixture files see the same names.
"""
from __future__ import annotations

from collections import defaultdict

from caffelike.proto import caffe_pb2


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    layers = list(net.layer)
    producer: dict[str, tuple[int, int]] = {}          # blob -> (layer index, top index) of its latest producer
    consumers = defaultdict(int)                       # (layer index, top index) -> number of consumers
    bottom_source: dict[tuple[int, int], tuple[int, int]] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, lp in enumerate(layers):
        for j, b in enumerate(lp.bottom):
            if b not in producer:
                continue  # an unknown bottom: the net reports it with its own message
            src = producer[b]
            bottom_source[(i, j)] = src
            consumers[src] += 1
        for j, t in enumerate(lp.top):
            producer[t] = (i, j)
            if j < len(lp.loss_weight) and lp.loss_weight[j] != 0:
                loss_weight[(i, j)] = lp.loss_weight[j]

    def needs_split(src) -> bool:
        return consumers[src] + (1 if src in loss_weight else 0) > 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    next_split = defaultdict(int)  # (layer, top) -> index of the split top the next consumer takes
    for i, lp in enumerate(layers):
        new = out.layer.add()
        new.CopyFrom(lp)
        for j, b in enumerate(lp.bottom):
            src = bottom_source.get((i, j))
            if src is not None and needs_split(src):
                src_layer = layers[src[0]]
                k = next_split[src] + (1 if src in loss_weight else 0)
                next_split[src] += 1
                new.bottom[j] = split_blob_name(b, src_layer.name, src[1], k)
        for j, t in enumerate(lp.top):
            src = (i, j)
            if not needs_split(src):
                continue
            split = out.layer.add()
            split.name = split_layer_name(t, lp.name, j)
            split.type = "Split"
            split.bottom.append(t)
            n = consumers[src] + (1 if src in loss_weight else 0)
            for k in range(n):
                split.top.append(split_blob_name(t, lp.name, j, k))
            if src in loss_weight:
                # Split top 0 carries the loss.  Caffe clears ALL of the producer's loss weights here (a loss
                # layer then falls back to its default weight of 1 on top 0); we keep that quirk.
                split.loss_weight.append(loss_weight[src])
                split.loss_weight.extend([0.0] * (n - 1))
                del new.loss_weight[:]
    return out
