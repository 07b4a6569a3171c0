"""Unit masks applied to activations with forward pre-hooks, never to weights.

Each hooked module (o_proj, down_proj) gets its input channels scaled by a per-replica mask. The
calibration batch is replicated R times along the batch dimension, so one forward pass evaluates R
sub-models: rows [r*B, (r+1)*B) of the batch see replica r's mask. Because only inputs are touched,
the same code serves int8 (bitsandbytes), bf16 and fp32 weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.model.adapters.base import UnitKind
from pruning.model.experts import RouterOutput, masked_routing, routed_weights
from pruning.model.units import UnitGroup, UnitSpace

PreHook: TypeAlias = Callable[[nn.Module, tuple[Any, ...]], Any]  # a forward pre-hook on a unit module
# a forward hook on an experts group's router: (module, args, output) -> a replacement output or None
RouterHook: TypeAlias = Callable[[nn.Module, tuple[Any, ...], Any], Any]


@contextmanager
def pre_hooks(
    groups: list[UnitGroup], hook_for: Callable[[UnitGroup], PreHook], prepend: bool = False
) -> Iterator[None]:
    """A forward pre-hook `hook_for(group)` on every group's module for the duration, removed even on
    error."""
    handles: list[RemovableHandle] = []
    try:
        for group in groups:
            handles.append(group.module.register_forward_pre_hook(hook_for(group), prepend=prepend))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def router_hooks(
    groups: list[UnitGroup], hook_for: Callable[[UnitGroup], RouterHook], prepend: bool = False
) -> Iterator[None]:
    """A forward hook `hook_for(group)` on the router of every experts group for the duration."""
    handles: list[RemovableHandle] = []
    try:
        for group in groups:
            handles.append(group.module.register_forward_hook(hook_for(group), prepend=prepend))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def unit_hooks(
    groups: list[UnitGroup],
    channels: Callable[[UnitGroup], PreHook],
    routers: Callable[[UnitGroup], RouterHook],
    prepend: bool = False,
) -> Iterator[None]:
    """`channels(group)` as a pre-hook on the output projections that carry channel units, and
    `routers(group)` as a forward hook on the routers of experts groups."""
    expert_groups = [g for g in groups if g.kind == UnitKind.EXPERT]
    channel_groups = [g for g in groups if g.kind != UnitKind.EXPERT]
    with pre_hooks(channel_groups, channels, prepend), router_hooks(expert_groups, routers, prepend):
        yield


def replica_rows(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """[rows, C] each row's mask from `mask` [R, C]: rows are replica-major, rows // R per replica."""
    return mask.repeat_interleave(rows // mask.shape[0], dim=0)


class UnitMasks:
    """Holds the current keep-masks [R, U] and scales hooked inputs by them."""

    def __init__(self, space: UnitSpace) -> None:
        self.space = space
        self._channel_masks: dict[UnitGroup, torch.Tensor] = {}  # group -> [R, in_channels]
        self.dense = False  # true while suspended: other modifiers of the model (corrections) stand down too

    def set(self, keep: torch.Tensor) -> None:
        """keep: [U] or [R, U] of 0/1 (or any scale); R replicas of the batch, one mask each."""
        keep = keep.reshape(-1, self.space.size)
        self._channel_masks = {}
        for group in self.space.groups:
            unit_keep = keep[:, self.space.slice(group)]  # [R, units]
            if bool((unit_keep == 1).all()):
                continue  # nothing masked in this module: skip the multiply
            self._channel_masks[group] = unit_keep[:, group.channel_unit]  # [R, in_channels]

    def clear(self) -> None:
        self._channel_masks = {}

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """The dense model for the duration (for reference outputs), then the masks as they were."""
        saved, self._channel_masks, self.dense = self._channel_masks, {}, True
        try:
            yield
        finally:
            self._channel_masks, self.dense = saved, False

    def _hook(self, group: UnitGroup) -> PreHook:
        def scale_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            mask = self._channel_masks.get(group)
            if mask is None:
                return None
            x = args[0]  # [R*B, T, C]
            replicas = mask.shape[0]
            mask = mask.to(device=x.device, dtype=x.dtype)
            if replicas == 1:
                return (x * mask[0], *args[1:])
            scaled = x.view(replicas, -1, *x.shape[1:]) * mask.view(replicas, 1, *([1] * (x.dim() - 2)), -1)
            return (scaled.view_as(x), *args[1:])

        return scale_input

    def _route(self, group: UnitGroup) -> RouterHook:
        def route(module: nn.Module, args: tuple[Any, ...], output: RouterOutput) -> RouterOutput | None:
            mask = self._channel_masks.get(group)
            if mask is None:
                return None
            hidden = args[0].reshape(-1, args[0].shape[-1])  # [R*B*T, D]
            allowed = replica_rows(mask.to(hidden.device) > 0, hidden.shape[0])
            return masked_routing(module, hidden, allowed, output)

        return route

    @contextmanager
    def installed(self) -> Iterator[UnitMasks]:
        """Hooks on every unit-carrying module for the duration; removed even on error."""
        try:
            with unit_hooks(self.space.groups, self._hook, self._route):
                yield self
        finally:
            self.clear()


class ChannelEnergy:
    """Accumulates, per input channel of the unit modules, the sum and the sum of squares over tokens."""

    def __init__(self, space: UnitSpace, before_masks: bool = False) -> None:
        self.space = space
        self.before_masks = before_masks  # see the inputs as they are before UnitMasks zeroes units
        self.energy: dict[UnitGroup, torch.Tensor] = {}  # group -> [in_channels] Σx², float64 on CPU
        self.sums: dict[UnitGroup, torch.Tensor] = {}  # group -> [in_channels] Σx
        self.tokens = 0

    @contextmanager
    def installed(self) -> Iterator[ChannelEnergy]:
        """Hooks on every unit module: after the masks (default) or, with before_masks, ahead of them."""

        def hook_for(group: UnitGroup) -> PreHook:
            def record(module: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # [tokens, C]
                self.energy[group] = self.energy.get(group, 0) + x.pow(2).sum(0).double().cpu()
                self.sums[group] = self.sums.get(group, 0) + x.sum(0).double().cpu()
                if group is self.space.groups[0]:
                    self.tokens += x.shape[0]

            return record

        def router_hook_for(group: UnitGroup) -> RouterHook:
            # an expert's "channel" is its routed weight times the norm of the token it is given
            def record(module: nn.Module, args: tuple[Any, ...], output: RouterOutput) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                gated = routed_weights(output, group.count) * x.norm(dim=-1, keepdim=True)  # [tokens, E]
                self.energy[group] = self.energy.get(group, 0) + gated.pow(2).sum(0).double().cpu()
                self.sums[group] = self.sums.get(group, 0) + gated.sum(0).double().cpu()

            return record

        with unit_hooks(self.space.groups, hook_for, router_hook_for, prepend=self.before_masks):
            yield self

    def channel_moments(self, group: UnitGroup) -> tuple[torch.Tensor, torch.Tensor]:
        """([in_channels] mean, [in_channels] variance) of each channel over all recorded tokens."""
        count = max(self.tokens, 1)
        mean = self.sums[group] / count
        return mean, (self.energy[group] / count - mean.pow(2)).clamp(min=0.0)

    def channel_norms(self, group: UnitGroup) -> torch.Tensor:
        """[in_channels] root of summed squares over tokens (zeros if never seen)."""
        energy = self.energy.get(group)
        if energy is None:
            return torch.zeros(group.channel_unit.numel(), dtype=torch.float64)
        return energy.sqrt()


class InputGrams:
    """Accumulates XᵀX [in_channels, in_channels] of the input of some unit modules over the tokens of
    the passes run while installed, in float32 on the module's device (a 7B down_proj's is 0.5 GB, so
    callers hook a few groups at a time)."""

    def __init__(self, groups: list[UnitGroup]) -> None:
        self.groups = groups
        self.grams: dict[UnitGroup, torch.Tensor] = {}  # group -> [C, C]

    @contextmanager
    def installed(self) -> Iterator[InputGrams]:
        def hook_for(group: UnitGroup) -> PreHook:
            def record(module: nn.Module, args: tuple[Any, ...]) -> None:
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # [tokens, C]
                gram = self.grams.get(group)
                self.grams[group] = x.T @ x if gram is None else gram.addmm_(x.T, x)

            return record

        with pre_hooks(self.groups, hook_for):
            yield self
