"""Methods that score the dense model once and select by that score: several sizes share the scoring."""

from __future__ import annotations

from dataclasses import replace

import torch

from pruning.methods.base import FinishSize, MethodContext, MethodResult, PruningMethod


class ScoredOnce(PruningMethod):
    """A method that scores the dense model once and selects by that score: several sizes share the
    scoring and each only selects."""

    def scores(self, ctx: MethodContext) -> torch.Tensor:
        """[U] the method's estimate for each unit."""
        raise NotImplementedError

    def removed(self, ctx: MethodContext, scores: torch.Tensor) -> torch.Tensor:
        """[U] bool, the units to remove for `ctx.target_params` by `scores`."""
        raise NotImplementedError

    def run(self, ctx: MethodContext) -> MethodResult:
        scores = self.scores(ctx)
        return MethodResult(~self.removed(ctx, scores), scores)

    def run_sizes(self, ctx: MethodContext, params_to_remove: list[float]) -> list[FinishSize]:
        scores = self.scores(ctx)
        return [self._selected(replace(ctx, target_params=params), scores) for params in params_to_remove]

    def _selected(self, ctx: MethodContext, scores: torch.Tensor) -> FinishSize:
        return lambda: MethodResult(~self.removed(ctx, scores), scores)
