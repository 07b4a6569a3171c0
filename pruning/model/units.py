"""The flat space of prunable units: which layer and kind each is, its size, and its channels.

Every method works on one keep-vector over all units; `UnitSpace` translates between that vector and
the per-module channel masks the hooks apply, and the per-layer kept indices the export slices by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from pruning.model.adapters.base import FamilyAdapter, LayerShape, UnitKind, channel_groups


@dataclass(eq=False)  # compared and hashed by identity: per-group statistics are keyed by the group
class UnitGroup:
    """The units of one kind in one layer, masked on the input channels of `module`."""

    layer: int
    kind: UnitKind
    # o_proj or down_proj: its input channels carry the units; for experts, the router: its logits do
    module: nn.Module
    channel_unit: torch.Tensor  # [in_channels] unit index (within this group) of each channel (or logit)
    params: torch.Tensor  # [count] prunable weights removed with each unit
    name: str = ""  # the module's qualified name in the model, e.g. "model.layers.3.mlp.down_proj"
    offset: int = 0  # index of this group's first unit in the flat space
    # experts: [count] float64 norm of each expert's output projection (the others' norms are read from
    # the checkpoint's output projection)
    unit_norms: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return int(self.params.numel())


@dataclass
class UnitSpace:
    groups: list[UnitGroup]
    num_layers: int
    head_dim: int
    group_size: list[int]  # query heads per KV group, per layer
    mlp_block: int
    experts_per_token: int = 0  # the router's top-k in a mixture-of-experts model (0: dense MLPs)
    expert_width: int = 0  # each expert's intermediate channels
    params: torch.Tensor = field(init=False)  # [U] prunable weights per unit
    kind: torch.Tensor = field(init=False)  # [U] UnitKind value of each unit
    layer: torch.Tensor = field(init=False)  # [U] layer index

    def __post_init__(self) -> None:
        offset = 0
        for group in self.groups:
            group.offset = offset
            offset += group.count
        self.params = torch.cat([g.params for g in self.groups]).double()
        self.kind = torch.cat([torch.full((g.count,), int(g.kind)) for g in self.groups])
        self.layer = torch.cat([torch.full((g.count,), g.layer) for g in self.groups])

    @property
    def size(self) -> int:
        return int(self.params.numel())

    def slice(self, group: UnitGroup) -> slice:
        return slice(group.offset, group.offset + group.count)

    def group_of(self, layer: int, kind: UnitKind) -> UnitGroup:
        return next(g for g in self.groups if g.layer == layer and g.kind == kind)

    def block_group(self, layer: int) -> UnitGroup:
        """The layer's MLP group, or its experts' in a mixture-of-experts layer."""
        return next(g for g in self.groups if g.layer == layer and g.kind != UnitKind.ATTN)

    @property
    def kinds(self) -> list[UnitKind]:
        """The unit kinds this model has, in UnitKind order."""
        return sorted({g.kind for g in self.groups})

    def kept_shapes(self, keep: torch.Tensor) -> list[LayerShape]:
        """Layer widths after removing the units where `keep` [U] is False."""
        shapes = []
        for layer in range(self.num_layers):
            attn, block = self.group_of(layer, UnitKind.ATTN), self.block_group(layer)
            kv_kept = int(keep[self.slice(attn)].sum())
            heads = kv_kept * self.group_size[layer]
            if block.kind == UnitKind.EXPERT:
                experts = int(keep[self.slice(block)].sum())
                shapes.append(LayerShape(heads, kv_kept, self.expert_width, experts))
            else:
                shapes.append(
                    LayerShape(heads, kv_kept, int(keep[self.slice(block)][block.channel_unit].sum()))
                )
        return shapes

    def kept_indices(self, keep: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
        """Kept channel indices per (layer, axis) with axis q (query/o_proj channels), kv, mlp, or the
        rows of a fused projection: qkv (q, k, v stacked, as Phi-3's qkv_proj) and gate_up (gate and up
        stacked, as Phi-3's gate_up_proj)."""
        kept: dict[tuple[int, str], torch.Tensor] = {}
        for layer in range(self.num_layers):
            attn, mlp = self.group_of(layer, UnitKind.ATTN), self.block_group(layer)
            kv_groups = keep[self.slice(attn)].nonzero().flatten()
            kv, q = (
                _expand(kv_groups, self.head_dim),
                _expand(kv_groups, self.head_dim * self.group_size[layer]),
            )
            kept[(layer, "kv")], kept[(layer, "q")] = kv, q
            q_width, kv_width = attn.channel_unit.numel(), attn.count * self.head_dim
            kept[(layer, "qkv")] = torch.cat([q, q_width + kv, q_width + kv_width + kv])
            if mlp.kind == UnitKind.EXPERT:
                kept[(layer, "expert")] = keep[self.slice(mlp)].nonzero().flatten()
                continue
            channels = keep[self.slice(mlp)][mlp.channel_unit].nonzero().flatten()
            kept[(layer, "mlp")] = channels
            kept[(layer, "gate_up")] = torch.cat([channels, mlp.channel_unit.numel() + channels])
        return kept


def _expand(units: torch.Tensor, width: int) -> torch.Tensor:
    """Channel indices of `units` when each unit owns `width` consecutive channels."""
    return (units[:, None] * width + torch.arange(width)[None, :]).flatten()


def default_mlp_block(intermediate: int) -> int:
    """Channels per MLP unit: 128 on 7B-class widths (GPU-friendly), down to 1 on toy models."""
    block = 1
    while block * 2 <= min(128, intermediate // 32):
        block *= 2
    return block


def build_unit_space(model: nn.Module, adapter: FamilyAdapter, mlp_block: int | None) -> UnitSpace:
    config = model.config
    shapes = adapter.layer_shapes(config)
    head_dim = adapter.head_dim(config)
    block = mlp_block or default_mlp_block(max(s.intermediate for s in shapes))
    names = {module: name for name, module in model.named_modules()}
    groups: list[UnitGroup] = []
    for index, (layer, shape) in enumerate(zip(adapter.layers(model), shapes, strict=True)):
        attn_params, channel_params = adapter.unit_params(config, shape)
        attn_out = adapter.attention_out(layer)
        attn_channels = torch.arange(shape.num_heads * head_dim) // (shape.group_size * head_dim)
        groups.append(
            UnitGroup(
                index,
                UnitKind.ATTN,
                attn_out,
                attn_channels,
                torch.full((shape.num_kv_heads,), attn_params, dtype=torch.float64),
                names[attn_out],
            )
        )
        router = adapter.expert_router(layer)
        if router is not None:
            groups.append(
                _expert_group(index, router, names[router], adapter.expert_norms(layer), channel_params)
            )
            continue
        mlp_out = adapter.mlp_out(layer)
        mlp_channels = channel_groups(shape.intermediate, block)
        widths = torch.bincount(mlp_channels).double()
        groups.append(
            UnitGroup(index, UnitKind.MLP, mlp_out, mlp_channels, widths * channel_params, names[mlp_out])
        )
    experts_per_token = adapter.experts_per_token(config)
    expert_width = shapes[0].intermediate if experts_per_token else 0
    return UnitSpace(
        groups, len(shapes), head_dim, [s.group_size for s in shapes], block, experts_per_token, expert_width
    )


def _expert_group(
    layer: int, router: nn.Module, name: str, norms: torch.Tensor, expert_params: int
) -> UnitGroup:
    """A layer's experts as units: one router logit each, `expert_params` weights each (its projections
    and its router row)."""
    count = int(norms.numel())
    params = torch.full((count,), expert_params, dtype=torch.float64)
    return UnitGroup(layer, UnitKind.EXPERT, router, torch.arange(count), params, name, unit_norms=norms)
