"""How often a mixture-of-experts model routes tokens to each expert: the report's routing frequencies,
and the baseline that removes the least-routed experts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pruning.measure.probe import CalibrationProbe
from pruning.model.adapters.base import UnitKind
from pruning.model.masking import RouterHook, router_hooks
from pruning.model.units import UnitGroup


def routing_frequencies(
    probe: CalibrationProbe, sequences: torch.Tensor | None = None
) -> dict[UnitGroup, torch.Tensor]:
    """group -> [experts] float64 fraction of the tokens of `sequences` (default: the calibration set)
    whose top k includes each expert, in the dense model (masks and corrections stood down)."""
    counts: dict[UnitGroup, torch.Tensor] = {}
    tokens: dict[UnitGroup, int] = {}

    def hook_for(group: UnitGroup) -> RouterHook:
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            indices = output[2]  # [tokens, k]
            picked = torch.bincount(indices.flatten().cpu(), minlength=group.count).double()
            counts[group] = counts.get(group, 0) + picked
            tokens[group] = tokens.get(group, 0) + indices.shape[0]

        return record

    groups = [g for g in probe.space.groups if g.kind == UnitKind.EXPERT]
    with router_hooks(groups, hook_for, prepend=True), probe.masks.suspended():
        for batch in probe.batches(sequences):
            probe.objective.run(batch)
    return {group: counts[group] / max(tokens[group], 1) for group in groups}
