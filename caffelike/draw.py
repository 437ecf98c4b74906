"""pycaffe's caffe.draw: a net's graph as Graphviz DOT text, or as a picture rendered by Graphviz's `dot`.

    from caffelike import draw
    from caffelike.format.prototxt import read_net
    net = read_net("zoo/lenet/lenet_train_test.prototxt")
    text = draw.net_to_dot(net, rankdir="LR", phase=caffe_pb2.TEST)      # DOT text; needs nothing installed
    png = draw.draw_net(net, "UD")                                       # bytes of a PNG; needs `dot`
    draw.draw_net_to_file(net, "lenet.svg", rankdir="TB")                # format from the extension

The picture is pycaffe's:
- each layer is a filled record labelled with its name and `(Type)`, Pooling as `(Pooling MAX)`; Convolution,
  Deconvolution and Pooling add `kernel size: k`, `stride: s`, `pad: p` (the first value of a repeated field;
  1, 1, 0 when absent for convolutions), and with display_lrm Convolution/Deconvolution/InnerProduct add
  `lr mult: w, b` unless both are 0.  The parts are joined by spaces when rankdir is TB or BT (horizontal room is
  free) and by line breaks otherwise (LR, RL, and DIGITS' 'UD');
- layer colours: Convolution/Deconvolution #FF5050, Pooling #FF9900, InnerProduct #CC33FF, others #6495ED, and
  an in-place layer (one bottom, one top, the same blob) #90EE90 whatever its type;
- each blob is a grey (#E0E0E0) octagon; bottom blob -> layer -> top blob edges, the layer's outgoing edges
  labelled `Batch <batch_size>` for Data and num_output for Convolution/Deconvolution/InnerProduct;
- phase (caffe_pb2.TRAIN or TEST; None draws every layer) keeps a layer when it has no include rule or an include
  rule of that phase, and no exclude rule of that phase.  Only the `phase` of a rule is read, as in pycaffe:
  stages and levels are ignored and a rule without a phase reads as TRAIN.
- Layers are one node per (name, type), so LeNet's two "mnist" Data layers (TRAIN and TEST) are one node with
  edges for both batch sizes, as pycaffe draws them.

Deliberate differences from pycaffe: the DOT text is written here, so pydot is not needed (get_pydot_graph still
returns a pydot graph when pydot is installed); every blob is an octagon (pycaffe leaves a blob whose last mention
is as a top, such as "loss", a plain ellipse, an accident of its node bookkeeping); record-label characters in names
(`{ } | < >`) are escaped so that they print instead of splitting the record; `.dot`, `.gv` and `.raw` files get
the DOT text itself (pycaffe writes raw text only for `.raw`); the image is written atomically; a missing `dot`
program, an unknown format or a file name without an extension is a CaffeError that says what to do.
"""
from __future__ import annotations

import os
import shutil
import subprocess

from caffelike.errors import CaffeError, PrototxtError
from caffelike.proto import caffe_pb2

__all__ = ["net_to_dot", "draw_net", "draw_net_to_file", "get_pydot_graph", "get_layer_label", "get_edge_label",
           "get_layer_lr_mult", "choose_color_by_layertype", "get_pooling_types_dict", "DOT_TEXT_EXTENSIONS"]

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

DOT_TEXT_EXTENSIONS = ("dot", "gv", "raw")  # written as DOT text, without Graphviz
_SPATIAL_TYPES = ("Convolution", "Deconvolution", "Pooling")
_LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")
_INSTALL_HINT = ("install Graphviz (e.g. `apt install graphviz`, `brew install graphviz` or `conda install "
                 "graphviz`), or name the output .dot or .raw to write the graph as DOT text without it")


# --------------------------------------------------------------------------------------------- what is drawn
def get_pooling_types_dict() -> dict[int, str]:
    """PoolingParameter.pool value -> name: {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}."""
    return {v.number: v.name for v in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values}


