"""Family adapters, looked up by the checkpoint's `model_type` (an allowlist, never a class name)."""

from __future__ import annotations

from pruning.errors import UnsupportedModelError
from pruning.model.adapters.base import FamilyAdapter, LayerShape, UnitKind
from pruning.model.adapters.bert import BertAdapter
from pruning.model.adapters.gemma import Gemma3Adapter
from pruning.model.adapters.llama import LlamaAdapter, MistralAdapter
from pruning.model.adapters.moe import MixtralAdapter, Qwen3MoeAdapter
from pruning.model.adapters.phi3 import Phi3Adapter
from pruning.model.adapters.qwen import Qwen2Adapter, Qwen3Adapter
from pruning.spec import SUPPORTED_MODEL_TYPES

_ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.name: adapter
    for adapter in (
        LlamaAdapter(),
        MistralAdapter(),
        Qwen2Adapter(),
        Qwen3Adapter(),
        BertAdapter(),
        Gemma3Adapter(),
        Phi3Adapter(),
        Qwen3MoeAdapter(),
        MixtralAdapter(),
    )
}


def adapter_for(model_type: str) -> FamilyAdapter:
    family = SUPPORTED_MODEL_TYPES.get(model_type)
    if family is None or family not in _ADAPTERS:
        supported = ", ".join(sorted(t for t, f in SUPPORTED_MODEL_TYPES.items() if f in _ADAPTERS))
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported model types: {supported}"
        )
    return _ADAPTERS[family]


__all__ = ["FamilyAdapter", "LayerShape", "UnitKind", "adapter_for"]
