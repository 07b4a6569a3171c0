"""Llama and Mistral: q/k/v/o attention (optionally biased) and a SwiGLU MLP."""

from __future__ import annotations

from pruning.adapters.base import FamilyAdapter


class LlamaAdapter(FamilyAdapter):
    name = "llama"
    model_types = ("llama", "mistral")
