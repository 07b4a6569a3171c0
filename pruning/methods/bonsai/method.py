"""`bonsai`: perturbative, regression-based unit importance in rounds (Dery et al. 2024), then the
attention/MLP split chosen by held-out loss after the job's refit."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from pruning.compensation.least_squares import LS_FIT_FORWARDS
from pruning.methods.base import FinishSize, MethodContext, MethodResult, PruningMethod, register_method
from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.bonsai.rounds import Snapshot, run_rounds, sub_models_per_round
from pruning.methods.bonsai.split_search import held_out_split, search_split


@register_method
class Bonsai(PruningMethod):
    name = "bonsai"
    replicated_scoring = True  # a round's sub-models are scored across the ranks' replicas
    paced_by_deadline = True  # its rounds' sub-models are sized from the measured pace
    options: BonsaiOptions

    def planned_work(
        self, sequences: int, seq_len: int, refit: bool, replicas: int = 1, units: int = 0
    ) -> dict[str, float]:
        """Forward-token equivalents: the rounds (a prior pass and the sub-models each, these shared
        across the replicas) and the search."""
        opts = self.options
        per_sub_model = min(opts.scoring_sequences, sequences) * seq_len
        prior = min(opts.prior_sequences or sequences, sequences) * seq_len
        sub_models = sub_models_per_round(opts, units)
        rounds = opts.rounds * (prior + sub_models * per_sub_model / replicas)
        if opts.kind_split != "search":
            return {"scoring": rounds}
        fit, held_out = held_out_split(torch.arange(sequences), opts.split_fit_sequences)
        refit_tokens = LS_FIT_FORWARDS * len(fit) * seq_len if refit else 0.0
        judged = len(held_out) * seq_len + refit_tokens  # a candidate judged with the job's refit
        candidates = opts.split_candidates + 2 + int(refit and opts.refit_aware)  # grid, rounds, prior
        if refit and opts.split_finalists is not None:  # one shared Gram pass, a held-out pass each
            search = float(len(fit) * seq_len + candidates * len(held_out) * seq_len)
            search += (opts.split_finalists > 1) * opts.split_finalists * judged
        else:
            search = candidates * judged + (refit and opts.refit_aware) * len(fit) * seq_len
        if refit and opts.refit_aware:  # the winner's Grams on every sequence
            search += sequences * seq_len
        return {"scoring": rounds, "search": search}

    def run(self, ctx: MethodContext) -> MethodResult:
        return self.run_sizes(ctx, [ctx.target_params])[0]()

    def run_sizes(self, ctx: MethodContext, params_to_remove: list[float]) -> list[FinishSize]:
        """The rounds run once, as a job at the largest size alone would run them; a round whose slice
        passes a smaller size removes up to it first and snapshots the keep-vector and importances there,
        then the rest of its slice. So the largest size's rounds are exactly the single job's, and a
        smaller one's are that job's up to where the removal reached it (fewer re-estimates than a job at
        that size alone). Each size's split search runs when its result is asked for."""
        largest, smaller = params_to_remove[-1], params_to_remove[:-1]
        outcome = run_rounds(replace(ctx, target_params=largest), self.options, smaller)
        return [
            self._finish(replace(ctx, target_params=params), snapshot, outcome.dense_prior)
            for params, snapshot in zip(params_to_remove, outcome.snapshots, strict=True)
        ]

    def _finish(self, ctx: MethodContext, snapshot: Snapshot, dense_prior: torch.Tensor) -> FinishSize:
        """One size's result from its snapshot: the split search, when the job asks for it."""

        def finish() -> MethodResult:
            details: dict[str, Any] = {"rounds": snapshot.history}
            keep = snapshot.keep
            if self.options.kind_split == "search":
                start = time.perf_counter()
                ctx.progress.enter("search")
                keep, details["split_search"] = search_split(
                    ctx, self.options, keep, snapshot.importance, dense_prior
                )
                details["split_search_s"] = round(time.perf_counter() - start, 3)
            return MethodResult(keep, snapshot.importance, details)

        return finish
