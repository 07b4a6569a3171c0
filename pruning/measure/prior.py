"""Activation-based unit scores (Wanda-style |W|·‖x‖, summed per structural unit)."""

from __future__ import annotations

import torch


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """weight: [out, in] -> [in] L2 norm of each input channel's column, in float64."""
    return weight.double().norm(dim=0)


def unit_activation_scores(
    channel_norms: torch.Tensor, weight_column_norms: torch.Tensor, channel_unit: torch.Tensor, units: int
) -> torch.Tensor:
    """Sum over each unit's channels of ‖x_j‖₂ · ‖W[:, j]‖₂.

    channel_norms: [C] L2 norm of input channel j over all calibration tokens
    weight_column_norms: [C] L2 norm of column j of the output projection
    channel_unit: [C] unit index of channel j; units: number of units
    returns [units]
    """
    per_channel = channel_norms.double() * weight_column_norms.double()  # [C]
    return torch.zeros(units, dtype=torch.float64).index_add_(0, channel_unit, per_channel)
