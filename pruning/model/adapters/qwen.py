"""Qwen2 (q/k/v biases, sliced with their weights by the base rules) and Qwen3 (per-head q/k RMSNorm).

Qwen3's q_norm/k_norm weights have one entry per head dimension, shared by all heads, so removing
heads leaves them untouched: the base slicing rules already do the right thing for both families.
"""

from __future__ import annotations

from pruning.model.adapters.base import FamilyAdapter, UnitKind


class Qwen2Adapter(FamilyAdapter):
    name = "qwen2"


class Qwen3Adapter(FamilyAdapter):
    name = "qwen3"
    bias_switches = {UnitKind.ATTN: ("attention_bias", ("q_proj", "k_proj", "v_proj"))}
