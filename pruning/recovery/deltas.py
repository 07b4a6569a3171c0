"""Weight changes of the kept part of linear maps, applied to the masked model with forward hooks and
written into the export: what a recovery leaves once its adapters are merged.

A `ModuleDelta` holds the change of a weight's kept rows and columns only (a removed row feeds a removed
unit, a removed column reads a zeroed channel), in float32, already rounded as the export's dtype will
round the changed weight (`as_exported`): the masked model then computes exactly what the compact
checkpoint does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.compensation.corrections import as_exported
from pruning.model.masking import UnitMasks


@dataclass
class ModuleDelta:
    """The change to W[rows][:, columns] of one linear map (None: every row, or every column)."""

    rows: torch.Tensor | None  # [R] int64
    columns: torch.Tensor | None  # [C] int64
    delta: torch.Tensor  # [R, C] float32

    @classmethod
    def rounded(
        cls,
        change: torch.Tensor,
        base: torch.Tensor,
        rows: torch.Tensor | None,
        columns: torch.Tensor | None,
    ) -> ModuleDelta:
        """From a full-size `change` [out, in] to the stored weight `base` [out, in] (its dtype is the
        export's), kept to `rows` and `columns` and rounded as the export will store base + change."""
        return cls.rounded_part(kept_block(change, rows, columns), base, rows, columns)

    @classmethod
    def rounded_part(
        cls,
        part: torch.Tensor,
        base: torch.Tensor,
        rows: torch.Tensor | None,
        columns: torch.Tensor | None,
    ) -> ModuleDelta:
        """From the change `part` [R, C] of the kept rows and columns of the stored weight `base`
        [out, in], rounded as the export will store base + change."""
        base_part = kept_block(base, rows, columns)
        return cls(rows, columns, as_exported(part.double(), base_part.double(), base.dtype).float())

    def applied_to(self, weight: torch.Tensor) -> torch.Tensor:
        """`weight` [out, in] with the change added to its kept part (in float64, cast back)."""
        changed = weight.clone()
        rows = self.rows if self.rows is not None else torch.arange(weight.shape[0])
        columns = self.columns if self.columns is not None else torch.arange(weight.shape[1])
        block = changed[rows][:, columns].double() + self.delta.double()
        changed[rows[:, None], columns[None, :]] = block.to(weight.dtype)
        return changed


def kept_block(weight: torch.Tensor, rows: torch.Tensor | None, columns: torch.Tensor | None) -> torch.Tensor:
    """weight[rows][:, columns] (None: every row, or every column)."""
    if rows is not None:
        weight = weight.index_select(0, rows)
    if columns is not None:
        weight = weight.index_select(1, columns)
    return weight


class WeightDeltas:
    """While installed, adds x[..., columns] ΔWᵀ to each changed module's output rows. `changes` (module
    name -> (module, ModuleDelta)) live on the CPU and are copied to the module's device for each call.
    Like the compensation's corrections they belong to the pruned model: they stand down while the masks
    are suspended for a dense pass."""

    def __init__(self, masks: UnitMasks) -> None:
        self.masks = masks
        self.changes: dict[str, tuple[nn.Module, ModuleDelta]] = {}
        self._fused: set[nn.Module] = set()  # modules whose own forward adds their change (`fused`)

    def _hook(self, change: ModuleDelta) -> Any:
        def add(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if self.masks.dense or module in self._fused:
                return output
            x = args[0]
            if change.columns is not None:
                x = x.index_select(-1, change.columns.to(x.device))
            added = (x.float() @ change.delta.to(x.device).T).to(output.dtype)  # [..., R]
            if change.rows is None:
                return output + added
            return output.index_add(-1, change.rows.to(output.device), added)

        return add

    @contextmanager
    def installed(self) -> Iterator[WeightDeltas]:
        handles: list[RemovableHandle] = []
        try:
            for module, change in self.changes.values():
                handles.append(module.register_forward_hook(self._hook(change)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @contextmanager
    def fused(self) -> Iterator[WeightDeltas]:
        """While the changes are installed (training them, or measuring with them): each float
        `nn.Linear` map computes its kept rows from its kept columns in one matmul by W_kept + ΔW, instead
        of its whole map and then the hook's second matmul by ΔW, its removed rows left zero. A removed
        row feeds a removed unit, whose channels the masks zero downstream, and a removed column reads a
        channel the masks zeroed, so the pruned model computes the same; forward and backward do about
        half the work at a third removed. Other maps (int8 ones, wrapped ones) keep the hook. The dense
        model (masks suspended) is untouched."""
        fusable = [
            (module, change)
            for module, change in self.changes.values()
            # a forward set on the instance is another wrapper's (accelerate's device hooks): left alone
            if type(module) is nn.Linear
            and module.weight.is_floating_point()
            and "forward" not in vars(module)
        ]
        try:
            for module, change in fusable:
                module.forward = self._kept_forward(module, change)  # type: ignore[method-assign]
                self._fused.add(module)
            yield self
        finally:
            for module, _ in fusable:
                if module in self._fused:
                    del module.forward
                    self._fused.discard(module)

    def _kept_forward(self, module: nn.Linear, change: ModuleDelta) -> Any:
        dense_forward = type(module).forward.__get__(module)
        device = module.weight.device
        rows = change.rows.to(device) if change.rows is not None else None
        columns = change.columns.to(device) if change.columns is not None else None
        with torch.no_grad():
            weight = kept_block(module.weight, rows, columns)  # [R, C], fixed while fused
            bias: torch.Tensor | None = module.bias
            if bias is not None and rows is not None:
                bias = bias.index_select(0, rows)

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.masks.dense:
                return dense_forward(x)
            kept_input = x if columns is None else x.index_select(-1, columns)
            out = nn.functional.linear(kept_input, weight + change.delta.to(weight.dtype), bias)  # [..., R]
            if rows is None:
                return out
            return out.new_zeros(*out.shape[:-1], module.out_features).index_copy(-1, rows, out)

        return forward

    def apply_to(self, tensors: dict[str, torch.Tensor], stored: Any) -> None:
        """Add every change to the export's replacement tensors `tensors` (stored name -> full tensor),
        reading a weight not replaced yet through `stored(name) -> (stored name, tensor)`."""
        for name, (_, change) in self.changes.items():
            stored_name, weight = stored(name + ".weight")
            tensors[stored_name] = change.applied_to(tensors.get(stored_name, weight))
