"""`bonsai`: perturbative, regression-based unit importance in rounds (Dery et al. 2024)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pruning.adapters.base import UnitKind
from pruning.methods.base import Eta, MethodContext, MethodResult, PruningMethod
from pruning.scoring.bonsai import (
    drop_probabilities,
    fit_importance,
    fit_prior_scale,
    sample_antithetic_drops,
)
from pruning.spec import BonsaiOptions
from pruning.units import UnitSpace


@dataclass
class _Rounds:
    """What carries from one round to the next."""

    keep: torch.Tensor  # [U] bool, the units still alive
    importance: torch.Tensor  # [U] float64, each unit's latest estimated loss increase
    generator: torch.Generator  # draws every round's sub-models
    eta: Eta
    removed: float = 0.0  # parameters removed so far
    history: list[dict[str, Any]] = field(default_factory=list)


class Bonsai(PruningMethod):
    name = "bonsai"
    options: BonsaiOptions

    def run(self, ctx: MethodContext) -> MethodResult:
        opts = self.options
        pairs = max(1, opts.samples_per_round // 2)
        state = _Rounds(
            keep=torch.ones(ctx.space.size, dtype=torch.bool),
            importance=torch.zeros(ctx.space.size, dtype=torch.float64),
            generator=torch.Generator().manual_seed(ctx.seed),
            eta=Eta(opts.rounds * (-(-2 * pairs // opts.masks_per_forward))),
        )
        batches = _batches(ctx.probe.calibration, opts.scoring_sequences)
        details: dict[str, Any] = {"rounds": state.history}
        dense_prior = ctx.probe.activation_prior(
            state.keep
        )  # [U] all alive: round one's prior, and the search's
        for index in range(opts.rounds):
            prior = dense_prior if index == 0 else ctx.probe.activation_prior(state.keep)
            self._round(ctx, state, index, prior, batches[index % len(batches)])
        keep = state.keep
        if opts.kind_split == "search":
            start = time.perf_counter()
            keep, details["split_search"] = self._search_split(ctx, keep, state.importance, dense_prior)
            details["split_search_s"] = round(time.perf_counter() - start, 3)
        return MethodResult(keep, state.importance, details)

    def _round(
        self, ctx: MethodContext, state: _Rounds, index: int, prior: torch.Tensor, batch: torch.Tensor
    ) -> None:
        """Round `index`: sample sub-models among the alive units, regress their losses on the drops,
        remove a slice of the budget. `prior` [U] is the activation prior with the alive units."""
        opts, space = self.options, ctx.space
        pairs = max(1, opts.samples_per_round // 2)
        budget = (ctx.target_params - state.removed) / (opts.rounds - index)
        candidates = state.keep.nonzero().flatten()  # [A]
        probs = drop_probabilities(
            prior[candidates] / space.params[candidates], opts.drop_fraction, opts.prior_bias
        )
        drops = sample_antithetic_drops(probs, pairs, state.generator)  # [S, A]
        losses = self._sub_model_losses(ctx, state, candidates, drops, batch, index)  # [S]
        scale = fit_prior_scale(drops, losses, prior[candidates], space.kind[candidates])
        state.importance[candidates] = fit_importance(
            drops, losses, scale * prior[candidates], opts.ridge
        )  # [A]
        select = ctx.selector.select_per_kind if opts.kind_split == "proportional" else ctx.selector.select
        remove = select(state.importance / space.params, state.keep, budget)
        state.keep &= ~remove
        removed_now = float(space.params[remove].sum())
        state.history.append(
            {
                "round": index + 1,
                "removed_units": int(remove.sum()),
                "removed_params": state.removed + removed_now,
                "mean_sub_model_loss": float(losses.mean()),
            }
        )
        state.removed += removed_now

    def _search_split(
        self, ctx: MethodContext, keep: torch.Tensor, importance: torch.Tensor, dense_prior: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Re-split the budget between attention and MLP by measurement: for the rounds' own result, a
        grid of attention fractions (units ranked within their kind by the rounds' importance) and the
        activation prior's own pick, fit the job's refit on 3/4 of the calibration set and keep the
        candidate with the lowest loss on the other quarter (held out: a refit scored on its own tokens
        looks far better than it is; docs/quality.md). With a refit, the winner is then tried with each
        module's units chosen for the refit (below). Returns the chosen keep-vector and every
        candidate's figures."""
        space, select_per_kind = ctx.space, ctx.selector.select_per_kind
        params = space.params
        sparsity = ctx.target_params / float(params.sum())
        fit, held_out = held_out_split(ctx.probe.calibration)
        alive = torch.ones(space.size, dtype=torch.bool)
        keeps = [("rounds", keep)] + [
            (
                "importance",
                ~select_per_kind(
                    importance / params, alive, ctx.target_params, attention_ratio=fraction / sparsity
                ),
            )
            for fraction in attention_fractions(space, ctx.target_params, self.options.split_candidates)
        ]
        # Σ‖x‖·‖W‖ of the dense model, each kind the same fraction in every layer (wanda-sp's pick): with a
        # refit its units are easier to replace than those bonsai ranks lowest at low sparsity
        keeps.append(
            (
                "prior, layer-uniform",
                ~select_per_kind(dense_prior / params, alive, ctx.target_params, uniform=True),
            )
        )
        candidates: list[dict[str, Any]] = []
        kept: list[torch.Tensor] = []

        def score(ranking: str, k: torch.Tensor) -> None:
            same = next(
                (c for c, earlier in zip(candidates, kept, strict=True) if torch.equal(earlier, k)), None
            )
            loss = same["held_out_loss"] if same else held_out_loss(ctx, k, fit, held_out)  # fitted once
            candidates.append(
                {
                    "ranking": ranking,
                    "held_out_loss": loss,
                    "attention_fraction": removed_attention_fraction(space, k),
                }
            )
            kept.append(k)

        for ranking, k in keeps:
            score(ranking, k)
        best = min(range(len(kept)), key=lambda i: candidates[i]["held_out_loss"])
        if ctx.refit is None or not self.options.refit_aware:
            return kept[best], candidates
        # the best split again, each group losing as many units, but those the refit replaces best
        # (structured OBS); a ranking by loss without a refit cannot see that. Judged with Grams of the
        # fit sequences only (the held-out ones would flatter it), and if it wins, chosen again with the
        # whole calibration set, as the final refit is fitted
        score(f"refit-aware, {candidates[best]['ranking']}", ctx.refit.refit_aware_keep(kept[best], fit))
        if candidates[-1]["held_out_loss"] >= candidates[best]["held_out_loss"]:
            return kept[best], candidates
        return ctx.refit.refit_aware_keep(kept[best]), candidates

    def _sub_model_losses(
        self,
        ctx: MethodContext,
        state: _Rounds,
        candidates: torch.Tensor,
        drops: torch.Tensor,
        batch: torch.Tensor,
        index: int,
    ) -> torch.Tensor:
        """[S] calibration loss of each sampled sub-model, `masks_per_forward` of them per forward."""
        per_forward = self.options.masks_per_forward
        losses = []
        for start in range(0, drops.shape[0], per_forward):
            chunk = drops[start : start + per_forward]  # [R, A]
            masks = state.keep.double().repeat(chunk.shape[0], 1)  # [R, U]
            masks[:, candidates] *= 1.0 - chunk
            losses.append(ctx.probe.sub_model_losses(masks, batch))
            eta_s = state.eta.step()
            ctx.progress(
                {
                    "round": index + 1,
                    "rounds": self.options.rounds,
                    "fraction": state.eta.done / state.eta.total,
                    "eta_s": round(eta_s, 1),
                }
            )
        return torch.cat(losses)


