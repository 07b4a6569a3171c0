"""`bonsai`: perturbative, regression-based unit importance in rounds (Dery et al. 2024)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pruning.adapters.base import UnitKind
from pruning.distributed import World
from pruning.methods.base import MethodContext, MethodResult, PruningMethod, SizeResult
from pruning.probe import CalibrationProbe
from pruning.progress import LS_FIT_FORWARDS, MIN_SUB_MODELS, ScoringPace
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
    removed: float = 0.0  # parameters removed so far
    history: list[dict[str, Any]] = field(default_factory=list)
    pace: ScoringPace = field(default_factory=ScoringPace)  # sizes the rounds under a time limit


@dataclass
class _Snapshot:
    """The rounds' state when the removal reached one size: what that size's selection starts from."""

    keep: torch.Tensor  # [U] bool
    importance: torch.Tensor  # [U] float64
    history: list[dict[str, Any]]


class Bonsai(PruningMethod):
    name = "bonsai"
    options: BonsaiOptions

    def planned_work(self, sequences: int, seq_len: int, refit: bool, replicas: int = 1) -> dict[str, float]:
        """Forward-token equivalents: the rounds (a prior pass and the sub-models each, these shared
        across the replicas) and the search."""
        opts = self.options
        per_sub_model = min(opts.scoring_sequences, sequences) * seq_len
        prior = min(opts.prior_sequences or sequences, sequences) * seq_len
        rounds = opts.rounds * (prior + opts.samples_per_round * per_sub_model / replicas)
        if opts.kind_split != "search":
            return {"scoring": rounds}
        fit, held_out = held_out_split(torch.arange(sequences))
        candidate = len(held_out) * seq_len + (LS_FIT_FORWARDS * len(fit) * seq_len if refit else 0.0)
        search = (opts.split_candidates + 2) * candidate  # the grid, the rounds' own split, the prior's pick
        if refit and opts.refit_aware:  # one more candidate, its Grams, and the winner's on every sequence
            search += candidate + (len(fit) + sequences) * seq_len
        return {"scoring": rounds, "search": search}

    def run(self, ctx: MethodContext) -> MethodResult:
        return self.run_targets(ctx, [ctx.target_params])[0]()

    def run_targets(self, ctx: MethodContext, targets: list[float]) -> list[SizeResult]:
        """The rounds run once, as a job at the largest size alone would run them; a round whose slice
        passes a smaller size removes up to it first and snapshots the keep-vector and importances there,
        then the rest of its slice. So the largest size's rounds are exactly the single job's, and a
        smaller one's are that job's up to where the removal reached it (fewer re-estimates than a job at
        that size alone). Each size's split search runs when its result is asked for."""
        ctx = replace(ctx, target_params=targets[-1])
        snapshots: list[_Snapshot] = []
        state, dense_prior = self._rounds(ctx, targets[:-1], snapshots)
        snapshots.append(_Snapshot(state.keep, state.importance, state.history))
        return [
            self._size(replace(ctx, target_params=target), snapshot, dense_prior)
            for target, snapshot in zip(targets, snapshots, strict=True)
        ]

    def _rounds(
        self, ctx: MethodContext, stops: list[float], snapshots: list[_Snapshot]
    ) -> tuple[_Rounds, torch.Tensor]:
        """Run the rounds toward `ctx.target_params`, snapshotting at each of `stops` (smaller targets,
        ascending) on the way. Returns the final state and the dense model's activation prior."""
        opts = self.options
        state = _Rounds(
            keep=torch.ones(ctx.space.size, dtype=torch.bool),
            importance=torch.zeros(ctx.space.size, dtype=torch.float64),
            generator=torch.Generator().manual_seed(ctx.seed),
        )
        batches = _batches(ctx.probe.calibration, opts.scoring_sequences)
        dense_prior = self._prior(ctx, state)  # [U] all alive: round one's prior, and the search's
        pending = list(stops)
        for index in range(opts.rounds):
            prior = dense_prior if index == 0 else self._prior(ctx, state)
            began, forwards = time.perf_counter(), state.pace.forward_s
            self._round(ctx, state, index, prior, batches[index % len(batches)], pending, snapshots)
            state.pace.overhead_s = time.perf_counter() - began - (state.pace.forward_s - forwards)
        return state, dense_prior

    def _size(self, ctx: MethodContext, snapshot: _Snapshot, dense_prior: torch.Tensor) -> SizeResult:
        def finish() -> MethodResult:
            details: dict[str, Any] = {"rounds": snapshot.history}
            keep = snapshot.keep
            if self.options.kind_split == "search":
                start = time.perf_counter()
                ctx.progress.enter("search")
                keep, details["split_search"] = self._search_split(
                    ctx, keep, snapshot.importance, dense_prior
                )
                details["split_search_s"] = round(time.perf_counter() - start, 3)
            return MethodResult(keep, snapshot.importance, details)

        return finish

    def _prior(self, ctx: MethodContext, state: _Rounds) -> torch.Tensor:
        """[U] the activation prior with the alive units, timed (one calibration pass). Rank 0's, on
        every rank: the drop probabilities every rank draws by come from it."""
        start = time.perf_counter()
        sequences = ctx.probe.calibration[: self.options.prior_sequences]
        prior = ctx.world.decide(lambda: ctx.probe.activation_prior(state.keep, sequences))
        state.pace.prior_s = time.perf_counter() - start
        return prior

    def _round(
        self,
        ctx: MethodContext,
        state: _Rounds,
        index: int,
        prior: torch.Tensor,
        batch: torch.Tensor,
        stops: list[float] | None = None,
        snapshots: list[_Snapshot] | None = None,
    ) -> None:
        """Round `index`: sample sub-models among the alive units, regress their losses on the drops,
        remove a slice of the budget. `prior` [U] is the activation prior with the alive units. Each of
        `stops` (smaller targets, ascending) the slice reaches is taken off the list and snapshotted into
        `snapshots`."""
        opts, space = self.options, ctx.space
        budget = (ctx.target_params - state.removed) / (opts.rounds - index)
        candidates = state.keep.nonzero().flatten()  # [A]
        probs = drop_probabilities(
            prior[candidates] / space.params[candidates], opts.drop_fraction, opts.prior_bias
        )
        drops, losses = self._scored_sub_models(ctx, state, index, candidates, probs, batch)  # [S, A], [S]

        def regressed() -> torch.Tensor:
            scale = fit_prior_scale(drops, losses, prior[candidates], space.kind[candidates])
            return fit_importance(drops, losses, scale * prior[candidates], opts.ridge)

        # rank 0's: the ranks' solvers could differ in the last bits, and the removal follows from it
        state.importance[candidates] = ctx.world.decide(regressed)
        select = ctx.selector.select_per_kind if opts.kind_split == "proportional" else ctx.selector.select
        score = state.importance / space.params
        remove = torch.zeros_like(state.keep)

        def record(removed: torch.Tensor) -> dict[str, Any]:
            return {
                "round": index + 1,
                "sub_models": int(drops.shape[0]),
                "removed_units": int(removed.sum()),
                "removed_params": state.removed + float(space.params[removed].sum()),
                "mean_sub_model_loss": float(losses.mean()),
            }

        # a smaller size this slice passes: remove up to it first and snapshot there. Selecting in two
        # steps by the same scores removes what one step would (the ranking continues where it stopped)
        while stops and snapshots is not None and stops[0] <= state.removed + budget:
            target = stops.pop(0)
            taken = float(space.params[remove].sum())
            remove |= select(score, state.keep & ~remove, target - state.removed - taken)
            snapshots.append(
                _Snapshot(state.keep & ~remove, state.importance.clone(), [*state.history, record(remove)])
            )
        taken = float(space.params[remove].sum())
        remove |= select(score, state.keep & ~remove, budget - taken)
        # every rank's next sub-models are drawn among the same units: rank 0's removal (a sort on another
        # thread count may order tied scores otherwise)
        remove = ctx.world.agree(remove)
        state.keep &= ~remove
        state.history.append(record(remove))
        state.removed += float(space.params[remove].sum())

    def _scored_sub_models(
        self,
        ctx: MethodContext,
        state: _Rounds,
        index: int,
        candidates: torch.Tensor,
        probs: torch.Tensor,
        batch: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([S, A] drops, [S] losses) of this round's sub-models. Under a time limit their number is
        sized from the pace measured so far; before any is timed, one forward's worth runs first."""
        # how many is timing, so rank 0's count; every rank draws that many from the same generator
        pairs = ctx.world.decide(lambda: self._pairs(ctx, state, index))
        if pairs is not None:
            drops = sample_antithetic_drops(probs, pairs, state.generator)  # [S, A]
            losses = self._sub_model_losses(ctx, state, candidates, drops, batch, index, drops.shape[0])
            return drops[: losses.shape[0]], losses  # a round behind the time limit ends early
        step = self.options.masks_per_forward * ctx.world.size  # one forward on every rank
        first = sample_antithetic_drops(probs, max(1, step // 2), state.generator)
        losses = self._sub_model_losses(ctx, state, candidates, first, batch, index, first.shape[0])
        more = (ctx.world.decide(lambda: self._pairs(ctx, state, index)) or 0) - first.shape[0] // 2
        if more <= 0:
            return first, losses
        rest = sample_antithetic_drops(probs, more, state.generator)
        total = first.shape[0] + rest.shape[0]
        rest_losses = self._sub_model_losses(
            ctx, state, candidates, rest, batch, index, total, first.shape[0]
        )
        losses = torch.cat([losses, rest_losses])
        return torch.cat([first, rest])[: losses.shape[0]], losses

    def _pairs(self, ctx: MethodContext, state: _Rounds, index: int) -> int | None:
        """Antithetic pairs for round `index`: the option's, or under a time limit what the measured pace
        allows (None until a sub-model has been timed)."""
        if ctx.progress.deadline is None:
            return max(1, self.options.samples_per_round // 2)
        pace = state.pace
        per_sub_model = pace.per_sub_model()
        if per_sub_model is None:
            return None
        rounds_left = self.options.rounds - index
        sub_models = ctx.progress.sub_models_per_round(rounds_left, pace)
        spent = ctx.progress.elapsed_in_stage()
        planned = spent + rounds_left * (sub_models * per_sub_model + pace.overhead_s)
        ctx.progress.set_plan(
            {"scoring": planned + (rounds_left - 1) * pace.prior_s}, sub_models_per_round=sub_models
        )
        return sub_models // 2

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
        refit_aware = ctx.refit is not None and self.options.refit_aware
        keeps, refit_aware = _in_time(ctx, keeps, refit_aware)
        candidates: list[dict[str, Any]] = []
        kept: list[torch.Tensor] = []
        count = len(keeps) + int(refit_aware)
        if len(keeps) == 1 and not refit_aware:
            return keep, candidates  # no time to judge: the rounds' own split

        def score(ranking: str, k: torch.Tensor) -> None:
            same = next(
                (c for c, earlier in zip(candidates, kept, strict=True) if torch.equal(earlier, k)), None
            )

            def within(fraction: float) -> None:  # a candidate's refit takes most of its time
                ctx.progress.advance(
                    (len(kept) + fraction) / count, candidate=len(kept) + 1, candidates=count
                )

            loss = same["held_out_loss"] if same else held_out_loss(ctx, k, fit, held_out, within)
            candidates.append(
                {
                    "ranking": ranking,
                    "held_out_loss": loss,
                    "attention_fraction": removed_attention_fraction(space, k),
                }
            )
            kept.append(k)
            ctx.progress.advance(len(kept) / count, candidate=len(kept), candidates=count)

        for ranking, k in keeps:
            score(ranking, k)
        best = min(range(len(kept)), key=lambda i: candidates[i]["held_out_loss"])
        if ctx.refit is None or not refit_aware:
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
        round_total: int,
        first: int = 0,
    ) -> torch.Tensor:
        """[S] calibration loss of each sampled sub-model, `masks_per_forward` of them per forward and
        one forward per rank at each step; they are sub-models `first` onward of the round's
        `round_total` (for progress). Under a time limit rank 0 decides when the round stops."""
        per_forward, rounds, world = self.options.masks_per_forward, self.options.rounds, ctx.world
        losses = []
        for start in range(0, drops.shape[0], per_forward * world.size):
            began = time.perf_counter()
            step = drops[start : start + per_forward * world.size]  # [≤ N·R, A]
            losses.append(step_losses(ctx.probe, world, state.keep, candidates, step, batch, per_forward))
            state.pace.record(step.shape[0], time.perf_counter() - began)
            done = first + start + step.shape[0]
            ctx.progress.advance(
                (index + done / max(round_total, 1)) / rounds, round=index + 1, rounds=rounds
            )
            if done >= MIN_SUB_MODELS and world.decide(
                lambda: ctx.progress.out_of_time(state.pace, rounds - index - 1)
            ):
                break
        return torch.cat(losses)


def sub_model_losses(
    probe: CalibrationProbe,
    keep: torch.Tensor,
    candidates: torch.Tensor,
    drops: torch.Tensor,
    batch: torch.Tensor,
) -> torch.Tensor:
    """[R] loss on `batch` of each sub-model: the alive units `keep` [U] less those its row of `drops`
    [R, A] drops among `candidates` [A], all R in one forward (none for R = 0)."""
    if drops.shape[0] == 0:
        return torch.empty(0, dtype=torch.float64)
    masks = keep.double().repeat(drops.shape[0], 1)  # [R, U]
    masks[:, candidates] *= 1.0 - drops
    return probe.sub_model_losses(masks, batch)


def step_losses(
    probe: CalibrationProbe,
    world: World,
    keep: torch.Tensor,
    candidates: torch.Tensor,
    step: torch.Tensor,
    batch: torch.Tensor,
    per_forward: int,
) -> torch.Tensor:
    """[S] losses of one step's sub-models `step` [S ≤ N·per_forward, A], on every rank: each rank
    scores its forward's worth (`World.own_rows`, the forward one process would run for those rows)
    and receives the others'. Collective."""
    own = sub_model_losses(probe, keep, candidates, world.own_rows(step, per_forward), batch)
    return world.gather_rows(own, per_forward, step.shape[0])


def _in_time(
    ctx: MethodContext, keeps: list[tuple[str, torch.Tensor]], refit_aware: bool
) -> tuple[list[tuple[str, torch.Tensor]], bool]:
    """The search's candidates (and whether the refit-aware one runs) that fit before the deadline, if
    the job has one: each costs about the same (a fit and a held-out evaluation). The rounds' own split
    and the prior's pick (the safe one when little time was left for the rounds) come first, then the
    refit-aware choice, then the attention-fraction grid."""
    count = len(keeps) + int(refit_aware)
    affordable = ctx.progress.affordable("search", count)
    if affordable is None or affordable >= count:
        return keeps, refit_aware
    rounds, grid, prior = keeps[0], keeps[1:-1], keeps[-1]
    chosen = [rounds, prior][: max(affordable, 1)]
    refit_aware = refit_aware and affordable > len(chosen)
    chosen += grid[: max(0, affordable - len(chosen) - int(refit_aware))]
    ctx.progress.emit(
        {
            "type": "warning",
            "message": f"the time limit leaves room to judge {len(chosen) + int(refit_aware)} "
            f"of the split search's {count} candidates",
        }
    )
    return chosen, refit_aware


def held_out_loss(
    ctx: MethodContext,
    keep: torch.Tensor,
    fit: torch.Tensor,
    held_out: torch.Tensor,
    progress: Callable[[float], None] | None = None,
) -> float:
    """Mean loss on `held_out` of the model pruned to `keep`, refitted as the job will be (if it refits) on
    the sequences `fit` (`progress` told the fit's fraction done). Leaves no refit behind."""
    if ctx.refit is not None:
        ctx.refit.fit(keep, fit, progress=progress)
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
