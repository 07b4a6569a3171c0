"""`ls`: refit each output projection (`o_proj`, `down_proj`, ...) on its kept channels by
ridge-regularised least squares, layer by layer in forward order, so that on the calibration tokens it
reproduces the *dense* model's output from its input in the *pruned* model. Fitting to dense targets from
pruned inputs lets each layer also undo the drift the layers before it left behind (one-shot fits to each
module's own full output cannot). Exported as changed weights (any family). Fitted once, after scoring:
refitting after each of bonsai's rounds as well cost 1.5x the scoring time and did not help
(docs/quality.md, "Compensation").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pruning.compensation.base import Compensator, ExportChanges, register_compensator
from pruning.compensation.corrections import OutputCorrections, Refit, as_exported, weight_replacements
from pruning.compensation.obs import structured_obs_removals
from pruning.compensation.reconstruction import ridge_reconstruction
from pruning.measure.probe import CalibrationProbe
from pruning.measure.streams import LayerStreams
from pruning.model.adapters.base import FamilyAdapter, UnitKind
from pruning.model.checkpoint import CheckpointReader
from pruning.model.units import UnitGroup

# An ls fit runs each decoder layer about four to five times over its sequences (the dense and pruned
# streams, each module's input, then both streams' outputs), without the LM head: its cost in forward
# passes over the same tokens (docs/quality.md, "SmolLM2-135M": where it holds and where it does not).
LS_FIT_FORWARDS = 4.5
# float32 input Grams held at once when choosing units for the refit (a 7B layer's: 0.55 GB)
GRAM_BYTES_PER_PASS = 1 << 30
# every module's dense input Gram held at once for a search's one-shot refits (a 135M model's: 0.3 GB,
# a 7B's: 18 GB, which searches with the sequential refit instead)
SHARED_GRAM_BYTES = 2 << 30


@register_compensator
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

    @classmethod
    def build(
        cls,
        probe: CalibrationProbe,
        adapter: FamilyAdapter,
        corrections: OutputCorrections,
        layers: list[nn.Module],
        ridge: float,
    ) -> Compensator:
        return cls(probe, adapter, corrections, layers, ridge)

    def fit(
        self,
        keep: torch.Tensor,
        sequences: torch.Tensor | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        sequential_refits(self.probe, self.layers, keep, self.corrections, self.ridge, sequences, progress)
        # fitted under inference mode: copies a later training (recovery) can differentiate through
        self.corrections.refits = {
            group: Refit(refit.columns.clone(), refit.delta.clone())
            for group, refit in self.corrections.refits.items()
        }

    def export_changes(self, checkpoint: CheckpointReader) -> ExportChanges:
        return ExportChanges(
            weight_replacements(self.probe.space.groups, checkpoint, self.corrections.refits), {}
        )

    def dense_grams(self, sequences: torch.Tensor) -> dict[UnitGroup, torch.Tensor] | None:
        """group -> [C, C] float32 Gram of every refitted module's dense input over `sequences`, on the
        CPU, from one pass; None where they would take more than SHARED_GRAM_BYTES together."""
        groups = refitted_groups(self.probe.space.groups)
        if sum(4 * g.channel_unit.numel() ** 2 for g in groups) > SHARED_GRAM_BYTES:
            return None
        grams = self.probe.dense_input_grams(groups, sequences)
        return {group: gram.cpu() for group, gram in grams.items()}

    def fit_one_shot(self, keep: torch.Tensor, grams: dict[UnitGroup, torch.Tensor]) -> None:
        """A cheaper refit, into the corrections: each output projection that lost units refitted on its
        kept channels to reproduce its own dense output from its dense input, so the normal equations
        need only the dense input Gram (`dense_grams`), which every candidate of a search shares. Blind
        to the drift earlier layers leave, which `fit` corrects; a way to compare candidates."""
        self.corrections.refits.clear()
        space = self.probe.space
        for group, gram in grams.items():
            kept = keep[space.slice(group)][group.channel_unit]  # [C]
            if bool(kept.all()):
                continue
            index = kept.nonzero().flatten()
            weight = self.probe.weights.of(group)
            delta = ridge_reconstruction(gram[index][:, index], gram[index], weight, kept, self.ridge)
            delta = as_exported(delta, weight.double(), self.probe.weights.stored_dtype(group))
            self.corrections.refits[group] = Refit.of(delta, kept)

    def refit_aware_keep(
        self,
        reference: torch.Tensor,
        sequences: torch.Tensor | None = None,
        grams: dict[UnitGroup, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """[U] keep that removes as many units from every group as `reference` does, choosing them by
        greedy structured OBS on the dense model's input Gram over `sequences` (default: the calibration
        set): the units this refit stands in for best (`pruning.compensation.obs`). One pass over `sequences`
        per GRAM_BYTES_PER_PASS of Grams, unless `grams` (`dense_grams` over `sequences`) are given."""
        space = self.probe.space
        keep = reference.clone()  # experts are not refitted: they keep the reference's choice
        pruned = [g for g in refitted_groups(space.groups) if not bool(reference[space.slice(g)].all())]
        for group in pruned:
            keep[space.slice(group)] = True
        for chunk in _runs_within_gram_bytes(pruned, GRAM_BYTES_PER_PASS):
            # `grams`, where given, are over `sequences` already
            chunk_grams = dict(grams) if grams is not None else self.probe.dense_input_grams(chunk, sequences)
            for group in chunk:
                gram = chunk_grams.pop(group)  # [C, C], on the module's device (or the CPU, given)
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


def refitted_groups(groups: list[UnitGroup]) -> list[UnitGroup]:
    """The groups whose output projection is refitted: not experts, whose router is no projection of
    the units' outputs."""
    return [g for g in groups if g.kind != UnitKind.EXPERT]


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
    streams = LayerStreams.capture(probe, keep, layers[pruned_layers[0]], sequences)
    for index in range(pruned_layers[0], len(layers)):
        groups = [g for g in refitted_groups(space.groups) if g.layer == index]  # attention, then MLP
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
