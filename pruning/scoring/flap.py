"""FLAP (An et al. 2024): fluctuation-based unit scores, standardised per layer and kind, and the bias
that compensates for removed channels. Pure tensor functions."""

from __future__ import annotations

import torch


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


def compensation_bias(
    weight: torch.Tensor, channel_mean: torch.Tensor, removed: torch.Tensor
) -> torch.Tensor:
    """[out] W[:, removed] · E[x_removed]: the average contribution the removed channels made, which a
    bias can keep adding once they are gone. weight: [out, C]; channel_mean: [C]; removed: [C] bool."""
    return weight.double()[:, removed] @ channel_mean.double()[removed]
