"""`random`: the floor every method must beat, at the same budget."""

from __future__ import annotations

import torch

from pruning.methods.base import MethodContext, register_method
from pruning.methods.scored_once import ScoredOnce


@register_method
class RandomUnits(ScoredOnce):
    name = "random"

    def planned_work(
        self, sequences: int, seq_len: int, refit: bool, replicas: int = 1, units: int = 0
    ) -> dict[str, float]:
        return {"scoring": 0.0}  # no forward pass

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(ctx.seed)
        return torch.rand(ctx.space.size, generator=generator, dtype=torch.float64)

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        # random importance per parameter, so large and small units are equally likely to go
        return ctx.selector.select(scores / ctx.space.params, alive, ctx.target_params)
