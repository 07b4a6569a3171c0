"""What a model family must tell the engine: where its prunable units live and how to slice them.

An adapter maps one family's modules to two kinds of units per layer:
- attention units: one key/value group (its KV head with the query heads that read it); under plain
  multi-head attention a group is one head. Masked on the input channels of the output projection.
- MLP units: blocks of `mlp_block` intermediate channels, masked on the input of the down projection.
It also knows how each checkpoint tensor is sliced when units are removed, and how to write the
smaller config. The engine holds no family-specific code beyond this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Literal

import torch
from torch import nn


class UnitKind(IntEnum):
    """The kinds of prunable unit. The value is what `UnitSpace.kind` holds for each unit."""

    ATTN = 0  # one key/value group: its KV head and the query heads that read it
    MLP = 1  # a block of intermediate channels
    EXPERT = 2  # one expert of a mixture-of-experts block, with its router row

    @property
    def label(self) -> str:
        """The kind's name in reports: "attn", "mlp" or "expert"."""
        return ("attn", "mlp", "expert")[self]


# which set of kept indices slices a tensor: query channels, key/value channels, MLP channels, or a fused
# projection's rows: q, k and v stacked (`qkv`), gate and up stacked (`gate_up`); or experts (`expert`)
Axis = Literal["q", "kv", "mlp", "qkv", "gate_up", "expert"]


@dataclass(frozen=True)
class LayerShape:
    """Widths of one decoder layer; after pruning they differ between layers."""

    num_heads: int
    num_kv_heads: int
    intermediate: int  # the MLP's width; in a mixture-of-experts layer, each expert's
    experts: int | None = None  # experts of a mixture-of-experts layer (None: a dense MLP)

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads if self.num_kv_heads else 0

    @property
    def mlp_removed(self) -> bool:
        """Whether the layer's MLP (or mixture of experts) is gone whole."""
        return self.intermediate == 0 or self.experts == 0


@dataclass(frozen=True)
class SliceRule:
    """Tensors whose name matches `pattern` are sliced along `dim` by the kept indices of `axis`."""

    pattern: re.Pattern[str]
    axis: Axis
    dim: int


