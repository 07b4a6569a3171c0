"""Gemma 3 text models (`gemma3_text`): q/k/v/o attention with q/k RMSNorm, GeGLU MLP, a norm after each
block as well as before it, sliding-window and global layers, tied embeddings.

Everything the base adapter assumes holds: the q/k norms have one entry per head dimension, shared by
every head, so removing heads leaves them as they are (they go with an attention block removed whole);
the attention scale comes from `query_pre_attn_scalar`, not from the head count, so it is unchanged by
head removal; and a block whose units are all masked outputs zeros, which its post-norm (RMSNorm,
x·(1+w)/rms(x)) keeps at zero, so a block removed whole is exactly a block that adds nothing. Sliding
and global layers differ only in their attention mask, which the layer keeps whatever its width.
Small Gemma 3 models have one KV group per layer: attention is then kept or removed whole per layer.
"""

from __future__ import annotations

from pruning.model.adapters.base import FamilyAdapter, UnitKind


class Gemma3Adapter(FamilyAdapter):
    name = "gemma3"
    bias_switches = {UnitKind.ATTN: ("attention_bias", ("q_proj", "k_proj", "v_proj"))}
