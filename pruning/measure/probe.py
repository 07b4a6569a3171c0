"""Forward passes over calibration text, and what they measure.

Methods and compensation see the model only through these two:
- `OutputWeights`: each unit group's output projection as stored in the checkpoint on disk, so an int8
  model is scored against its original weights.
- `CalibrationProbe`: the masked model run over calibration sequences, for the losses of sub-models and
  for the statistics hooks that ride along (per-channel energy, input Gram matrices).
"""

from __future__ import annotations

import torch

from pruning.measure.objectives import Objective
from pruning.measure.prior import column_norms, unit_activation_scores
from pruning.model.checkpoint import CheckpointReader
from pruning.model.masking import ChannelEnergy, InputGrams, UnitMasks
from pruning.model.units import UnitGroup, UnitSpace


class OutputWeights:
    """The output projection ([out, in_channels] float32 on the CPU) of every unit group, read from the
    checkpoint; a module the checkpoint does not name is read from the model itself."""

    def __init__(self, checkpoint: CheckpointReader) -> None:
        self.checkpoint = checkpoint
        self._column_norms: dict[UnitGroup, torch.Tensor] = {}

    def stored_name(self, group: UnitGroup, suffix: str = "weight") -> str | None:
        """The checkpoint's name of the group's module's `suffix` tensor, if it stores one."""
        return self.checkpoint.find(f"{group.name}.{suffix}")

    def of(self, group: UnitGroup) -> torch.Tensor:
        stored = self.stored_name(group)
        if stored:
            return self.checkpoint.get(stored).float()
        module_weight: torch.Tensor = group.module.weight  # type: ignore[assignment]
        return module_weight.detach().float().cpu()

    def stored_dtype(self, group: UnitGroup) -> torch.dtype:
        """The dtype the checkpoint keeps the group's output projection in (what the export writes)."""
        stored = self.stored_name(group)
        return self.checkpoint.dtype(stored) if stored else torch.float32

    def bias(self, group: UnitGroup) -> torch.Tensor | None:
        """[out] float64 output bias of the group's projection as stored, if the checkpoint has one."""
        stored = self.stored_name(group, "bias")
        return self.checkpoint.get(stored).double() if stored else None

    def column_norms(self, group: UnitGroup) -> torch.Tensor:
        """[in_channels] column norms of the group's output projection (read once); for experts, the
        norm of each expert's output projection."""
        if group.unit_norms is not None:
            return group.unit_norms
        if group not in self._column_norms:
            self._column_norms[group] = column_norms(self.of(group))
        return self._column_norms[group]


class CalibrationProbe:
    """Runs the model, under unit masks, over calibration sequences `batch_size` at a time."""

    def __init__(
        self,
        objective: Objective,
        masks: UnitMasks,
        weights: OutputWeights,
        calibration: torch.Tensor,
        batch_size: int,
    ) -> None:
        self.objective, self.masks, self.weights = objective, masks, weights
        self.calibration = calibration  # [N, T] token ids
        self.batch_size = batch_size  # sequences per forward pass when no masks are replicated

    @property
    def space(self) -> UnitSpace:
        return self.masks.space

    def batches(self, sequences: torch.Tensor | None = None) -> list[torch.Tensor]:
        """`sequences` (default: the calibration set) cut into forward-pass batches."""
        sequences = self.calibration if sequences is None else sequences
        return [
            sequences[start : start + self.batch_size]
            for start in range(0, sequences.shape[0], self.batch_size)
        ]

    def run(self, keep: torch.Tensor, sequences: torch.Tensor | None = None) -> None:
        """One forward pass over `sequences` (default: the calibration set) under mask `keep`, for the
        hooks it feeds."""
        self.masks.set(keep.double())
        for batch in self.batches(sequences):
            self.objective.run(batch)

    def mean_loss(self, keep: torch.Tensor, sequences: torch.Tensor) -> float:
        """Mean objective loss over `sequences` of the model pruned to `keep` (with any corrections)."""
        self.masks.set(keep.double())
        return self.objective.mean_loss(sequences, self.batch_size)

    def quality(self, keep: torch.Tensor, sequences: torch.Tensor) -> dict[str, float]:
        """The objective's quality figures (perplexity, or embedding cosine) on `sequences` of the model
        pruned to `keep`."""
        self.masks.set(keep.double())
        return self.objective.quality(sequences, self.batch_size)

    def sub_model_losses(self, keeps: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """[R] mean loss on `batch` [B, T] of each of the R sub-models `keeps` [R, U], in one forward."""
        if keeps.shape[0] == 0:  # a rank whose share of a step's sub-models ran out runs no forward
            return torch.zeros(0, dtype=torch.float64)
        self.masks.set(keeps)
        return self.objective.replica_losses(batch, keeps.shape[0])

    def channel_statistics(
        self, keep: torch.Tensor, before_masks: bool = False, sequences: torch.Tensor | None = None
    ) -> ChannelEnergy:
        """Per-channel Σx and Σx² at every unit module, from one pass over `sequences` (default: the
        calibration set; `before_masks`: the inputs as they are before the masks zero the removed units)."""
        energy = ChannelEnergy(self.space, before_masks=before_masks)
        with energy.installed():
            self.run(keep, sequences)
        return energy

    def activation_prior(self, keep: torch.Tensor, sequences: torch.Tensor | None = None) -> torch.Tensor:
        """[U] Σ ‖x_j‖·‖W_:j‖ per unit, from one pass over `sequences` (default: the calibration set) under
        mask `keep`."""
        energy = self.channel_statistics(keep, sequences=sequences)
        scores = [
            unit_activation_scores(
                energy.channel_norms(g), self.weights.column_norms(g), g.channel_unit, g.count
            )
            for g in self.space.groups
        ]
        return torch.cat(scores)

    def dense_input_grams(
        self, groups: list[UnitGroup], sequences: torch.Tensor | None = None
    ) -> dict[UnitGroup, torch.Tensor]:
        """group -> [C, C] XᵀX of its module's input in the dense model over `sequences`, float32 on the
        module's device, from one pass."""
        with InputGrams(groups).installed() as grams, self.masks.suspended():  # no corrections either
            self.run(torch.ones(self.space.size, dtype=torch.bool), sequences)
        return grams.grams
