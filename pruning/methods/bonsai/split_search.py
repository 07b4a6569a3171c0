"""The attention/MLP split, chosen by measurement once the rounds have ranked the units.

The rounds' estimates rank units within a kind well, but their split of the budget between attention and
MLP follows the sub-models' losses without the refit the job applies afterwards. So, for the rounds' own
result, a grid of attention fractions (units ranked within their kind by the rounds' importance) and the
activation prior's layer-uniform pick, the job's refit is fitted on 3/4 of the calibration set and the
candidate with the lowest loss on the other quarter is kept (held out: a refit scored on its own tokens
looks far better than it is; docs/quality.md). With a refit, the winner is then tried with each module's
units chosen for the refit (structured OBS), kept if its held-out loss is lower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pruning import events
from pruning.methods.base import MethodContext
from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.bonsai.pacing import affordable
from pruning.model.adapters.base import UnitKind
from pruning.model.units import UnitSpace

Candidate = tuple[str, torch.Tensor]  # (how its units were ranked, [U] bool keep)


def search_split(
    ctx: MethodContext,
    opts: BonsaiOptions,
    keep: torch.Tensor,
    importance: torch.Tensor,
    dense_prior: torch.Tensor,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The chosen keep-vector [U] bool and every candidate's figures, from the rounds' `keep`, their
    `importance` [U] and the dense model's activation prior [U]."""
    keeps = split_candidates(ctx, opts, keep, importance, dense_prior)
    refit_aware = ctx.refit is not None and opts.refit_aware
    keeps, refit_aware = candidates_within_deadline(ctx, keeps, refit_aware)
    if len(keeps) == 1 and not refit_aware:
        return keep, []  # no time to judge: the rounds' own split
    finalists = opts.split_finalists if ctx.refit is not None else None
    judge = SplitJudge(
        ctx,
        count=len(keeps) + int(refit_aware) + (finalists or 0),
        shared=finalists is not None,
        fit_sequences=opts.split_fit_sequences,
    )
    for ranking, candidate in keeps:
        judge.judge(ranking, candidate)
    if refit_aware:
        # the best split again, each group losing as many units, but those the refit replaces best; a
        # ranking by loss without a refit cannot see that. Chosen with Grams of the fit sequences only
        # (the held-out ones would flatter it)
        assert ctx.refit is not None
        winner = judge.figures[judge.best()]
        reference = judge.kept[judge.best()]
        judge.judge(
            f"refit-aware, {winner['ranking']}", ctx.refit.refit_aware_keep(reference, judge.fit, judge.grams)
        )
    best = judge.best() if finalists is None else judge.best_of_finalists(finalists)
    chosen = judge.kept[best]
    if judge.figures[best]["ranking"].startswith("refit-aware") and ctx.refit is not None:
        # chosen again with the whole calibration set, as the final refit is fitted
        chosen = ctx.refit.refit_aware_keep(judge.references[best])
    return chosen, judge.figures


def split_candidates(
    ctx: MethodContext,
    opts: BonsaiOptions,
    keep: torch.Tensor,
    importance: torch.Tensor,
    dense_prior: torch.Tensor,
) -> list[Candidate]:
    """The rounds' own result, the attention-fraction grid ranked by `importance`, and the prior's
    layer-uniform pick, in that order."""
    space, select_per_kind = ctx.space, ctx.selector.select_per_kind
    sparsity = ctx.target_params / float(space.params.sum())
    alive = torch.ones(space.size, dtype=torch.bool)
    grid = [
        (
            "importance",
            ~select_per_kind(
                importance / space.params, alive, ctx.target_params, attention_ratio=fraction / sparsity
            ),
        )
        for fraction in attention_fractions(space, ctx.target_params, opts.split_candidates)
    ]
    # Σ‖x‖·‖W‖ of the dense model, each kind the same fraction in every layer (wanda-sp's pick): with a
    # refit its units are easier to replace than those bonsai ranks lowest at low sparsity
    prior_pick = ~select_per_kind(dense_prior / space.params, alive, ctx.target_params, uniform=True)
    return [("rounds", keep), *grid, ("prior, layer-uniform", prior_pick)]


def candidates_within_deadline(
    ctx: MethodContext, keeps: list[Candidate], refit_aware: bool
) -> tuple[list[Candidate], bool]:
    """The candidates (and whether the refit-aware one runs) that fit before the deadline, if the job
    has one: each costs about the same (a fit and a held-out evaluation). The rounds' own split and the
    prior's pick (the safe one when little time was left for the rounds) come first, then the
    refit-aware choice, then the attention-fraction grid."""
    count = len(keeps) + int(refit_aware)
    fits = affordable(ctx.progress, "search", count)
    if fits is None or fits >= count:
        return keeps, refit_aware
    rounds, grid, prior = keeps[0], keeps[1:-1], keeps[-1]
    chosen = [rounds, prior][: max(fits, 1)]
    refit_aware = refit_aware and fits > len(chosen)
    chosen += grid[: max(0, fits - len(chosen) - int(refit_aware))]
    ctx.progress.emit(
        events.warning(
            f"the time limit leaves room to judge {len(chosen) + int(refit_aware)} "
            f"of the split search's {count} candidates"
        )
    )
    return chosen, refit_aware


