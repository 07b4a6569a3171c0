"""`wanda-sp`: activation-only structured Wanda, the same fraction removed in every layer."""

from __future__ import annotations

import torch

from pruning.methods.base import MethodContext, register_method
from pruning.methods.scored_once import ScoredOnce


@register_method
class WandaSp(ScoredOnce):
    """Structured Wanda: Σ |W|·‖x‖ per unit; the same fraction removed in every layer."""

    name = "wanda-sp"

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        return ctx.probe.activation_prior(torch.ones(ctx.space.size, dtype=torch.bool))

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        # attention and MLP scores are not on one scale: each kind loses the target fraction on its own
        return ctx.selector.select_per_kind(scores / ctx.space.params, alive, ctx.target_params, uniform=True)