def _edge_text(layer) -> str:
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def get_edge_label(layer) -> str:
    """The label of a layer's edges to its tops: 'Batch 64', '20', or '""' (pycaffe's empty DOT string)."""
    return _edge_text(layer) or '""'


def get_layer_lr_mult(layer) -> tuple[float, float]:
    """(weight, bias) lr_mult of a Convolution, Deconvolution or InnerProduct layer; 1.0 where no param says."""
    if layer.type not in _LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    mults = [p.lr_mult for p in layer.param]
    if len(mults) > 2:
        raise ValueError(f"layer {layer.name!r} has {len(mults)} param entries; a {layer.type} layer has at most 2")
    mults += [1.0] * (2 - len(mults))
    return mults[0], mults[1]


def _label_parts(layer, display_lrm: bool) -> list[str]:
    parts = [layer.name]
    if layer.type == "Pooling":
        method = get_pooling_types_dict().get(layer.pooling_param.pool, str(layer.pooling_param.pool))
        parts.append(f"({layer.type} {method})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in _SPATIAL_TYPES:
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            c = layer.convolution_param
            kernel = c.kernel_size[0] if len(c.kernel_size) else 1
            stride = c.stride[0] if len(c.stride) else 1
            pad = c.pad[0] if len(c.pad) else 0
        parts += [f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]
    if display_lrm and layer.type in _LEARNING_TYPES:
        w, b = get_layer_lr_mult(layer)
        if w or b:
            parts.append(f"lr mult: {w:.1f}, {b:.1f}")
    return parts


def _separator(rankdir: str) -> str:
    # A vertical graph has room across, a horizontal one has room down: pycaffe's choice.
    return " " if rankdir in ("TB", "BT") else r"\n"


def _escape(text: str, record: bool = False) -> str:
    """Text for inside a DOT double-quoted label: backslashes and quotes escaped, and for record shapes the
    characters that would otherwise start fields or ports."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    if record:
        for ch in "{}|<>":
            text = text.replace(ch, "\\" + ch)
    return text


def get_layer_label(layer, rankdir: str, display_lrm: bool = False) -> str:
    """The layer's node label as a quoted DOT string, e.g. '"conv1\\n(Convolution)\\nkernel size: 5\\n..."'."""
    return '"' + _separator(rankdir).join(_escape(p, record=True) for p in _label_parts(layer, display_lrm)) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return LAYER_STYLE_DEFAULT["fillcolor"]


def _in_phase(layer, phase) -> bool:
    if phase is None:
        return True
    if len(layer.include) and len(layer.exclude):
        raise PrototxtError(f'layer "{layer.name}" has both include and exclude rules; Caffe takes one or the '
                            "other")
    included = len(layer.include) == 0 or any(rule.phase == phase for rule in layer.include)
    return included and all(rule.phase != phase for rule in layer.exclude)


def _check_phase(phase):
    if phase is not None and phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise CaffeError(f"phase must be caffe.TRAIN, caffe.TEST or None (every layer), got {phase!r}")


def _attrs(style: dict) -> str:
    return ", ".join(f'{k}="{v}"' for k, v in style.items())


def net_to_dot(net_param, rankdir: str = "LR", phase=None, display_lrm: bool = False,
               label_edges: bool = True) -> str:
    """The Graphviz DOT text of `net_param` (a NetParameter), drawn as pycaffe's get_pydot_graph draws it."""
    _check_phase(phase)
    nodes: dict = {}  # key -> (DOT id, style); a later layer of the same key restyles the node in place
    edges: list[tuple] = []  # (source key, target key, label)
    for layer in net_param.layer:
        if not _in_phase(layer, phase):
            continue
        layer_key = ("layer", layer.name, layer.type)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = dict(NEURON_LAYER_STYLE) if in_place else dict(LAYER_STYLE_DEFAULT,
                                                                 fillcolor=choose_color_by_layertype(layer.type))
        nodes[layer_key] = (get_layer_label(layer, rankdir, display_lrm), style)
        for blob in layer.bottom:
            nodes[("blob", blob)] = (f'"{_escape(blob)}"', BLOB_STYLE)
            edges.append((("blob", blob), layer_key, ""))
        label = _edge_text(layer) if label_edges else ""
        for blob in layer.top:
            nodes[("blob", blob)] = (f'"{_escape(blob)}"', BLOB_STYLE)
            edges.append((layer_key, ("blob", blob), label))
    lines = [f'digraph "{_escape(net_param.name or "Net")}" {{', f'\trankdir="{_escape(rankdir)}";']
    lines += [f"\t{node_id} [{_attrs(style)}];" for node_id, style in nodes.values()]
    for src, dst, label in edges:
        attrs = f' [label="{_escape(label)}"]' if label else ""
        lines.append(f"\t{nodes[src][0]} -> {nodes[dst][0]}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def get_pydot_graph(caffe_net, rankdir: str, label_edges: bool = True, phase=None, display_lrm: bool = False):
    """pycaffe's pydot graph of the net, for scripts that use pydot's API; needs pydot (or pydotplus)."""
    try:
        import pydotplus as pydot
    except ImportError:
        try:
            import pydot
        except ImportError:
            raise CaffeError("get_pydot_graph needs pydot (pip install pydot); caffelike.draw.net_to_dot gives "
                             "the same graph as DOT text without it") from None
    graphs = pydot.graph_from_dot_data(net_to_dot(caffe_net, rankdir, phase, display_lrm, label_edges))
    return graphs[0] if isinstance(graphs, list) else graphs


# ------------------------------------------------------------------------------------------------- rendering
def _as_net_param(caffe_net):
    if isinstance(caffe_net, (str, os.PathLike)):
        from caffelike.format.prototxt import read_net

        return read_net(os.fspath(caffe_net))
    if not isinstance(caffe_net, caffe_pb2.NetParameter):
        raise CaffeError(f"draw needs a caffe_pb2.NetParameter (or a prototxt path), got {type(caffe_net).__name__}")
    return caffe_net


def render_dot(text: str, ext: str) -> bytes:
    """Run Graphviz's `dot -T<ext>` on DOT text and return its output."""
    dot = shutil.which("dot")
    if dot is None:
        raise CaffeError(f"drawing a .{ext} file needs Graphviz's `dot` program, which is not on PATH: "
                         f"{_INSTALL_HINT}")
    try:
        done = subprocess.run([dot, f"-T{ext}"], input=text.encode("utf-8"), capture_output=True, check=False)
    except OSError as e:
        raise CaffeError(f"could not run {dot}: {e}") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()
        raise CaffeError(f"Graphviz `dot -T{ext}` failed (exit status {done.returncode}): {detail}")
    return done.stdout


def draw_net(caffe_net, rankdir: str, ext: str = "png", phase=None, display_lrm: bool = False) -> bytes:
    """The drawing of `caffe_net` in Graphviz output format `ext` ('png', 'svg', 'pdf', ...); 'dot', 'gv' and
    'raw' give the DOT text itself."""
    net = _as_net_param(caffe_net)
    ext = ext.lower().lstrip(".")
    text = net_to_dot(net, rankdir, phase, display_lrm)
    if ext in DOT_TEXT_EXTENSIONS:
        return text.encode("utf-8")
    return render_dot(text, ext)


def draw_net_to_file(caffe_net, filename: str, rankdir: str = "LR", phase=None, display_lrm: bool = False) -> None:
    """Draw `caffe_net` into `filename`, in the format its extension names (.png, .svg, .pdf, ...; .dot, .gv or
    .raw for DOT text you can feed to Graphviz yourself).  The file is replaced atomically."""
    from caffelike.format.files import atomic_write

    filename = os.fspath(filename)
    base = os.path.basename(filename)
    if "." not in base.strip("."):
        raise CaffeError(f"cannot tell which picture format to write from the name {filename!r}: end it with "
                         ".png, .svg, .pdf, ..., or .dot/.raw for DOT text")
    ext = base.rsplit(".", 1)[1]
    atomic_write(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))
