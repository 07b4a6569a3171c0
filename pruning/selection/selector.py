"""A job's selection rules over its unit space: which units to remove for a budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pruning.model.adapters.base import UnitKind
from pruning.model.units import UnitSpace
from pruning.selection.greedy import select_global, select_uniform, select_within_rules
from pruning.selection.width_rules import KindRule


@dataclass(frozen=True)
class UnitSelector:
    """A job's selection rules: which units to remove for a budget, by lowest score per parameter.

    `uniform`: the same number of units of each kind from every layer, at counts in `allowed_counts`
    (per kind, ascending: a stock config cannot express every head count); otherwise one global ranking,
    or, where the export format or the job limits per-layer widths, steps that keep every layer within
    `rules`.
    """

    space: UnitSpace
    uniform: bool
    allowed_counts: dict[UnitKind, list[int]]
    rules: dict[UnitKind, KindRule] | None = None  # per kind: the counts a layer may keep; None: any
    removable: torch.Tensor | None = None  # [U] bool, the units of the kinds the job may remove; None: all

    def select(
        self, score_per_param: torch.Tensor, alive: torch.Tensor, budget: float, uniform: bool | None = None
    ) -> torch.Tensor:
        """Units to remove now: [U] bool, about `budget` parameters, by lowest score per parameter.
        `uniform` overrides the job's widths for this call."""
        space = self.space
        if self.removable is not None:
            alive = alive & self.removable
        if self.uniform if uniform is None else uniform:
            return select_uniform(
                score_per_param, space.params, alive, space.layer, space.kind, budget, self.allowed_counts
            )
        if self.rules is not None:
            return select_within_rules(
                score_per_param, space.params, alive, space.layer, space.kind, budget, self.rules
            )
        return select_global(score_per_param, space.params, alive, budget)

    def select_per_kind(
        self,
        score_per_param: torch.Tensor,
        alive: torch.Tensor,
        budget: float,
        uniform: bool | None = None,
        attention_ratio: float = 1.0,
    ) -> torch.Tensor:
        """Attention loses `attention_ratio` times the overall fraction of parameters removed (1: each
        kind the same fraction), MLP makes up the rest of `budget`; units ranked within their kind
        (widths as `select`). The attention target is cumulative over calls, so a round too small for
        one whole head step leaves it to a later round instead of skipping it for good. Attention goes
        first: heads are large units, so MLP makes up the difference."""
        params = self.space.params
        attention = self.space.kind == UnitKind.ATTN
        mlp = ~attention  # MLP channels, or experts
        removed_before = float(params[~alive].sum())
        fraction = (removed_before + budget) / float(params.sum())  # overall, once this call is done
        attention_target = min(attention_ratio * fraction, 1.0) * float(params[attention].sum()) - float(
            params[~alive & attention].sum()
        )
        remove = self.select(score_per_param, alive & attention, max(attention_target, 0.0), uniform)
        left = budget - float(params[remove].sum())
        return remove | self.select(score_per_param, alive & mlp, max(left, 0.0), uniform)
