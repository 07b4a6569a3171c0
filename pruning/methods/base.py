"""Lifecycle shared by every method: the scoring context (model, masks, data) and the result type.

A method only decides which units to keep; loading, hooks, evaluation and export are done for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pruning.adapters.base import FamilyAdapter
from pruning.checkpoint import CheckpointReader
from pruning.evaluation import Objective
from pruning.masking import ChannelEnergy, InputGrams, UnitMasks
from pruning.scoring.obs import structured_obs_removals
from pruning.scoring.prior import column_norms, unit_activation_scores
from pruning.selection import select_global, select_uniform
from pruning.spec import MethodOptions
from pruning.units import UnitGroup, UnitSpace

GRAM_BYTES_PER_PASS = 1 << 30  # float32 input Grams held at once by refit_aware_keep (a 7B layer's: 0.55 GB)


@dataclass
class MethodResult:
    keep: torch.Tensor  # [U] bool, the units that stay
    importance: torch.Tensor  # [U] float64, the method's estimate for each unit (loss units or its own)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoringContext:
    model: Any
    adapter: FamilyAdapter
    space: UnitSpace
    masks: UnitMasks  # installed on the model for the whole scoring stage
    runner: Objective
    calibration: torch.Tensor  # [N, T] token ids
    checkpoint: CheckpointReader
    uniform: bool
    target_params: float  # prunable parameters to remove in total
    seed: int
    batch_size: int  # sequences per forward pass when no masks are replicated
    allowed_counts: dict[int, list[int]]  # uniform mode: per kind, the per-layer counts a config allows
    # fit the job's compensation (ls) for a keep-vector on some calibration sequences, and undo it
    fit_compensation: Callable[[torch.Tensor, torch.Tensor], None] | None = None
    clear_compensation: Callable[[], None] | None = None
    report_progress: Callable[[dict[str, Any]], None] = lambda event: None
    _column_norms: dict[int, torch.Tensor] = field(default_factory=dict)

    def module_name(self, module: Any) -> str:
        return next(n for n, m in self.model.named_modules() if m is module)

    def output_weight(self, group: UnitGroup) -> torch.Tensor:
        """[out, in_channels] the group's output projection as stored in the checkpoint on disk (so int8
        models are scored against their original weights), float32 on the CPU."""
        stored = self.checkpoint.find(self.module_name(group.module) + ".weight")
        if stored:
            return self.checkpoint.get(stored).float()
        module_weight: torch.Tensor = group.module.weight  # type: ignore[assignment]
        return module_weight.detach().float().cpu()

    def weight_column_norms(self, group: UnitGroup) -> torch.Tensor:
        """[in_channels] column norms of the group's output projection (cached)."""
        key = id(group)
        if key not in self._column_norms:
            self._column_norms[key] = column_norms(self.output_weight(group))
        return self._column_norms[key]

    def calibration_pass(self, keep: torch.Tensor, sequences: torch.Tensor | None = None) -> None:
        """One forward pass over `sequences` (default: the whole calibration set) under mask `keep`, for
        the hooks it feeds."""
        sequences = self.calibration if sequences is None else sequences
        self.masks.set(keep.double())
        for start in range(0, sequences.shape[0], self.batch_size):
            self.runner.run(sequences[start : start + self.batch_size])

    def channel_statistics(self, keep: torch.Tensor, before_masks: bool = False) -> ChannelEnergy:
        """Per-channel Σx and Σx² at every unit module, from one pass over the calibration set."""
        energy = ChannelEnergy(self.space, before_masks=before_masks)
        with energy.installed():
            self.calibration_pass(keep)
        return energy

    def activation_prior(self, keep: torch.Tensor) -> torch.Tensor:
        """[U] Σ ‖x_j‖·‖W_:j‖ per unit, from one pass over the calibration set under mask `keep`."""
        energy = self.channel_statistics(keep)
        scores = [
            unit_activation_scores(energy.channel_norms(g), self.weight_column_norms(g), g.channel_unit, g.count)
            for g in self.space.groups
        ]
        return torch.cat(scores)

    def refit_aware_keep(self, reference: torch.Tensor, sequences: torch.Tensor | None = None) -> torch.Tensor:
        """[U] keep that removes as many units from every group as `reference` does, choosing them by
        greedy structured OBS on the dense model's input Gram over `sequences` (default: the calibration
        set): the units a least-squares refit stands in for best (`pruning.scoring.obs`). One pass over
        `sequences` per GRAM_BYTES_PER_PASS of Grams."""
        space = self.space
        keep = torch.ones(space.size, dtype=torch.bool)
        pruned = [g for g in space.groups if not bool(reference[space.slice(g)].all())]
        for chunk in _runs_within_gram_bytes(pruned, GRAM_BYTES_PER_PASS):
            with InputGrams(chunk).installed() as grams:
                self.calibration_pass(torch.ones(space.size, dtype=torch.bool), sequences)
            for group in chunk:
                gram = grams.grams.pop(id(group))  # [C, C], on the module's device
                dtype = torch.float64 if gram.device.type == "cpu" else torch.float32  # GPU: memory, speed
                count = int((~reference[space.slice(group)]).sum())
                removed = structured_obs_removals(gram, self.output_weight(group).to(gram.device),
                                                  group.channel_unit.to(gram.device), count, dtype=dtype)
                keep[group.offset + removed.cpu()] = False
        return keep

    def select(self, score_per_param: torch.Tensor, alive: torch.Tensor, budget: float,
               uniform: bool | None = None) -> torch.Tensor:
        """Units to remove now: [U] bool, about `budget` parameters, by lowest score per parameter."""
        if self.uniform if uniform is None else uniform:
            return select_uniform(score_per_param, self.space.params, alive, self.space.layer,
                                  self.space.kind, budget, self.allowed_counts)
        return select_global(score_per_param, self.space.params, alive, budget)


    def select_per_kind(self, score_per_param: torch.Tensor, alive: torch.Tensor, budget: float,
                        uniform: bool | None = None, attention_ratio: float = 1.0) -> torch.Tensor:
        """Attention loses `attention_ratio` times the overall fraction of parameters removed (1: each
        kind the same fraction), MLP makes up the rest of `budget`; units ranked within their kind
        (uniform widths or global, as `select`). The attention target is cumulative over calls, so a
        round too small for one whole head step leaves it to a later round instead of skipping it for
        good. Attention goes first: heads are large units, so MLP makes up the difference."""
        params, kind = self.space.params, self.space.kind
        removed_before = float(params[~alive].sum())
        fraction = (removed_before + budget) / float(params.sum())  # overall, once this call is done
        attn_params = float(params[kind == 0].sum())
        attn_target = min(attention_ratio * fraction, 1.0) * attn_params - float(params[~alive & (kind == 0)].sum())
        remove = self.select(score_per_param, alive & (kind == 0), max(attn_target, 0.0), uniform)
        left = budget - float(params[remove].sum())
        return remove | self.select(score_per_param, alive & (kind == 1), max(left, 0.0), uniform)

    def held_out_loss(self, keep: torch.Tensor, fit: torch.Tensor, held_out: torch.Tensor) -> float:
        """Mean loss on `held_out` of the model pruned to `keep`, compensated as the job will be (if
        `fit_compensation` is set) on the sequences `fit`. Leaves no compensation behind."""
        if self.fit_compensation is not None:
            self.fit_compensation(keep, fit)
        try:
            self.masks.set(keep.double())
            return self.runner.mean_loss(held_out, self.batch_size)
        finally:
            if self.clear_compensation is not None:
                self.clear_compensation()


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


class PruningMethod:
    """One scoring method. Subclasses implement `run`; the registry maps names to subclasses."""

    name: ClassVar[str]
    default_compensation: ClassVar[str] = "none"  # what compensate="auto" means for this method

    def __init__(self, options: MethodOptions) -> None:
        self.options = options

    def run(self, ctx: ScoringContext) -> MethodResult:
        raise NotImplementedError


class Eta:
    """Seconds left, from the average time per finished step."""

    def __init__(self, total_steps: int) -> None:
        self.total, self.done, self.start = total_steps, 0, time.perf_counter()

    def step(self) -> float:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        return elapsed / self.done * (self.total - self.done)
