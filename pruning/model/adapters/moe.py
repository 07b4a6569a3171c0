"""Mixture-of-experts decoders (Qwen3-MoE, Mixtral): KV groups as in Llama, and each layer's experts as
units of their own kind (`UnitKind.EXPERT`, `pruning.model.experts`).

A removed expert's router logit is masked to -inf before the top-k, so the masked model routes as the
exported one, whose router keeps only the kept experts' rows. Experts within a layer compete for the
tokens, and layers may keep different numbers: a layer keeps at least as many as the router picks per
token, or none (its block removed whole). The channels inside an expert are not units: transformers 5
holds the experts as 3D tensors used inside one module's forward, with no per-expert module whose input
a hook could mask.

Checkpoints store each expert's projections as tensors of their own (`experts.<e>.gate_proj.weight`,
Mixtral's `block_sparse_moe.experts.<e>.w1.weight`), which transformers fuses on loading; the export
leaves out the removed experts' tensors and numbers the kept ones anew. Fused tensors
(`experts.gate_up_proj`, `experts.down_proj`, [experts, ...]) are sliced along their first dimension.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from pruning.errors import UnsupportedModelError
from pruning.model.adapters.base import FamilyAdapter, LayerShape, SliceRule, UnitKind

ATTENTION_RULES = FamilyAdapter.slice_rules[:3]  # q, k/v, o: as Llama's
EXPERT_RULES = (
    SliceRule(re.compile(r"layers\.(\d+)\.(?:mlp|block_sparse_moe)\.gate\.weight$"), "expert", 0),
    SliceRule(
        re.compile(r"layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.(?:gate_up_proj|down_proj)$"),
        "expert",
        0,
    ),
)
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts")
EXPERT_TENSOR = re.compile(r"^(.*layers\.(\d+)\.(?:mlp|block_sparse_moe)\.experts\.)(\d+)(\..+)$")


class MoeAdapter(FamilyAdapter):
    """Decoders whose every layer holds a mixture of experts behind a top-k router."""

    experts_field: ClassVar[str]  # the config field with the number of experts per layer
    expert_width_field: ClassVar[str]  # the config field with each expert's intermediate width
    slice_rules = ATTENTION_RULES + EXPERT_RULES
    prunable_linears = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")

    def expert_router(self, layer: nn.Module) -> nn.Module | None:
        return layer.mlp.gate  # type: ignore[union-attr,return-value]

    def expert_norms(self, layer: nn.Module) -> torch.Tensor:
        down: Any = layer.mlp.experts.down_proj  # type: ignore[union-attr]  # [experts, hidden, width]
        return down.detach().double().flatten(1).norm(dim=1).cpu()

    def experts_per_token(self, config: Any) -> int:
        return int(config.num_experts_per_tok)

    def layer_shapes(self, config: Any) -> list[LayerShape]:
        per_layer = getattr(config, "fwdprune_layers", None)
        if per_layer:
            return [
                LayerShape(
                    d["num_attention_heads"],
                    d["num_key_value_heads"],
                    d["intermediate_size"],
                    d["num_experts"],
                )
                for d in per_layer
            ]
        self.refuse_dense_layers(config)
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        width, experts = getattr(config, self.expert_width_field), getattr(config, self.experts_field)
        return [LayerShape(config.num_attention_heads, kv, width, experts)] * config.num_hidden_layers

    def refuse_dense_layers(self, config: Any) -> None:
        """Models that mix dense layers among the mixture-of-experts ones are not supported."""

    def unit_params(self, config: Any, shape: LayerShape) -> tuple[int, int]:
        """Weights removed with one attention unit, and with one expert (gate, up and down projections
        and its router row)."""
        attn, _ = super().unit_params(config, shape)
        return attn, 3 * config.hidden_size * shape.intermediate + config.hidden_size

    def renamed(self, tensor_name: str, kept: dict[tuple[int, str], torch.Tensor]) -> str | None:
        match = EXPERT_TENSOR.match(tensor_name)
        if match is None:
            return tensor_name
        prefix, layer, expert, suffix = match.groups()
        experts = kept[(int(layer), "expert")].tolist()
        return f"{prefix}{experts.index(int(expert))}{suffix}" if int(expert) in experts else None

    def shrink_config(
        self, config: dict[str, Any], shapes: list[LayerShape], uniform: bool
    ) -> dict[str, Any]:
        config = dict(config)
        config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
        first = shapes[0]
        if uniform:
            if any(s != first for s in shapes):
                raise ValueError("uniform export needs equal widths in every layer")
            config["num_attention_heads"], config["num_key_value_heads"] = first.num_heads, first.num_kv_heads
            # transformers writes the count under either name (an alias of the other): every one present
            for field in [f for f in EXPERT_COUNT_FIELDS if f in config] or [self.experts_field]:
                config[field] = first.experts
            return config
        config["fwdprune_layers"] = [
            {
                "num_attention_heads": s.num_heads,
                "num_key_value_heads": s.num_kv_heads,
                "intermediate_size": s.intermediate,
                "num_experts": s.experts,
            }
            for s in shapes
        ]
        return config


class Qwen3MoeAdapter(MoeAdapter):
    name = "qwen3_moe"
    experts_field = "num_experts"
    expert_width_field = "moe_intermediate_size"
    bias_switches = {UnitKind.ATTN: ("attention_bias", ("q_proj", "k_proj", "v_proj"))}

    def refuse_dense_layers(self, config: Any) -> None:
        if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
            raise UnsupportedModelError(
                "Qwen3-MoE models with dense MLP layers among the expert ones (mlp_only_layers, "
                "decoder_sparse_step) are not supported"
            )


class MixtralAdapter(MoeAdapter):
    name = "mixtral"
    experts_field = "num_local_experts"
    expert_width_field = "intermediate_size"
