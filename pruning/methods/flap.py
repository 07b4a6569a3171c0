"""`flap` (An et al. 2024): fluctuation-based unit scores, standardised per layer and kind, one global
threshold, bias-compensated (`pruning.compensation.bias`). The scores are pure tensor functions."""

from __future__ import annotations

import torch

from pruning.methods.base import MethodContext, register_method
from pruning.methods.scored_once import ScoredOnce


def fluctuation_scores(
    variance: torch.Tensor, weight_column_norms: torch.Tensor, channel_unit: torch.Tensor, units: int
) -> torch.Tensor:
    """Σ over a unit's channels of Var(x_j) · ‖W[:, j]‖²: how much the output moves if x_j is frozen.

    variance: [C] variance of input channel j over calibration tokens; weight_column_norms: [C]
    channel_unit: [C] unit of each channel. Returns [units].
    """
    per_channel = variance.double() * weight_column_norms.double().pow(2)
    return torch.zeros(units, dtype=torch.float64).index_add_(0, channel_unit, per_channel)


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std within one group of units (one layer and kind), so one global threshold can
    compare attention heads with MLP channels and early layers with late ones."""
    if scores.numel() < 2:
        return torch.zeros_like(scores)
    return (scores - scores.mean()) / scores.std().clamp(min=1e-12)


@register_method
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
