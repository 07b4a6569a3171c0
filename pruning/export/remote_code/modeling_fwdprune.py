"""Modeling code for pruned checkpoints whose layers have different widths.

This file is copied beside every non-uniform checkpoint and registered in its config's `auto_map`, so
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads it. It therefore imports only
torch and transformers. Each class is the stock model with its per-layer projections resized from
`config.fwdprune_layers`; a layer that lost every attention (or MLP) unit adds only its output bias.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import (
    BertModel,
    Gemma3ForCausalLM,
    LlamaForCausalLM,
    MistralForCausalLM,
    MixtralForCausalLM,
    Phi3ForCausalLM,
    Qwen2ForCausalLM,
    Qwen3ForCausalLM,
    Qwen3MoeForCausalLM,
    RobertaModel,
)


class _OutputBias(nn.Module):
    """What is left of an output projection with no input channels: its bias."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))


class EmptyAttention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, head_dim: int) -> None:
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim
        if getattr(config, "attention_bias", False):
            self.o_proj = _OutputBias(config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, *args: Any, past_key_values: Any = None, **kwargs: Any):
        # transformers 5 passes the cache as `cache` (its earlier name, `past_key_values`, still accepted)
        past_key_values = kwargs.get("cache", past_key_values)
        if past_key_values is not None:
            # a zero-head entry keeps the cache's sequence length right for the layers after this one
            batch, length = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            past_key_values.update(empty, empty, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        if hasattr(self, "o_proj"):
            out = out + self.o_proj.bias
        return out, None


class EmptyMLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        if getattr(config, "mlp_bias", False):
            self.down_proj = _OutputBias(config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        if hasattr(self, "down_proj"):
            out = out + self.down_proj.bias
        return out


def _resize(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features,
        out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )


def shrink_layers(model: nn.Module, config: Any) -> None:
    """Resize every decoder layer to the widths recorded in `config.fwdprune_layers`."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden = config.hidden_size
    layers: Any = model.model.layers  # type: ignore[union-attr]
    for index, (layer, widths) in enumerate(zip(layers, config.fwdprune_layers, strict=True)):
        heads, kv_heads, inter = (
            widths["num_attention_heads"],
            widths["num_key_value_heads"],
            widths["intermediate_size"],
        )
        if heads == 0:
            layer.self_attn = EmptyAttention(config, index, head_dim)
        else:
            _shrink_attention(layer.self_attn, config, heads, kv_heads, head_dim)
        experts = widths.get("num_experts")  # a mixture-of-experts layer's
        if inter == 0 or experts == 0:
            layer.mlp = EmptyMLP(config)
        elif experts is not None:
            _shrink_experts(layer.mlp, experts)
        else:
            _shrink_mlp(layer.mlp, hidden, inter)


def _shrink_attention(attn: Any, config: Any, heads: int, kv_heads: int, head_dim: int) -> None:
    hidden = config.hidden_size
    if hasattr(attn, "qkv_proj"):  # Phi-3: q, k and v rows in one projection
        attn.qkv_proj = _resize(attn.qkv_proj, hidden, (heads + 2 * kv_heads) * head_dim)
        attn.num_key_value_heads = kv_heads
        # it splits the fused rows by the config's head counts: this layer's own
        attn.config = copy.copy(config)
        attn.config.num_attention_heads, attn.config.num_key_value_heads = heads, kv_heads
    else:
        attn.q_proj = _resize(attn.q_proj, hidden, heads * head_dim)
        attn.k_proj = _resize(attn.k_proj, hidden, kv_heads * head_dim)
        attn.v_proj = _resize(attn.v_proj, hidden, kv_heads * head_dim)
    attn.o_proj = _resize(attn.o_proj, heads * head_dim, hidden)
    attn.num_key_value_groups = heads // kv_heads


def _shrink_experts(block: Any, count: int) -> None:
    """A mixture of experts (transformers 5's router and 3D expert tensors) down to `count` experts."""
    gate, experts = block.gate, block.experts
    gate.weight = nn.Parameter(gate.weight.new_empty(count, gate.weight.shape[1]))
    gate.num_experts = experts.num_experts = count
    experts.gate_up_proj = nn.Parameter(
        experts.gate_up_proj.new_empty(count, *experts.gate_up_proj.shape[1:])
    )
    experts.down_proj = nn.Parameter(experts.down_proj.new_empty(count, *experts.down_proj.shape[1:]))


def _shrink_mlp(mlp: Any, hidden: int, inter: int) -> None:
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate and up rows in one projection
        mlp.gate_up_proj = _resize(mlp.gate_up_proj, hidden, 2 * inter)
    else:
        mlp.gate_proj = _resize(mlp.gate_proj, hidden, inter)
        mlp.up_proj = _resize(mlp.up_proj, hidden, inter)
    mlp.down_proj = _resize(mlp.down_proj, inter, hidden)


class EmptySelfAttention(nn.Module):
    """An encoder layer's self-attention with no heads left: a zero-width output, so the output
    projection (now 0 → hidden) adds only its bias before the residual LayerNorm."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def shrink_encoder_layers(model: nn.Module, config: Any) -> None:
    """Resize every BERT-style encoder layer to `config.fwdprune_layers`; zero widths are allowed."""
    hidden = config.hidden_size
    layers: Any = model.encoder.layer  # type: ignore[union-attr]
    for layer, widths in zip(layers, config.fwdprune_layers, strict=True):
        heads, inter = widths["num_attention_heads"], widths["intermediate_size"]
        attention = layer.attention
        head_size = attention.self.attention_head_size
        if heads == 0:
            attention.self = EmptySelfAttention()
        else:
            for name in ("query", "key", "value"):
                setattr(
                    attention.self, name, _resize(getattr(attention.self, name), hidden, heads * head_size)
                )
            attention.self.num_attention_heads = heads
            attention.self.all_head_size = heads * head_size
        attention.output.dense = _resize(attention.output.dense, heads * head_size, hidden)
        layer.intermediate.dense = _resize(layer.intermediate.dense, hidden, inter)
        layer.output.dense = _resize(layer.output.dense, inter, hidden)


class FwdPrunedBertModel(BertModel):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        shrink_encoder_layers(self, config)


class FwdPrunedRobertaModel(RobertaModel):
    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        shrink_encoder_layers(self, config)


class FwdPrunedLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedMistralForCausalLM(MistralForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedQwen3ForCausalLM(Qwen3ForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedGemma3ForCausalLM(Gemma3ForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedPhi3ForCausalLM(Phi3ForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedQwen3MoeForCausalLM(Qwen3MoeForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)


class FwdPrunedMixtralForCausalLM(MixtralForCausalLM):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        shrink_layers(self, config)
