"""Baselines at the same budget: `random` (the floor), `wanda-sp` (activation-only, per layer), `flap`."""

from __future__ import annotations

import torch

from pruning.methods.base import MethodContext, MethodResult, PruningMethod
from pruning.scoring.flap import fluctuation_scores, standardise


class RandomUnits(PruningMethod):
    name = "random"

    def planned_work(self, sequences: int, seq_len: int, refit: bool) -> dict[str, float]:
        return {"scoring": 0.0}  # no forward pass

    def run(self, ctx: MethodContext) -> MethodResult:
        generator = torch.Generator().manual_seed(ctx.seed)
        importance = torch.rand(ctx.space.size, generator=generator, dtype=torch.float64)
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        # random importance per parameter, so large and small units are equally likely to go
        remove = ctx.selector.select(importance / ctx.space.params, alive, ctx.target_params)
        return MethodResult(~remove, importance)


class WandaSp(PruningMethod):
    """Structured Wanda: Σ |W|·‖x‖ per unit; the same fraction removed in every layer."""

    name = "wanda-sp"

    def run(self, ctx: MethodContext) -> MethodResult:
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        prior = ctx.probe.activation_prior(alive)
        # attention and MLP scores are not on one scale: each kind loses the target fraction on its own
        remove = ctx.selector.select_per_kind(
            prior / ctx.space.params, alive, ctx.target_params, uniform=True
        )
        return MethodResult(~remove, prior)


class Flap(PruningMethod):
    """FLAP: fluctuation of each input channel times its squared column norm, standardised per layer
    and kind, one global threshold (or equal counts per layer with --uniform); bias-compensated."""

    name = "flap"
    default_compensation = "bias"

    def run(self, ctx: MethodContext) -> MethodResult:
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        stats = ctx.probe.channel_statistics(alive)
        standardised = []
        for group in ctx.space.groups:
            _, variance = stats.channel_moments(group)
            scores = fluctuation_scores(
                variance, ctx.probe.weights.column_norms(group), group.channel_unit, group.count
            )
            standardised.append(standardise(scores))
        z = torch.cat(standardised)
        remove = ctx.selector.select(z, alive, ctx.target_params)
        return MethodResult(~remove, z)
