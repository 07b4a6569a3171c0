"""Family adapters by name: the family table (`pruning.families`) maps a checkpoint's `model_type` to its
adapter's name, this registry the name to the adapter (an allowlist, never a class name)."""

from __future__ import annotations

from pruning.errors import UnsupportedModelError
from pruning.families import FAMILIES
from pruning.model.adapters.base import FamilyAdapter, LayerShape, UnitKind
from pruning.model.adapters.bert import BertAdapter
from pruning.model.adapters.gemma import Gemma3Adapter
from pruning.model.adapters.llama import LlamaAdapter, MistralAdapter
from pruning.model.adapters.moe import MixtralAdapter, Qwen3MoeAdapter
from pruning.model.adapters.phi3 import Phi3Adapter
from pruning.model.adapters.qwen import Qwen2Adapter, Qwen3Adapter

ADAPTERS: dict[str, FamilyAdapter] = {}


def register_adapter(adapter: FamilyAdapter) -> FamilyAdapter:
    """Make `adapter` the one the family table's entries naming `adapter.name` are read with."""
    ADAPTERS[adapter.name] = adapter
    return adapter


for _adapter in (
    LlamaAdapter(),
    MistralAdapter(),
    Qwen2Adapter(),
    Qwen3Adapter(),
    BertAdapter(),
    Gemma3Adapter(),
    Phi3Adapter(),
    Qwen3MoeAdapter(),
    MixtralAdapter(),
):
    register_adapter(_adapter)


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter of the family `model_type` belongs to."""
    family = FAMILIES.get(model_type)
    if family is None or family.adapter not in ADAPTERS:
        supported = ", ".join(sorted(t for t, f in FAMILIES.items() if f.adapter in ADAPTERS))
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported model types: {supported}"
        )
    return ADAPTERS[family.adapter]


__all__ = ["ADAPTERS", "FamilyAdapter", "LayerShape", "UnitKind", "adapter_for", "register_adapter"]
