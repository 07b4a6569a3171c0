"""Corrections applied to the masked model's outputs with forward hooks: a bias shift per module and a
refit of the kept columns, in the dtype the export will store them in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.model.checkpoint import CheckpointReader
from pruning.model.masking import UnitMasks
from pruning.model.units import UnitGroup


def as_exported(change: torch.Tensor, base: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """The float64 `change` to `base` as it survives the export's cast of their sum to `dtype`, so that the
    masked model is measured with exactly what the compact one will compute (a bf16 checkpoint keeps
    8 bits of mantissa: a refit's small change is partly rounded away)."""
    base64 = torch.as_tensor(base, dtype=torch.float64)
    return (base64 + change).to(dtype).double() - base64


@dataclass
class Refit:
    """The change to an output projection's kept columns, stored without the removed ones (zero) and in
    float32: a 7B model's refits at 50% then take 4 GB of host memory, not the 16 GB of full-width
    float64."""

    columns: torch.Tensor  # [K] int64 indices of the kept input channels
    delta: torch.Tensor  # [out, K] float32 change to W[:, columns]

    @classmethod
    def of(cls, delta: torch.Tensor, kept: torch.Tensor) -> Refit:
        """From a full-width change [out, C] and the kept channels [C] bool."""
        columns = kept.nonzero().flatten()
        return cls(columns, delta[:, columns].float().contiguous())

    def applied_to(self, weight: torch.Tensor) -> torch.Tensor:
        """weight [out, C] with the change added to its kept columns (in float64, cast back)."""
        refitted = weight.clone()
        refitted[:, self.columns] = (weight[:, self.columns].double() + self.delta.double()).to(weight.dtype)
        return refitted


class OutputCorrections:
    """While installed, adds each module's bias shift and x_K·ΔW_Kᵀ to its output (the masked model's
    view; only the kept channels K of the input are read). `shifts` (group -> [out] float64) and
    `refits` (group -> Refit), on the CPU, are read at each call, so fits made while installed take
    effect at once. A refit is copied to the device for each call and not kept there: on the GPU only
    one module's refit is resident at a time. Corrections belong to the pruned model: they stand down
    while the masks are suspended for a dense pass."""

    def __init__(self, masks: UnitMasks) -> None:
        self.masks = masks
        self.shifts: dict[UnitGroup, torch.Tensor] = {}
        self.refits: dict[UnitGroup, Refit] = {}

    def _hook(self, group: UnitGroup) -> Callable[[nn.Module, tuple[Any, ...], torch.Tensor], torch.Tensor]:
        def add(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if self.masks.dense:
                return output
            refit, shift = self.refits.get(group), self.shifts.get(group)
            if refit is not None:
                columns = refit.columns.to(output.device, non_blocking=True)
                delta = refit.delta.to(output.device, non_blocking=True)  # [out, K]
                kept_input = args[0].index_select(-1, columns).float()  # [..., K]
                output = output + (kept_input @ delta.T).to(output.dtype)
            if shift is not None:
                output = output + shift.to(device=output.device, dtype=output.dtype)
            return output

        return add

    @contextmanager
    def installed(self) -> Iterator[OutputCorrections]:
        handles: list[RemovableHandle] = []
        try:
            for group in self.masks.space.groups:
                handles.append(group.module.register_forward_hook(self._hook(group)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


def weight_replacements(
    groups: list[UnitGroup], checkpoint: CheckpointReader, refits: dict[UnitGroup, Refit]
) -> dict[str, torch.Tensor]:
    """The refitted output projections, full width (the export slices them like the originals)."""
    tensors = {}
    for group in groups:
        if group in refits:
            name = stored_name(checkpoint, group.name + ".weight")
            tensors[name] = refits[group].applied_to(checkpoint.get(name))
    return tensors


def stored_name(checkpoint: CheckpointReader, name: str) -> str:
    stored = checkpoint.find(name)
    assert stored is not None, f"{name} is not in the checkpoint"
    return stored
