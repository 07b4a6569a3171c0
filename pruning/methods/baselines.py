"""Baselines at the same budget: `random` (the floor), `wanda-sp` (activation-only, per layer), `flap`."""

from __future__ import annotations

from dataclasses import replace

import torch

from pruning.methods.base import MethodContext, MethodResult, PruningMethod, SizeResult
from pruning.scoring.flap import fluctuation_scores, standardise


class ScoredOnce(PruningMethod):
    """A method that scores the dense model once and selects by that score: several sizes share the
    scoring and each only selects."""

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        """[U] the method's estimate for each unit."""
        raise NotImplementedError

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        """[U] bool, the units to remove for `ctx.target_params` by `scores`."""
        raise NotImplementedError

    def run(self, ctx: MethodContext) -> MethodResult:
        scores = self.scores(ctx)
        return MethodResult(~self.removed(ctx, scores), scores)

    def run_targets(self, ctx: MethodContext, targets: list[float]) -> list[SizeResult]:
        scores = self.scores(ctx)
        return [self._selected(replace(ctx, target_params=target), scores) for target in targets]

    def _selected(self, ctx: MethodContext, scores: torch.Tensor) -> SizeResult:
        return lambda: MethodResult(~self.removed(ctx, scores), scores)


class RandomUnits(ScoredOnce):
    name = "random"

    def planned_work(self, sequences: int, seq_len: int, refit: bool, replicas: int = 1) -> dict[str, float]:
        return {"scoring": 0.0}  # no forward pass

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        generator = torch.Generator().manual_seed(ctx.seed)
        return torch.rand(ctx.space.size, generator=generator, dtype=torch.float64)

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        # random importance per parameter, so large and small units are equally likely to go
        return ctx.selector.select(scores / ctx.space.params, alive, ctx.target_params)


class WandaSp(ScoredOnce):
    """Structured Wanda: Σ |W|·‖x‖ per unit; the same fraction removed in every layer."""

    name = "wanda-sp"

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        return ctx.probe.activation_prior(torch.ones(ctx.space.size, dtype=torch.bool))

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        alive = torch.ones(ctx.space.size, dtype=torch.bool)
        # attention and MLP scores are not on one scale: each kind loses the target fraction on its own
        return ctx.selector.select_per_kind(scores / ctx.space.params, alive, ctx.target_params, uniform=True)


class Flap(ScoredOnce):
    """FLAP: fluctuation of each input channel times its squared column norm, standardised per layer
    and kind, one global threshold (or equal counts per layer with --uniform); bias-compensated."""

    name = "flap"
    default_compensation = "bias"

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        stats = ctx.probe.channel_statistics(torch.ones(ctx.space.size, dtype=torch.bool))
        standardised = []
        for group in ctx.space.groups:
            _, variance = stats.channel_moments(group)
            scores = fluctuation_scores(
                variance, ctx.probe.weights.column_norms(group), group.channel_unit, group.count
            )
            standardised.append(standardise(scores))
        return torch.cat(standardised)

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        return ctx.selector.select(scores, torch.ones(ctx.space.size, dtype=torch.bool), ctx.target_params)