def held_out_loss(ctx: MethodContext, keep: torch.Tensor, fit: torch.Tensor, held_out: torch.Tensor) -> float:
    """Mean loss on `held_out` of the model pruned to `keep`, refitted as the job will be (if it refits) on
    the sequences `fit`. Leaves no refit behind."""
    if ctx.refit is not None:
        ctx.refit.fit(keep, fit)
    try:
        return ctx.probe.mean_loss(keep, held_out)
    finally:
        if ctx.refit is not None:
            ctx.refit.clear()


def _batches(calibration: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Disjoint scoring batches of `size` sequences; rounds cycle through them."""
    size = min(size, calibration.shape[0])
    return [calibration[i : i + size] for i in range(0, calibration.shape[0] - size + 1, size)]


def held_out_split(calibration: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held_out): the split search fits on the first 3/4 of the calibration sequences and scores
    on the last quarter; with fewer than 4 sequences none can be spared, so both are the whole set."""
    held = calibration.shape[0] // 4
    return (calibration[:-held], calibration[-held:]) if held else (calibration, calibration)


def attention_fractions(space: UnitSpace, target_params: float, count: int) -> list[float]:
    """The search's grid of attention fractions to remove, 0 up to 95% of the most the budget allows
    (the MLP takes the rest, so it is never left with nothing to remove)."""
    attention_params = float(space.params[space.kind == UnitKind.ATTN].sum())
    highest = min(1.0, target_params / attention_params) * 0.95
    return torch.linspace(0.0, highest, count).tolist()


def removed_attention_fraction(space: UnitSpace, keep: torch.Tensor) -> float:
    """Fraction of the attention parameters that `keep` removes."""
    attention = space.kind == UnitKind.ATTN
    return float(space.params[~keep & attention].sum()) / float(space.params[attention].sum())
