"""Forward-only compensation of the output projections once units are removed.

- `bias` (FLAP's): shift each output projection's bias by the mean contribution its removed input
  channels used to make. Exported as real biases where the family's stock config can carry them.
- `ls`: refit each output projection (`o_proj`, `down_proj`, ...) on its kept channels by
  ridge-regularised least squares, layer by layer in forward order, so that on the calibration tokens
  it reproduces the *dense* model's output from its input in the *pruned* model. Fitting to dense
  targets from pruned inputs lets each layer also undo the drift the layers before it left behind
  (one-shot fits to each module's own full output cannot). Exported as changed weights (any family).
  Fitted once, after scoring: refitting after each of bonsai's rounds as well cost 1.5x the scoring
  time and did not help (docs/quality.md, "Compensation").

Corrections are applied to the masked model with forward hooks (`OutputCorrections`), so int8
weights stay untouched and the report measures exactly what is exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.masking import UnitMasks
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


@torch.inference_mode()
def sequential_refits(ctx: ScoringContext, keep: torch.Tensor, corrections: OutputCorrections,
                      ridge: float = 0.1, sequences: torch.Tensor | None = None) -> None:
    """Refit every output projection from the first pruned layer on, in forward order, into `corrections`,
    on `sequences` [N, T] (default: the whole calibration set).

    Each module is fitted on its input in the pruned model (its own units removed, every earlier refit
    applied) to reproduce its output in the dense model, so each fit also corrects the drift that
    earlier layers left behind; modules that lost no units are refitted for that drift alone. The
    calibration set's hidden states are carried from layer to layer for both models, so the whole fit
    costs about four forward passes; memory is those hidden states plus one module's [K, K] and
    [K, C] moments (fp32, on the model's device).
    """
    corrections.refits.clear()  # an earlier fit must not leak into this one
    pruned_layers = [g.layer for g in ctx.space.groups if not bool(keep[ctx.space.slice(g)].all())]
    if not pruned_layers:
        return
    layers = ctx.adapter.layers(ctx.model)
    sequences = ctx.calibration if sequences is None else sequences
    streams = _LayerStreams.capture(ctx, keep, layers[pruned_layers[0]], sequences)
    for index in range(pruned_layers[0], len(layers)):
        for group in (g for g in ctx.space.groups if g.layer == index):  # attention, then MLP
            kept = keep[ctx.space.slice(group)][group.channel_unit]  # [C]
            gram, cross = streams.paired_moments(layers[index], group.module, kept)
            delta = ridge_reconstruction(gram.cpu(), cross.cpu(), ctx.output_weight(group), kept, ridge)
            corrections.refits[id(group)] = Refit.of(delta, kept)
        streams.advance(layers[index])


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


class _Reached(Exception):
    """Raised by a capture hook to end a forward pass once the module of interest has its input."""


class _LayerStreams:
    """Each calibration batch's hidden states at the input of one layer, in the dense model and in the
    pruned, corrected one, with the other arguments the model passed to that layer (position
    embeddings, attention mask), so that layers can be run one at a time."""

    def __init__(self, ctx: ScoringContext, keep: torch.Tensor, hidden: list[torch.Tensor],
                 extra: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.ctx, self.extra = ctx, extra
        self.dense, self.pruned = hidden, list(hidden)  # [B, T, D] per batch; equal before any pruned layer
        ctx.masks.set(keep.double())

    @classmethod
    def capture(cls, ctx: ScoringContext, keep: torch.Tensor, layer: nn.Module,
                sequences: torch.Tensor) -> _LayerStreams:
        """Run each batch of `sequences` up to `layer` (nothing before it is pruned) and keep what the
        layer is given."""
        hidden: list[torch.Tensor] = []
        extra: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            states = args[0] if args else kwargs.pop("hidden_states")
            hidden.append(states)
            extra.append((args[1:], kwargs))
            raise _Reached

        handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with ctx.masks.suspended():
                for start in range(0, sequences.shape[0], ctx.batch_size):
                    with suppress(_Reached):
                        ctx.runner.run(sequences[start : start + ctx.batch_size])
        finally:
            handle.remove()
        return cls(ctx, keep, hidden, extra)

    def _run(self, layer: nn.Module, batch: int, dense: bool) -> torch.Tensor:
        args, kwargs = self.extra[batch]
        if dense:
            with self.ctx.masks.suspended():  # also stands the corrections down
                out = layer(self.dense[batch], *args, **kwargs)
        else:
            out = layer(self.pruned[batch], *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def paired_moments(self, layer: nn.Module, module: nn.Module,
                       kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, K] X̃_Kᵀ X̃_K, [K, C] X̃_Kᵀ X): X̃ the module's input in the pruned model, X in the dense
        one, token for token, over every batch."""
        gram: torch.Tensor | int = 0
        cross: torch.Tensor | int = 0
        for batch in range(len(self.extra)):
            dense = _input_of(module, self._run, layer, batch, True)  # [tokens, C]
            pruned = _input_of(module, self._run, layer, batch, False)
            pruned = pruned[:, kept.to(pruned.device)]  # [tokens, K]
            gram = gram + pruned.T @ pruned
            cross = cross + pruned.T @ dense
        assert isinstance(gram, torch.Tensor) and isinstance(cross, torch.Tensor)
        return gram, cross

    def advance(self, layer: nn.Module) -> None:
        """Move both streams through `layer`, the pruned one with its refits applied."""
        self.dense = [self._run(layer, b, dense=True) for b in range(len(self.extra))]
        self.pruned = [self._run(layer, b, dense=False) for b in range(len(self.extra))]


def _input_of(module: nn.Module, run: Callable[..., Any], *args: Any) -> torch.Tensor:
    """[tokens, C] float32 input of `module` during `run(*args)`, which stops there."""
    captured: list[torch.Tensor] = []

    def capture(mod: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())
        raise _Reached

    handle = module.register_forward_pre_hook(capture, prepend=True)  # ahead of the unit mask
    try:
        with suppress(_Reached):
            run(*args)
    finally:
        handle.remove()
    return captured[0]


class OutputCorrections:
    """While installed, adds each module's bias shift and x_K·ΔW_Kᵀ to its output (the masked model's
    view; only the kept channels K of the input are read). `shifts` (id(group) -> [out] float64) and
    `refits` (id(group) -> Refit), on the CPU, are read at each call, so fits made while installed take
    effect at once. A refit is copied to the device for each call and not kept there: on the GPU only
    one module's refit is resident at a time. Corrections belong to the pruned model: they stand down
    while the masks are suspended for a dense pass."""

    def __init__(self, masks: UnitMasks) -> None:
        self.masks = masks
        self.shifts: dict[int, torch.Tensor] = {}
        self.refits: dict[int, Refit] = {}

    def _hook(self, group: UnitGroup):  # type: ignore[no-untyped-def]
        def add(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            if self.masks.dense:
                return output
            refit, shift = self.refits.get(id(group)), self.shifts.get(id(group))
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


def weight_replacements(ctx: ScoringContext, refits: dict[int, Refit]) -> dict[str, torch.Tensor]:
    """The refitted output projections, full width (the export slices them like the originals)."""
    tensors = {}
    for group in ctx.space.groups:
        if id(group) in refits:
            name = _stored(ctx, ctx.module_name(group.module) + ".weight")
            tensors[name] = refits[id(group)].applied_to(ctx.checkpoint.get(name))
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
