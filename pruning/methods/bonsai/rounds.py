"""bonsai's rounds: each samples sub-models among the alive units, regresses their losses on which units
they dropped, and removes the slice of the budget the estimates rank lowest per parameter.

A round reads as its four steps: the drop probabilities from the activation prior, the scored sub-models
(`RoundScorer`: batching, ranks and the time limit), the regression (`regression.py`, rank 0's on every
rank) and the removal (the job's selection rules, rank 0's on every rank).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pruning.methods.base import MethodContext
from pruning.methods.bonsai.options import BonsaiOptions
from pruning.methods.bonsai.pacing import MAX_SUB_MODELS, RoundPacer
from pruning.methods.bonsai.regression import drop_probabilities, regressed_importance
from pruning.methods.bonsai.sub_models import RoundScorer


@dataclass
class RoundState:
    """What carries from one round to the next."""

    keep: torch.Tensor  # [U] bool, the units still alive
    importance: torch.Tensor  # [U] float64, each unit's latest estimated loss increase
    generator: torch.Generator  # draws every round's sub-models
    removed: float = 0.0  # parameters removed so far
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Snapshot:
    """The rounds' state when the removal reached one size: what that size's selection starts from."""

    keep: torch.Tensor  # [U] bool
    importance: torch.Tensor  # [U] float64
    history: list[dict[str, Any]]


@dataclass
class RoundsOutcome:
    """The rounds' final state, one snapshot per size (ascending, the last the final state's), and the
    dense model's activation prior [U] (what the split search also weighs)."""

    state: RoundState
    snapshots: list[Snapshot]
    dense_prior: torch.Tensor


def run_rounds(ctx: MethodContext, opts: BonsaiOptions, stops: list[float]) -> RoundsOutcome:
    """The rounds toward `ctx.target_params`, snapshotting at each of `stops` (smaller targets,
    ascending) on the way."""
    state = RoundState(
        keep=torch.ones(ctx.space.size, dtype=torch.bool),
        importance=torch.zeros(ctx.space.size, dtype=torch.float64),
        generator=torch.Generator().manual_seed(ctx.seed),
    )
    pacer = RoundPacer(ctx.progress, opts.rounds, sub_models_per_round(opts, ctx.space.size))
    scorer = RoundScorer(ctx.probe, ctx.world, pacer, ctx.progress, opts.masks_per_forward, opts.rounds)
    batches = scoring_batches(ctx.probe.calibration, opts.scoring_sequences)
    dense_prior = activation_prior(ctx, opts, state.keep, pacer)  # [U] all alive: round one's prior
    pending, snapshots = list(stops), list[Snapshot]()
    for index in range(opts.rounds):
        prior = dense_prior if index == 0 else activation_prior(ctx, opts, state.keep, pacer)
        began, forwards = time.perf_counter(), pacer.pace.forward_s
        one_round(ctx, opts, state, index, prior, batches[index % len(batches)], scorer, pending, snapshots)
        pacer.pace.overhead_s = time.perf_counter() - began - (pacer.pace.forward_s - forwards)
    snapshots.append(Snapshot(state.keep, state.importance, state.history))
    return RoundsOutcome(state, snapshots, dense_prior)


def sub_models_per_round(opts: BonsaiOptions, units: int) -> int:
    """Sub-models each round scores without a time limit: `samples_per_round`, or `samples_per_unit`
    times the prunable units where that is more (even: antithetic pairs; at most MAX_SUB_MODELS)."""
    count = opts.samples_per_round
    if opts.samples_per_unit is not None:
        count = max(count, math.ceil(opts.samples_per_unit * units))
    return min(count + count % 2, MAX_SUB_MODELS)


def activation_prior(
    ctx: MethodContext, opts: BonsaiOptions, keep: torch.Tensor, pacer: RoundPacer
) -> torch.Tensor:
    """[U] the activation prior with the alive units `keep`, timed (one calibration pass). Rank 0's, on
    every rank: the drop probabilities every rank draws by come from it."""
    start = time.perf_counter()
    sequences = ctx.probe.calibration[: opts.prior_sequences]
    prior = ctx.world.decide(lambda: ctx.probe.activation_prior(keep, sequences))
    pacer.pace.prior_s = time.perf_counter() - start
    return prior


