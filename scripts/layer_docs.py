"""docs/layers.md, the support matrix, written from the layer registry (type, family, blob counts, parameters
read, and each layer's own documentation).  `python scripts/layer_docs.py` rewrites it; a test fails when the
committed file is stale."""
from __future__ import annotations

import inspect
import pathlib
import sys

from caffelike.layers import layer_class, layer_type_list

from caffelike.export import support

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "layers.md"


def _count(lo, hi, exact) -> str:
    if exact is not None:
        return str(exact)
    if lo is None and hi is None:
        return "any"
    if hi is None:
        return f">= {lo}"
    if lo is None:
        return f"<= {hi}"
    return f"{lo}-{hi}"


def _params(name: str) -> str:
    """The type's own `*_param` message (as NetSpec finds it), plus the shared ones Caffe's base classes read."""
    from caffelike.net_spec import _param_names

    fields = [f"{_param_names[name]}_param"] if name in _param_names else []
    if name == "SoftmaxWithLoss":
        fields.append("softmax_param")  # the axis of its softmax
    cls = layer_class(name)
    if cls.is_loss:
        fields.append("loss_param")
    if name in ("Data", "ImageData", "MemoryData", "WindowData"):
        fields.append("transform_param")
    return ", ".join(f"`{f}`" for f in fields) or "-"

EXTENSIONS = ("TorchModule", "TorchLoss")  # caffelike's own types, beyond BVLC's


def render() -> str:
    lines = ["# Layer support matrix", "",
             "Generated from caffelike's layer registry by `python scripts/layer_docs.py`; do not edit by hand.",
             (f"{len(layer_type_list())} layer types are registered: BVLC Caffe's 61 and caffelike's "
             f"{' and '.join(EXTENSIONS)} (docs/torch_models.md)."), "",
             ("The ONNX column is `caffelike.export.support`, which tests/test_export_layers.py checks type by type: "
             "\"export path\" marks a type with an export-specific forward (caffelike/export/rules.py), \"input\" a "
             "data layer whose tops become the exported graph's inputs (docs/export.md)."), "",
             "| type | family | bottoms | tops | parameters read | exports to ONNX | notes |",
             "|---|---|---|---|---|---|---|"]
    for name in layer_type_list():
        cls = layer_class(name)
        family = cls.__module__.rsplit(".", 1)[-1]
        doc = " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())
        doc = doc.replace("|", "\\|")
        lines.append(f"| {name} | {family} | {_count(cls.min_bottoms, cls.max_bottoms, cls.exact_bottoms)} | "
                     f"{_count(cls.min_tops, cls.max_tops, cls.exact_tops)} | {_params(name)} | {support(name)} | "
                     f"{doc} |")
    details = ["", "## Details", ""]
    for name in layer_type_list():
        details += [f"### {name}", "", inspect.getdoc(layer_class(name)) or "(no documentation)", ""]
    return "\n".join(lines + details).rstrip() + "\n"


def main() -> int:
    if "--check" in sys.argv:
        ok = DOC.exists() and DOC.read_text() == render()
        if not ok:
            print(f"{DOC} is stale: run python scripts/layer_docs.py", file=sys.stderr)
        return 0 if ok else 1
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
