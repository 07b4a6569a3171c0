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
weights stay untouched and the report measures exactly what is exported. A job has one `Compensator`
(`make_compensator`): fitted for a keep-vector, installed on the model, and carried into the export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from pruning.adapters.base import FamilyAdapter, UnitKind
from pruning.checkpoint import CheckpointReader
from pruning.masking import UnitMasks
from pruning.probe import CalibrationProbe
from pruning.scoring.flap import compensation_bias
from pruning.scoring.obs import structured_obs_removals
from pruning.scoring.reconstruction import ridge_reconstruction
from pruning.units import UnitGroup, UnitSpace

# float32 input Grams held at once when choosing units for the refit (a 7B layer's: 0.55 GB)
GRAM_BYTES_PER_PASS = 1 << 30
# least squares over C input channels needs well over C calibration tokens, or it fits their noise
LS_TOKENS_PER_CHANNEL = 8


@dataclass
class ExportChanges:
    """What compensation changes in the exported checkpoint: full-size tensors that replace or add to the
    original ones before slicing, and config fields."""

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]


class Compensator:
    """A job's compensation: fitted for a keep-vector, applied to the masked model while installed,
    exported as changed tensors. The base class compensates nothing."""

    name: ClassVar[str] = "none"

    def __init__(
        self, probe: CalibrationProbe, adapter: FamilyAdapter, corrections: OutputCorrections
    ) -> None:
        self.probe, self.adapter, self.corrections = probe, adapter, corrections

    @property
    def applied(self) -> bool:
        """Whether the current fit changes anything (a bias shift finds no biased module on Mistral)."""
        return bool(self.corrections.shifts or self.corrections.refits)

    def fit(
        self,
        keep: torch.Tensor,
        sequences: torch.Tensor | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Fit for the model pruned to `keep` on `sequences` (default: the calibration set); the fit
        takes effect at once while installed. `progress` is told the fraction done as it goes."""

    def clear(self) -> None:
        """Undo the fit: the masked model as it is without compensation."""
        self.corrections.shifts.clear()
        self.corrections.refits.clear()

    def export_changes(self, checkpoint: CheckpointReader) -> ExportChanges:
        return ExportChanges({}, {})

    @contextmanager
    def installed(self) -> Iterator[Compensator]:
        """The corrections applied to the model's outputs for the duration."""
        with self.corrections.installed():
            yield self


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


class LeastSquaresRefit(Compensator):
    """Every output projection refitted by ridge least squares toward the dense model, layer by layer."""

    name = "ls"

    def __init__(
        self,
        probe: CalibrationProbe,
        adapter: FamilyAdapter,
        corrections: OutputCorrections,
        layers: list[nn.Module],
        ridge: float,
    ) -> None:
        super().__init__(probe, adapter, corrections)
        self.layers, self.ridge = layers, ridge

    def fit(
        self,
        keep: torch.Tensor,
        sequences: torch.Tensor | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        sequential_refits(self.probe, self.layers, keep, self.corrections, self.ridge, sequences, progress)

    def export_changes(self, checkpoint: CheckpointReader) -> ExportChanges:
        return ExportChanges(
            weight_replacements(self.probe.space.groups, checkpoint, self.corrections.refits), {}
        )

    def refit_aware_keep(
        self, reference: torch.Tensor, sequences: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[U] keep that removes as many units from every group as `reference` does, choosing them by
        greedy structured OBS on the dense model's input Gram over `sequences` (default: the calibration
        set): the units this refit stands in for best (`pruning.scoring.obs`). One pass over `sequences`
        per GRAM_BYTES_PER_PASS of Grams."""
        space = self.probe.space
        keep = torch.ones(space.size, dtype=torch.bool)
        pruned = [g for g in space.groups if not bool(reference[space.slice(g)].all())]
        for chunk in _runs_within_gram_bytes(pruned, GRAM_BYTES_PER_PASS):
            grams = self.probe.dense_input_grams(chunk, sequences)
            for group in chunk:
                gram = grams.pop(group)  # [C, C], on the module's device
                dtype = torch.float64 if gram.device.type == "cpu" else torch.float32  # GPU: memory, speed
                count = int((~reference[space.slice(group)]).sum())
                removed = structured_obs_removals(
                    gram,
                    self.probe.weights.of(group).to(gram.device),
                    group.channel_unit.to(gram.device),
                    count,
                    dtype=dtype,
                )
                keep[group.offset + removed.cpu()] = False
        return keep


COMPENSATORS: dict[str, type[Compensator]] = {"none": Compensator, "bias": BiasShift}


def choose_compensation(asked: str, method_default: str, space: UnitSpace, calibration_tokens: int) -> str:
    """`auto`: the least-squares refit when there are at least LS_TOKENS_PER_CHANNEL calibration tokens per
    input channel of the widest output projection (measured better there: docs/quality.md), else the
    method's own default (bias for flap, none for the others)."""
    if asked != "auto":
        return asked
    widest = max(group.channel_unit.numel() for group in space.groups)
    return "ls" if calibration_tokens >= LS_TOKENS_PER_CHANNEL * widest else method_default


def make_compensator(
    name: str, probe: CalibrationProbe, adapter: FamilyAdapter, layers: list[nn.Module], ridge: float
) -> Compensator:
    """The compensator called `name` ("none", "bias" or "ls"), with its hooks' corrections."""
    corrections = OutputCorrections(probe.masks)
    if name == "ls":
        return LeastSquaresRefit(probe, adapter, corrections, layers, ridge)
    return COMPENSATORS[name](probe, adapter, corrections)


def _runs_within_gram_bytes(groups: list[UnitGroup], limit: int) -> list[list[UnitGroup]]:
    """`groups` cut into consecutive runs whose float32 input Grams take at most `limit` bytes together
    (a group larger than that on its own)."""
    runs: list[list[UnitGroup]] = []
    used = limit
    for group in groups:
        size = 4 * group.channel_unit.numel() ** 2
        if used + size > limit:
            runs.append([])
            used = 0
        runs[-1].append(group)
        used += size
    return runs


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


def as_exported(change: torch.Tensor, base: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """The float64 `change` to `base` as it survives the export's cast of their sum to `dtype`, so that the
    masked model is measured with exactly what the compact one will compute (a bf16 checkpoint keeps
    8 bits of mantissa: a refit's small change is partly rounded away)."""
    base64 = torch.as_tensor(base, dtype=torch.float64)
    return (base64 + change).to(dtype).double() - base64


@torch.inference_mode()
def sequential_refits(
    probe: CalibrationProbe,
    layers: list[nn.Module],
    keep: torch.Tensor,
    corrections: OutputCorrections,
    ridge: float = 0.1,
    sequences: torch.Tensor | None = None,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Refit every output projection from the first pruned layer on, in forward order, into `corrections`,
    on `sequences` [N, T] (default: the whole calibration set); `layers` are the model's decoder layers;
    `progress` is told the fraction of layers done.

    Each module is fitted on its input in the pruned model (its own units removed, every earlier refit
    applied) to reproduce its output in the dense model, so each fit also corrects the drift that
    earlier layers left behind; modules that lost no units are refitted for that drift alone. The
    calibration set's hidden states are carried from layer to layer for both models, so the whole fit
    costs about three and a half forward passes (without the LM head); memory is those hidden states
    plus one module's [K, K] and [K, C] moments (fp32, on the model's device).
    """
    corrections.refits.clear()  # an earlier fit must not leak into this one
    space = probe.space
    pruned_layers = [g.layer for g in space.groups if not bool(keep[space.slice(g)].all())]
    if not pruned_layers:
        return
    streams = _LayerStreams.capture(probe, keep, layers[pruned_layers[0]], sequences)
    for index in range(pruned_layers[0], len(layers)):
        groups = [g for g in space.groups if g.layer == index]  # attention, then MLP
        for group in groups:
            kept = keep[space.slice(group)][group.channel_unit]  # [C]
            gram, cross = streams.paired_moments(layers[index], group.module, kept, last=group is groups[-1])
            weight = probe.weights.of(group)
            delta = ridge_reconstruction(gram.cpu(), cross.cpu(), weight, kept, ridge)
            delta = as_exported(delta, weight.double(), probe.weights.stored_dtype(group))
            corrections.refits[group] = Refit.of(delta, kept)
        streams.advance(layers[index])
        if progress is not None:
            progress((index + 1 - pruned_layers[0]) / (len(layers) - pruned_layers[0]))


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

    def __init__(
        self,
        masks: UnitMasks,
        keep: torch.Tensor,
        hidden: list[torch.Tensor],
        extra: list[tuple[tuple[Any, ...], dict[str, Any]]],
    ) -> None:
        self.masks, self.extra = masks, extra
        self.dense, self.pruned = hidden, list(hidden)  # [B, T, D] per batch; equal before any pruned layer
        self._dense_advanced = False  # the dense stream went through the current layer already
        masks.set(keep.double())

    @classmethod
    def capture(
        cls, probe: CalibrationProbe, keep: torch.Tensor, layer: nn.Module, sequences: torch.Tensor | None
    ) -> _LayerStreams:
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
            with probe.masks.suspended():
                for batch in probe.batches(sequences):
                    with suppress(_Reached):
                        probe.objective.run(batch)
        finally:
            handle.remove()
        return cls(probe.masks, keep, hidden, extra)

    def _run(self, layer: nn.Module, batch: int, dense: bool) -> torch.Tensor:
        args, kwargs = self.extra[batch]
        if dense:
            with self.masks.suspended():  # also stands the corrections down
                out = layer(self.dense[batch], *args, **kwargs)
        else:
            out = layer(self.pruned[batch], *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def paired_moments(
        self, layer: nn.Module, module: nn.Module, kept: torch.Tensor, last: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, K] X̃_Kᵀ X̃_K, [K, C] X̃_Kᵀ X): X̃ the module's input in the pruned model, X in the dense
        one, token for token, over every batch. `last`: `module` is the layer's last unit module, so the
        dense run goes on through the layer and moves the dense stream on (nothing refits it), sparing
        `advance` a dense pass."""
        gram: torch.Tensor | int = 0
        cross: torch.Tensor | int = 0
        for batch in range(len(self.extra)):
            if last:
                dense, self.dense[batch] = _input_and_output(module, self._run, layer, batch, True)
            else:
                dense = _input_of(module, self._run, layer, batch, True)  # [tokens, C]
            pruned = _input_of(module, self._run, layer, batch, False)
            pruned = pruned[:, kept.to(pruned.device)]  # [tokens, K]
            gram = gram + pruned.T @ pruned
            cross = cross + pruned.T @ dense
        assert isinstance(gram, torch.Tensor) and isinstance(cross, torch.Tensor)
        self._dense_advanced = last
        return gram, cross

    def advance(self, layer: nn.Module) -> None:
        """Move both streams through `layer`, the pruned one with its refits applied."""
        if not self._dense_advanced:
            self.dense = [self._run(layer, b, dense=True) for b in range(len(self.extra))]
        self.pruned = [self._run(layer, b, dense=False) for b in range(len(self.extra))]
        self._dense_advanced = False


def _input_and_output(module: nn.Module, run: Callable[..., Any], *args: Any) -> tuple[torch.Tensor, Any]:
    """([tokens, C] float32 input of `module`, what `run(*args)` returns), from one whole run."""
    captured: list[torch.Tensor] = []

    def capture(mod: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().reshape(-1, args[0].shape[-1]).float())

    handle = module.register_forward_pre_hook(capture, prepend=True)
    try:
        out = run(*args)
    finally:
        handle.remove()
    return captured[0], out


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
            name = _stored(checkpoint, group.name + ".weight")
            tensors[name] = refits[group].applied_to(checkpoint.get(name))
    return tensors


def _stored(checkpoint: CheckpointReader, name: str) -> str:
    stored = checkpoint.find(name)
    assert stored is not None, f"{name} is not in the checkpoint"
    return stored


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
        dtype = checkpoint.dtype(_stored(checkpoint, group.name + ".weight"))
        base = checkpoint.get(stored).double() if stored else 0.0
        tensors[group.name + ".bias"] = (base + shifts[group]).to(dtype)
        for sibling in siblings:
            sibling_name = f"{parent}.{sibling}"
            if checkpoint.find(sibling_name + ".bias") is None:
                rows = checkpoint.header(_stored(checkpoint, sibling_name + ".weight"))[0][0]
                tensors[sibling_name + ".bias"] = torch.zeros(rows, dtype=dtype)
    return ExportChanges(tensors, config)
