"""Forward-only compensation: after units are removed, shift each output projection's bias by the mean
contribution its removed input channels used to make (FLAP's bias compensation).

The shift is measured with one pass over the calibration data under the final masks, applied to the
masked model with forward hooks (so int8 weights stay untouched), and exported as real biases where the
family's stock config can carry them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.methods.base import ScoringContext
from pruning.scoring.flap import compensation_bias
from pruning.units import UnitGroup


def bias_shifts(ctx: ScoringContext, keep: torch.Tensor) -> dict[int, torch.Tensor]:
    """id(group) -> [out] float64 bias shift for every module that lost units and may carry a bias."""
    kinds = ctx.adapter.bias_kinds()
    groups = [g for g in ctx.space.groups if g.kind in kinds and not bool(keep[ctx.space.slice(g)].all())]
    if not groups:
        return {}
    moments = ctx.channel_statistics(keep, before_masks=True)  # the removed channels' values, pre-mask
    shifts = {}
    for group in groups:
        mean, _ = moments.channel_moments(group)
        removed = ~keep[ctx.space.slice(group)][group.channel_unit]  # [C]
        shifts[id(group)] = compensation_bias(ctx.output_weight(group), mean, removed)
    return shifts


@contextmanager
def shifted_outputs(groups: list[UnitGroup], shifts: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add each module's bias shift to its output for the duration (the masked model's view)."""
    handles: list[RemovableHandle] = []

    def hook_for(shift: torch.Tensor):  # type: ignore[no-untyped-def]
        def add(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            return output + shift.to(device=output.device, dtype=output.dtype)

        return add

    try:
        for group in groups:
            if id(group) in shifts:
                handles.append(group.module.register_forward_hook(hook_for(shifts[id(group)])))
        yield
    finally:
        for handle in handles:
            handle.remove()


def bias_replacements(ctx: ScoringContext, shifts: dict[int, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Checkpoint tensors and config switches that carry the shifts into the export.

    The stock switch (e.g. Llama's `attention_bias`) gives q/k/v a bias too, so those get zeros.
    """
    tensors: dict[str, torch.Tensor] = {}
    config: dict[str, Any] = {}
    for group in ctx.space.groups:
        if id(group) not in shifts:
            continue
        name = ctx.module_name(group.module)
        parent = name.rsplit(".", 1)[0]
        switch, siblings = ctx.adapter.bias_switches[group.kind]
        if switch is not None:
            config[switch] = True
        stored = ctx.checkpoint.find(name + ".bias")
        dtype = ctx.checkpoint.get(ctx.checkpoint.find(name + ".weight") or name + ".weight").dtype
        base = ctx.checkpoint.get(stored).double() if stored else 0.0
        tensors[name + ".bias"] = (base + shifts[id(group)]).to(dtype)
        for sibling in siblings:
            sibling_name = f"{parent}.{sibling}"
            if ctx.checkpoint.find(sibling_name + ".bias") is None:
                rows = ctx.checkpoint.get(ctx.checkpoint.find(sibling_name + ".weight") or "").shape[0]
                tensors[sibling_name + ".bias"] = torch.zeros(rows, dtype=dtype)
    return tensors, config
