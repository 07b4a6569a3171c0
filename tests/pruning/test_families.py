"""The family table is the one place a model_type is written down: the adapters, the remote code shipped
beside a checkpoint and the GGUF export all agree with it."""

from __future__ import annotations

import inspect

import pytest

from pruning.errors import UnsupportedModelError
from pruning.export.formats import EXPORTERS
from pruning.export.remote_code import modeling_fwdprune
from pruning.families import FAMILIES, family_of
from pruning.model.adapters import ADAPTERS, adapter_for

SHIPPED_CLASSES = {
    name
    for name, cls in inspect.getmembers(modeling_fwdprune, inspect.isclass)
    if name.startswith("FwdPruned") and cls.__module__ == modeling_fwdprune.__name__
}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_each_family_has_an_adapter_and_a_pruned_class_of_its_model_type(model_type: str) -> None:
    family = FAMILIES[model_type]
    assert adapter_for(model_type) is ADAPTERS[family.adapter]
    pruned = getattr(modeling_fwdprune, family.pruned_class)
    assert pruned.config_class.model_type == model_type  # the stock class it resizes is the family's


def test_the_remote_code_ships_a_class_for_each_family_and_no_other() -> None:
    assert {family.pruned_class for family in FAMILIES.values()} == SHIPPED_CLASSES


def test_gguf_writes_the_families_the_table_gives_an_architecture() -> None:
    gguf = EXPORTERS["gguf"]
    for model_type, family in FAMILIES.items():
        assert (family.gguf_arch is None) == (family.gguf_widths is None), model_type
        assert gguf.width_rule(model_type).uniform == (family.gguf_widths == "uniform")


def test_an_unsupported_model_type_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(UnsupportedModelError, match="supported model types: bert, gemma3_text, llama"):
        family_of({"model_type": "gpt2"})
    with pytest.raises(UnsupportedModelError, match="nests its text model beside a vision tower"):
        family_of({"model_type": "gemma3"})
