"""docs/layers.md is generated from the registry: it fails here when a layer was added or documented differently
without regenerating it (python scripts/layer_docs.py)."""
import pathlib
import runpy

from caffelike.layers import layer_type_list

layer_docs = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "scripts" / "layer_docs.py"))


def test_support_matrix_is_current():
    assert layer_docs["DOC"].read_text() == layer_docs["render"](), "docs/layers.md is stale: python scripts/layer_docs.py"


def test_every_registered_type_has_a_row():
    text = layer_docs["DOC"].read_text()
    assert all(f"\n| {name} |" in text for name in layer_type_list())
