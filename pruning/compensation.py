"""Forward-only compensation of the output projections once units are removed.

- `bias` (FLAP's): shift each output projection's bias by the mean contribution its removed input
  channels used to make. Exported as real biases where the family's stock config can carry them.
- `ls`: refit each output projection on its kept channels by ridge-regularised least squares, so it
  reproduces its full output on the calibration activations. Exported as changed weights (any family).

Both are measured with forward passes under the final masks and applied to the masked model with
forward hooks, so int8 weights stay untouched and the report measures exactly what is exported.
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
from pruning.scoring.reconstruction import ridge_reconstruction
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


def weight_refits(ctx: ScoringContext, keep: torch.Tensor, ridge: float = 1e-2,
                  max_gram_bytes: int = 2**31) -> dict[int, torch.Tensor]:
    """id(group) -> [out, C] float64 weight change from `ridge_reconstruction`, for every module that
    lost units. Grams ([C, C] fp32 on the model's device) are gathered for as many modules per pass
    over the calibration data as fit in `max_gram_bytes`, which bounds memory on large models."""
    groups = [g for g in ctx.space.groups if not bool(keep[ctx.space.slice(g)].all())]
    refits: dict[int, torch.Tensor] = {}
    for batch in _fitting_batches(groups, max_gram_bytes):
        grams = _gather_grams(ctx, keep, batch)
        for group in batch:
            kept = keep[ctx.space.slice(group)][group.channel_unit]  # [C]
            refits[id(group)] = ridge_reconstruction(grams.pop(id(group)).cpu(), ctx.output_weight(group),
                                                     kept, ridge)
    return refits


def _fitting_batches(groups: list[UnitGroup], max_bytes: int) -> list[list[UnitGroup]]:
    batches: list[list[UnitGroup]] = [[]]
    used = 0
    for group in groups:
        size = 4 * group.channel_unit.numel() ** 2
        if batches[-1] and used + size > max_bytes:
            batches.append([])
            used = 0
        batches[-1].append(group)
        used += size
    return [b for b in batches if b]


def _gather_grams(ctx: ScoringContext, keep: torch.Tensor, groups: list[UnitGroup]) -> dict[int, torch.Tensor]:
    """Σ xᵀx of each group's module input, before its own mask (so removed channels are seen)."""
    grams: dict[int, torch.Tensor] = {}
    handles: list[RemovableHandle] = []

    def hook_for(group: UnitGroup):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # [tokens, C]
            grams[id(group)] = grams.get(id(group), 0) + x.T @ x

        return record

    try:
        for group in groups:
            handles.append(group.module.register_forward_pre_hook(hook_for(group), prepend=True))
        ctx.calibration_pass(keep)
    finally:
        for handle in handles:
            handle.remove()
    return grams


@contextmanager
def corrected_outputs(groups: list[UnitGroup], shifts: dict[int, torch.Tensor],
                      refits: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add each module's bias shift and x·ΔWᵀ to its output for the duration (the masked model's view;
    x is the masked input, so ΔW's zero columns for removed channels are never used)."""
    handles: list[RemovableHandle] = []

    def hook_for(shift: torch.Tensor | None, delta: torch.Tensor | None):  # type: ignore[no-untyped-def]
        def add(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if delta is not None:
                d = delta.to(device=output.device, dtype=torch.float32)
                output = output + (args[0].float() @ d.T).to(output.dtype)
            if shift is not None:
                output = output + shift.to(device=output.device, dtype=output.dtype)
            return output

        return add

    try:
        for group in groups:
            shift, delta = shifts.get(id(group)), refits.get(id(group))
            if shift is not None or delta is not None:
                handles.append(group.module.register_forward_hook(hook_for(shift, delta)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def weight_replacements(ctx: ScoringContext, refits: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The refitted output projections, full width (the export slices them like the originals)."""
    tensors = {}
    for group in ctx.space.groups:
        if id(group) in refits:
            name = _stored(ctx, ctx.module_name(group.module) + ".weight")
            original = ctx.checkpoint.get(name)
            tensors[name] = (original.double() + refits[id(group)]).to(original.dtype)
    return tensors


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _stored(ctx: ScoringContext, name: str) -> str:
    stored = ctx.checkpoint.find(name)
    assert stored is not None, f"{name} is not in the checkpoint"
    return stored


def _header_dtype(ctx: ScoringContext, name: str) -> torch.dtype:
    """The stored dtype of a weight, from the safetensors header (no tensor is read)."""
    return SAFETENSORS_DTYPES[ctx.checkpoint.header(_stored(ctx, name))[1]]


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
        dtype = _header_dtype(ctx, name + ".weight")
        base = ctx.checkpoint.get(stored).double() if stored else 0.0
        tensors[name + ".bias"] = (base + shifts[id(group)]).to(dtype)
        for sibling in siblings:
            sibling_name = f"{parent}.{sibling}"
            if ctx.checkpoint.find(sibling_name + ".bias") is None:
                rows = ctx.checkpoint.header(_stored(ctx, sibling_name + ".weight"))[0][0]
                tensors[sibling_name + ".bias"] = torch.zeros(rows, dtype=dtype)
    return tensors, config
