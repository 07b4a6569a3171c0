"""The model families fwdprune prunes: one entry per config.json `model_type`, torch-free.

Each entry says which family adapter (`pruning.model.adapters`) reads the model, which class of
`pruning/export/remote_code/modeling_fwdprune.py` loads it with per-layer widths, whether it is a mixture
of experts, and how llama.cpp states it (`pruning.export.gguf`). The API refuses an unsupported
checkpoint from this table at submit, before anything touches a GPU; the adapters, the exporters and
the remote code's test read the same entries, so a family is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pruning.checkpoint_config import check_sizes, quoted
from pruning.errors import UnsupportedModelError

GgufWidths = Literal["any", "uniform"]


@dataclass(frozen=True)
class Family:
    """One `model_type` and how each part of fwdprune handles it."""

    model_type: str  # config.json's model_type
    adapter: str  # the family adapter's name (`FamilyAdapter.name`)
    pruned_class: str  # modeling_fwdprune's class for per-layer widths
    experts: bool = False  # a mixture of experts: its config states expert counts
    # llama.cpp's architecture for the family at uniform widths; None: the GGUF export refuses it
    gguf_arch: str | None = None
    # the widths the GGUF export states: any (per layer in llama.cpp's `deci`, which holds Llama, Mistral
    # and Qwen2 layers) or uniform only (Qwen3's q/k norms exist in llama.cpp's `qwen3` alone)
    gguf_widths: GgufWidths | None = None


FAMILIES: dict[str, Family] = {}

# model types refused with a reason of their own (beside the list of supported ones)
REFUSED_MODEL_TYPES: dict[str, str] = {
    "gemma3": "a gemma3 checkpoint nests its text model beside a vision tower; fwdprune prunes text-only "
    "gemma3_text checkpoints (Gemma 3 270M and 1B are; save a larger one's language model as "
    "Gemma3ForCausalLM first)",
}


def register_family(family: Family) -> Family:
    """Add `family` to the table under its model_type (replacing an entry of that model_type)."""
    FAMILIES[family.model_type] = family
    return family


for _family in (
    Family("llama", "llama", "FwdPrunedLlamaForCausalLM", gguf_arch="llama", gguf_widths="any"),
    Family("mistral", "mistral", "FwdPrunedMistralForCausalLM", gguf_arch="llama", gguf_widths="any"),
    Family("qwen2", "qwen2", "FwdPrunedQwen2ForCausalLM", gguf_arch="qwen2", gguf_widths="any"),
    Family("qwen3", "qwen3", "FwdPrunedQwen3ForCausalLM", gguf_arch="qwen3", gguf_widths="uniform"),
    Family("bert", "bert", "FwdPrunedBertModel"),
    Family("roberta", "bert", "FwdPrunedRobertaModel"),
    Family("gemma3_text", "gemma3", "FwdPrunedGemma3ForCausalLM"),
    Family("phi3", "phi3", "FwdPrunedPhi3ForCausalLM"),
    Family("qwen3_moe", "qwen3_moe", "FwdPrunedQwen3MoeForCausalLM", experts=True),
    Family("mixtral", "mixtral", "FwdPrunedMixtralForCausalLM", experts=True),
):
    register_family(_family)


def family_of(config: dict[str, Any]) -> Family:
    """The family of a checkpoint's config, refusing an unsupported `model_type` (with the list of
    supported ones) and sizes no model of its family has (`check_sizes`)."""
    model_type = config.get("model_type")
    family = FAMILIES.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        supported = ", ".join(sorted(FAMILIES))
        refused = REFUSED_MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
        reason = f" ({refused})" if refused else ""
        raise UnsupportedModelError(
            f"model_type {quoted(model_type)} is not supported{reason}; supported model types: {supported}"
        )
    check_sizes(config, experts=family.experts)
    return family
