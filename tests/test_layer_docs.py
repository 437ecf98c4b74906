"""docs/layers.md is generated from the registry: it fails here when a layer was added or documented differently
without regenerating it (python -m caffelike.layer_docs)."""
from caffelike import layer_docs
from caffelike.layers import layer_type_list


def test_support_matrix_is_current():
    assert layer_docs.DOC.read_text() == layer_docs.render(), "docs/layers.md is stale: python -m caffelike.layer_docs"


def test_every_registered_type_has_a_row():
    text = layer_docs.DOC.read_text()
    assert all(f"\n| {name} |" in text for name in layer_type_list())
