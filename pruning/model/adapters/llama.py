"""Llama (projections optionally biased) and Mistral (never biased): q/k/v/o attention, SwiGLU MLP."""

from __future__ import annotations

from pruning.model.adapters.base import FamilyAdapter, UnitKind


class LlamaAdapter(FamilyAdapter):
    name = "llama"
    bias_switches = {
        UnitKind.ATTN: ("attention_bias", ("q_proj", "k_proj", "v_proj")),
        UnitKind.MLP: ("mlp_bias", ("gate_proj", "up_proj")),
    }


class MistralAdapter(FamilyAdapter):
    """Mistral's projections are never biased in the stock config, so no bias compensation export."""

    name = "mistral"