class FamilyAdapter:
    """Base adapter for decoder-only families shaped like Llama (q/k/v/o + gated MLP)."""

    name: ClassVar[str]  # what the family table (`pruning.families.Family.adapter`) calls it
    # checkpoint tensor names -> how to slice them; group 1 is the layer index
    slice_rules: ClassVar[tuple[SliceRule, ...]] = (
        SliceRule(re.compile(r"layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$"), "q", 0),
        SliceRule(re.compile(r"layers\.(\d+)\.self_attn\.[kv]_proj\.(weight|bias)$"), "kv", 0),
        SliceRule(re.compile(r"layers\.(\d+)\.self_attn\.o_proj\.weight$"), "q", 1),
        SliceRule(re.compile(r"layers\.(\d+)\.mlp\.(gate_proj|up_proj)\.(weight|bias)$"), "mlp", 0),
        SliceRule(re.compile(r"layers\.(\d+)\.mlp\.down_proj\.weight$"), "mlp", 1),
    )
    prunable_linears: ClassVar[tuple[str, ...]] = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    causal_lm: ClassVar[bool] = True

    def linear_kind(self, path: str) -> UnitKind:
        """The unit kind whose block holds the linear map at `path` (one of `prunable_linears`)."""
        return UnitKind.ATTN if path.startswith("self_attn.") else UnitKind.MLP

    stock_uniform: ClassVar[bool] = True  # can equal widths be written as a stock config?
    # unit kind -> (config switch that gives its output projection a bias, sibling projections the
    # switch also gives a bias); empty where the stock config has no such switch
    # (None: the projection is always biased)
    bias_switches: ClassVar[dict[UnitKind, tuple[str | None, tuple[str, ...]]]] = {}

    def bias_kinds(self) -> set[UnitKind]:
        return set(self.bias_switches)

    # -- model structure ---------------------------------------------------------------------
    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)  # type: ignore[union-attr,arg-type]

    def attention_out(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn.o_proj  # type: ignore[union-attr,return-value]

    def mlp_out(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.down_proj  # type: ignore[union-attr,return-value]

    def expert_router(self, layer: nn.Module) -> nn.Module | None:
        """The router of the layer's mixture of experts, whose logits the expert units mask (None: the
        layer's MLP is dense)."""
        return None

    def expert_norms(self, layer: nn.Module) -> torch.Tensor:
        """[experts] float64 norm of each expert's output projection (its activation prior's weight)."""
        raise NotImplementedError

    def experts_per_token(self, config: Any) -> int:
        """Experts the router picks per token (0: no mixture of experts)."""
        return 0

    def renamed(self, tensor_name: str, kept: dict[tuple[int, str], torch.Tensor]) -> str | None:
        """The name a checkpoint tensor is written under once units are removed (None: left out); the
        same name but for experts stored one tensor each, which are numbered anew."""
        return tensor_name

    def backbone(self, model: nn.Module) -> nn.Module:
        """The module that maps token ids to final hidden states (before the LM head)."""
        return model.model  # type: ignore[return-value]

    def lm_head(self, model: nn.Module) -> nn.Module:
        return model.lm_head  # type: ignore[return-value]

    def head_dim(self, config: Any) -> int:
        return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)

    def layer_shapes(self, config: Any) -> list[LayerShape]:
        """Per-layer widths, read from a pruned checkpoint's per-layer record when there is one."""
        per_layer = getattr(config, "fwdprune_layers", None)
        if per_layer:
            return [
                LayerShape(d["num_attention_heads"], d["num_key_value_heads"], d["intermediate_size"])
                for d in per_layer
            ]
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        shape = LayerShape(config.num_attention_heads, kv, config.intermediate_size)
        return [shape] * config.num_hidden_layers

    def unit_params(self, config: Any, shape: LayerShape) -> tuple[int, int]:
        """Weights removed with one attention unit, and with one MLP channel."""
        hidden, head_dim = config.hidden_size, self.head_dim(config)
        # q rows and o columns of its query heads, plus one k and one v head
        attn = (2 * shape.group_size + 2) * head_dim * hidden
        mlp = 3 * hidden  # gate row, up row, down column
        return attn, mlp

    # -- export ------------------------------------------------------------------------------
    def rule_for(self, tensor_name: str) -> tuple[SliceRule, int] | None:
        for rule in self.slice_rules:
            match = rule.pattern.search(tensor_name)
            if match:
                return rule, int(match.group(1))
        return None

    def shrink_config(
        self, config: dict[str, Any], shapes: list[LayerShape], uniform: bool
    ) -> dict[str, Any]:
        """The config of the compact model. Uniform widths fit the stock config; others are recorded."""
        config = dict(config)
        config.setdefault("head_dim", config["hidden_size"] // config["num_attention_heads"])
        first = shapes[0]
        if uniform:
            if any(s != first for s in shapes):
                raise ValueError("uniform export needs equal widths in every layer")
            config["num_attention_heads"] = first.num_heads
            config["num_key_value_heads"] = first.num_kv_heads
            config["intermediate_size"] = first.intermediate
            return config
        # stock fields keep their original values (transformers validates them); the per-layer record
        # is what the modeling code reads
        config["fwdprune_layers"] = [
            {
                "num_attention_heads": s.num_heads,
                "num_key_value_heads": s.num_kv_heads,
                "intermediate_size": s.intermediate,
            }
            for s in shapes
        ]
        return config

    def uniform_kv_counts(self, config: Any) -> list[int]:
        """KV-group counts a stock config can express: transformers requires hidden % heads == 0."""
        shape = self.layer_shapes(config)[0]
        return [
            k for k in range(1, shape.num_kv_heads + 1) if config.hidden_size % (k * shape.group_size) == 0
        ]

    def emptied_module(self, tensor_name: str) -> tuple[int, UnitKind] | None:
        """(layer, kind) whose removal drops this tensor entirely, e.g. q/k norms of an emptied attention.

        Output-projection biases survive: an emptied block still adds them.
        """
        match = self.module_pattern.search(tensor_name)
        if match is None or tensor_name.endswith(self.kept_biases):
            return None
        return int(match.group(1)), UnitKind.ATTN if match.group(2) == "self_attn" else UnitKind.MLP

    module_pattern: ClassVar[re.Pattern[str]] = re.compile(
        r"layers\.(\d+)\.(self_attn|mlp|block_sparse_moe)\."
    )
    kept_biases: ClassVar[tuple[str, ...]] = ("o_proj.bias", "down_proj.bias")


def channel_groups(num_channels: int, block: int) -> torch.Tensor:
    """Unit index of every channel when channels are cut into blocks of `block` (last may be short)."""
    return torch.arange(num_channels) // block