class SplitJudge:
    """Judges candidates by held-out loss after a refit: the job's own (sequential) one, or, `shared`, a
    one-shot refit from the dense input Grams every candidate shares (`LeastSquaresRefit.fit_one_shot`),
    the best of which are then judged again with the job's own (`best_of_finalists`). A candidate equal
    to one already judged reuses its figure. Each judgment is a step of the `search` stage."""

    def __init__(
        self, ctx: MethodContext, count: int, shared: bool, fit_sequences: int | None = None
    ) -> None:
        self.ctx, self.count = ctx, count
        self.fit, self.held_out = held_out_split(ctx.probe.calibration, fit_sequences)
        self.grams = ctx.refit.dense_grams(self.fit) if shared and ctx.refit is not None else None
        self.figures: list[dict[str, Any]] = []
        self.kept: list[torch.Tensor] = []
        self.references: list[torch.Tensor] = []  # what each refit-aware candidate was chosen from
        self._steps = 0

    @property
    def judged_key(self) -> str:
        """The figure candidates are compared by first: the one-shot refit's loss, or the job's refit's."""
        return "one_shot_loss" if self.grams is not None else "held_out_loss"

    def judge(self, ranking: str, keep: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        key = self.judged_key
        same = next((f for f, k in zip(self.figures, self.kept, strict=True) if torch.equal(k, keep)), None)
        if same is not None:
            loss = same[key]
        elif self.grams is not None:
            loss = one_shot_loss(self.ctx, keep, self.grams, self.held_out)
        else:
            loss = held_out_loss(self.ctx, keep, self.fit, self.held_out, self._within_candidate)
        self.figures.append(
            {
                "ranking": ranking,
                key: loss,
                "attention_fraction": removed_attention_fraction(self.ctx.space, keep),
            }
        )
        self.kept.append(keep)
        self.references.append(keep if reference is None else reference)
        self._step()

    def best(self) -> int:
        key = self.judged_key
        return min(range(len(self.kept)), key=lambda i: self.figures[i][key])

    def best_of_finalists(self, finalists: int) -> int:
        """The best by the job's own refit among the `finalists` distinct candidates the one-shot refit
        ranked best (one finalist: the one-shot refit's pick, no further judgment)."""
        if self.grams is None:
            return self.best()
        order = sorted(range(len(self.kept)), key=lambda i: self.figures[i]["one_shot_loss"])
        distinct: list[int] = []
        for index in order:
            if not any(torch.equal(self.kept[index], self.kept[j]) for j in distinct):
                distinct.append(index)
        if finalists == 1:
            return distinct[0]
        for index in distinct[:finalists]:
            self.figures[index]["held_out_loss"] = held_out_loss(
                self.ctx, self.kept[index], self.fit, self.held_out, self._within_candidate
            )
            self._step()
        return min(distinct[:finalists], key=lambda i: self.figures[i]["held_out_loss"])

    def _step(self) -> None:
        self._steps += 1
        self._advance(self._steps, self._steps)

    def _within_candidate(self, fraction: float) -> None:
        """A sequential refit takes most of a judgment's time: progress within it."""
        self._advance(self._steps + fraction, self._steps + 1)

    def _advance(self, done: float, candidate: int) -> None:
        self.ctx.progress.advance(min(done / self.count, 1.0), candidate=candidate, candidates=self.count)


def one_shot_loss(
    ctx: MethodContext, keep: torch.Tensor, grams: dict[Any, torch.Tensor], held_out: torch.Tensor
) -> float:
    """Mean loss on `held_out` of the model pruned to `keep` with the one-shot refit from `grams`. Leaves
    no refit behind."""
    assert ctx.refit is not None
    ctx.refit.fit_one_shot(keep, grams)
    try:
        return ctx.probe.mean_loss(keep, held_out)
    finally:
        ctx.refit.clear()


def held_out_loss(
    ctx: MethodContext,
    keep: torch.Tensor,
    fit: torch.Tensor,
    held_out: torch.Tensor,
    progress: Callable[[float], None] | None = None,
) -> float:
    """Mean loss on `held_out` of the model pruned to `keep`, refitted as the job will be (if it refits)
    on the sequences `fit` (`progress` told the fit's fraction done). Leaves no refit behind."""
    if ctx.refit is not None:
        ctx.refit.fit(keep, fit, progress=progress)
    try:
        return ctx.probe.mean_loss(keep, held_out)
    finally:
        if ctx.refit is not None:
            ctx.refit.clear()


def held_out_split(
    calibration: torch.Tensor, fit_sequences: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held_out): the split search fits on the first 3/4 of the calibration sequences (the first
    `fit_sequences` of them, if fewer) and scores on the last quarter; with fewer than 4 sequences none
    can be spared, so both are the whole set."""
    held = calibration.shape[0] // 4
    fit, held_out = (calibration[:-held], calibration[-held:]) if held else (calibration, calibration)
    return fit[:fit_sequences], held_out


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