def one_round(
    ctx: MethodContext,
    opts: BonsaiOptions,
    state: RoundState,
    index: int,
    prior: torch.Tensor,
    batch: torch.Tensor,
    scorer: RoundScorer,
    stops: list[float],
    snapshots: list[Snapshot],
) -> None:
    """Round `index`: sample sub-models among the alive units, regress their losses on the drops,
    remove a slice of the budget. `prior` [U] is the activation prior with the alive units. Each of
    `stops` (smaller targets, ascending) the slice reaches is taken off the list and snapshotted."""
    space = ctx.space
    removable = ctx.selector.removable
    # sub-models drop only units the job may remove: the others' estimates would not be used
    candidates = (state.keep if removable is None else state.keep & removable).nonzero().flatten()  # [A]
    probs = drop_probabilities(
        prior[candidates] / space.params[candidates], opts.drop_fraction, opts.prior_bias
    )
    drops, losses = scorer.score(index, state.keep, candidates, probs, batch, state.generator)  # [S, A], [S]
    # rank 0's: the ranks' solvers could differ in the last bits, and the removal follows from it
    state.importance[candidates] = ctx.world.decide(
        lambda: regressed_importance(drops, losses, prior[candidates], space.kind[candidates], opts.ridge)
    )
    budget = (ctx.target_params - state.removed) / (opts.rounds - index)
    record = _record(ctx, state, index, drops, losses)
    remove = removal(ctx, opts, state, budget, stops, snapshots, record)
    state.keep &= ~remove
    state.history.append(record(remove))
    state.removed += float(space.params[remove].sum())


def removal(
    ctx: MethodContext,
    opts: BonsaiOptions,
    state: RoundState,
    budget: float,
    stops: list[float],
    snapshots: list[Snapshot],
    record: Callable[[torch.Tensor], dict[str, Any]],
) -> torch.Tensor:
    """[U] bool, the units this round removes: `budget` parameters by lowest importance per parameter.
    A smaller size the slice passes is removed up to first and snapshotted there; selecting in two steps
    by the same scores removes what one step would (the ranking continues where it stopped)."""
    space = ctx.space
    select = ctx.selector.select_per_kind if opts.kind_split == "proportional" else ctx.selector.select
    score = state.importance / space.params
    remove = torch.zeros_like(state.keep)
    while stops and stops[0] <= state.removed + budget:
        target = stops.pop(0)
        taken = float(space.params[remove].sum())
        remove |= select(score, state.keep & ~remove, target - state.removed - taken)
        snapshots.append(
            Snapshot(state.keep & ~remove, state.importance.clone(), [*state.history, record(remove)])
        )
    taken = float(space.params[remove].sum())
    remove |= select(score, state.keep & ~remove, budget - taken)
    # every rank's next sub-models are drawn among the same units: rank 0's removal (a sort on another
    # thread count may order tied scores otherwise)
    return ctx.world.agree(remove)


def _record(
    ctx: MethodContext, state: RoundState, index: int, drops: torch.Tensor, losses: torch.Tensor
) -> Callable[[torch.Tensor], dict[str, Any]]:
    """What the history keeps of round `index` once it removes `removed` [U] bool (called before the
    round's removal is added to `state.removed`)."""

    def record(removed: torch.Tensor) -> dict[str, Any]:
        return {
            "round": index + 1,
            "sub_models": int(drops.shape[0]),
            "removed_units": int(removed.sum()),
            "removed_params": state.removed + float(ctx.space.params[removed].sum()),
            "mean_sub_model_loss": float(losses.mean()),
        }

    return record


def scoring_batches(calibration: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Disjoint scoring batches of `size` sequences; rounds cycle through them."""
    size = min(size, calibration.shape[0])
    return [calibration[i : i + size] for i in range(0, calibration.shape[0] - size + 1, size)]
