"""Phi-3 (`phi3`: Phi-3, Phi-3.5 and Phi-4 mini): attention with q, k and v fused in one `qkv_proj`, and a
gated MLP with gate and up fused in one `gate_up_proj`.

A KV group's rows are its query heads' rows in the q part of `qkv_proj`, its head's rows in the k part and
in the v part; an MLP channel's are its row in the gate half and its row in the up half of `gate_up_proj`
(`UnitSpace.kept_indices`' qkv and gate_up axes). Partial rotary embeddings rotate the first part of
every head the same way, so removing heads leaves them as they are.
"""

from __future__ import annotations

import re
from typing import Any

from pruning.model.adapters.base import FamilyAdapter, SliceRule


class Phi3Adapter(FamilyAdapter):
    name = "phi3"
    slice_rules = (
        SliceRule(re.compile(r"layers\.(\d+)\.self_attn\.qkv_proj\.weight$"), "qkv", 0),
        SliceRule(re.compile(r"layers\.(\d+)\.self_attn\.o_proj\.weight$"), "q", 1),
        SliceRule(re.compile(r"layers\.(\d+)\.mlp\.gate_up_proj\.weight$"), "gate_up", 0),
        SliceRule(re.compile(r"layers\.(\d+)\.mlp\.down_proj\.weight$"), "mlp", 1),
    )
    prunable_linears = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")

    def uniform_kv_counts(self, config: Any) -> list[int]:
        """As the base's; but long-context (longrope) configs tie their per-frequency factors to
        hidden_size / num_attention_heads, so a stock config keeps every head (per-layer widths, through
        the exported remote code, may still remove them)."""
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("short_factor") or rope.get("long_factor"):
            return [self.layer_shapes(config)[0].num_kv_heads]
        return super().uniform_kv_counts(config)
