"""Configuration and modeling code for checkpoints exported in the Nemotron-NAS ("DeciLM") layout.

Serving engines (vLLM, SGLang, TensorRT-LLM, llama.cpp) have their own implementation of this layout;
this file is what `transformers` runs: it is copied beside every such checkpoint and registered in its
config's `auto_map`, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads it. It
therefore imports only torch and transformers.

The layout is a Llama whose `block_configs` describe each layer: its attention keeps the model's
`num_attention_heads` query heads over `num_attention_heads // n_heads_in_group` KV heads, or is removed
(`no_op`); its MLP is `ffn_mult` wide (see `ffn_mult_to_intermediate_size`), or is removed. A removed
block has no tensors, not even its norm, and adds nothing to the residual stream.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

# the MLP width a block's ffn_mult stands for is rounded up to a multiple of this
FFN_WIDTH_MULTIPLE = 256


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """The MLP width of a block: two thirds of ffn_mult x hidden (SwiGLU's usual ratio), truncated, then
    rounded up to a multiple of 256, as the serving engines compute it."""
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // FFN_WIDTH_MULTIPLE) * FFN_WIDTH_MULTIPLE


def _as_block(block: Any) -> SimpleNamespace:
    """One layer's entry with attribute access (`block.attention.no_op`), the way engines read it."""
    if isinstance(block, SimpleNamespace):
        return block
    return SimpleNamespace(
        attention=SimpleNamespace(**block["attention"]), ffn=SimpleNamespace(**block["ffn"])
    )


def _as_dict(block: SimpleNamespace) -> dict[str, dict[str, Any]]:
    return {"attention": dict(vars(block.attention)), "ffn": dict(vars(block.ffn))}


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs: list[Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_configs = [_as_block(block) for block in block_configs or []]

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["block_configs"] = [_as_dict(_as_block(block)) for block in self.block_configs]
        return output


class _RemovedAttention(nn.Module):
    """A `no_op` attention block: adds nothing. It still writes a zero-head entry to the KV cache, so
    the cache's sequence length (which later positions are read from) stays right."""

    def __init__(self, layer_idx: int, head_dim: int) -> None:
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # the name differs across versions
        if cache is not None:
            batch, length = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)  # [B, 0 heads, T, head_dim]
            cache.update(empty, empty, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class _RemovedMLP(nn.Module):
    """A `no_op` MLP block: adds nothing."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(
        in_features,
        out_features,
        bias=like.bias is not None,
        device=like.weight.device,
        dtype=like.weight.dtype,
    )


def _shape_attention(layer: nn.Module, block: SimpleNamespace, config: Any, index: int) -> None:
    """Give `layer` the attention its block describes; the query side is the model's own."""
    head_dim = config.head_dim
    if block.attention.no_op:
        layer.self_attn = _RemovedAttention(index, head_dim)
        layer.input_layernorm = nn.Identity()  # no tensor: the block is simply absent
        return
    attn: Any = layer.self_attn
    kv_heads = config.num_attention_heads // block.attention.n_heads_in_group
    attn.k_proj = _linear(attn.k_proj, config.hidden_size, kv_heads * head_dim)
    attn.v_proj = _linear(attn.v_proj, config.hidden_size, kv_heads * head_dim)
    attn.num_key_value_groups = block.attention.n_heads_in_group


def _shape_mlp(layer: nn.Module, block: SimpleNamespace, config: Any) -> None:
    if block.ffn.no_op:
        layer.mlp = _RemovedMLP()
        layer.post_attention_layernorm = nn.Identity()
        return
    mlp: Any = layer.mlp
    width = ffn_mult_to_intermediate_size(block.ffn.ffn_mult, config.hidden_size)
    mlp.gate_proj = _linear(mlp.gate_proj, config.hidden_size, width)
    mlp.up_proj = _linear(mlp.up_proj, config.hidden_size, width)
    mlp.down_proj = _linear(mlp.down_proj, width, config.hidden_size)


class DeciLMForCausalLM(LlamaForCausalLM):
    """The stock Llama with each decoder layer reshaped to its entry in `config.block_configs`."""

    config_class = DeciLMConfig

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        layers: Any = self.model.layers
        for index, (layer, block) in enumerate(zip(layers, config.block_configs, strict=True)):
            _shape_attention(layer, block, config, index)
            _shape_mlp(layer, block, config)
