"""`bias` (FLAP's): each output projection's bias shifted by the mean contribution its removed input
channels used to make. Exported as real biases where the family's stock config can carry them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pruning.compensation.base import Compensator, ExportChanges, register_compensator
from pruning.compensation.corrections import as_exported, stored_name
from pruning.measure.probe import CalibrationProbe
from pruning.model.adapters.base import FamilyAdapter, UnitKind
from pruning.model.checkpoint import CheckpointReader
from pruning.model.units import UnitGroup


@register_compensator
class BiasShift(Compensator):
    """FLAP's: each output bias gains the mean contribution of its removed input channels."""

    name = "bias"

    def fit(
        self,
        keep: torch.Tensor,
        sequences: torch.Tensor | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.corrections.shifts = bias_shifts(self.probe, self.adapter.bias_kinds(), keep)

    def export_changes(self, checkpoint: CheckpointReader) -> ExportChanges:
        return bias_replacements(self.probe.space.groups, self.adapter, checkpoint, self.corrections.shifts)


def bias_shifts(
    probe: CalibrationProbe, kinds: set[UnitKind], keep: torch.Tensor
) -> dict[UnitGroup, torch.Tensor]:
    """group -> [out] float64 bias shift for every module of `kinds` that lost units."""
    space = probe.space
    groups = [g for g in space.groups if g.kind in kinds and not bool(keep[space.slice(g)].all())]
    if not groups:
        return {}
    moments = probe.channel_statistics(keep, before_masks=True)  # the removed channels' values, pre-mask
    shifts = {}
    for group in groups:
        mean, _ = moments.channel_moments(group)
        removed = ~keep[space.slice(group)][group.channel_unit]  # [C]
        shift = compensation_bias(probe.weights.of(group), mean, removed)
        base = probe.weights.bias(group)
        shifts[group] = as_exported(shift, 0.0 if base is None else base, probe.weights.stored_dtype(group))
    return shifts


def bias_replacements(
    groups: list[UnitGroup],
    adapter: FamilyAdapter,
    checkpoint: CheckpointReader,
    shifts: dict[UnitGroup, torch.Tensor],
) -> ExportChanges:
    """Checkpoint tensors and config switches that carry the shifts into the export.

    The stock switch (e.g. Llama's `attention_bias`) gives q/k/v a bias too, so those get zeros.
    """
    tensors: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {}
    for group in groups:
        if group not in shifts:
            continue
        parent = group.name.rsplit(".", 1)[0]
        switch, siblings = adapter.bias_switches[group.kind]
        if switch is not None:
            config[switch] = True
        stored = checkpoint.find(group.name + ".bias")
        dtype = checkpoint.dtype(stored_name(checkpoint, group.name + ".weight"))
        base = checkpoint.get(stored).double() if stored else 0.0
        tensors[group.name + ".bias"] = (base + shifts[group]).to(dtype)
        for sibling in siblings:
            sibling_name = f"{parent}.{sibling}"
            if checkpoint.find(sibling_name + ".bias") is None:
                rows = checkpoint.header(stored_name(checkpoint, sibling_name + ".weight"))[0][0]
                tensors[sibling_name + ".bias"] = torch.zeros(rows, dtype=dtype)
    return ExportChanges(tensors, config)


def compensation_bias(
    weight: torch.Tensor, channel_mean: torch.Tensor, removed: torch.Tensor
) -> torch.Tensor:
    """[out] W[:, removed] · E[x_removed]: the average contribution the removed channels made, which a
    bias can keep adding once they are gone. weight: [out, C]; channel_mean: [C]; removed: [C] bool."""
    return weight.double()[:, removed] @ channel_mean.double()[removed]
