"""A round's sampled sub-models, scored: each a keep-mask over the units, `per_forward` of them in one
forward pass (the batch replicated once per mask), and one forward per rank at each step when several
processes share the scoring (`pruning.runtime.distributed.World`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pruning.measure.probe import CalibrationProbe
from pruning.methods.bonsai.pacing import MIN_SUB_MODELS, RoundPacer
from pruning.methods.bonsai.regression import sample_antithetic_drops
from pruning.runtime.distributed import World
from pruning.runtime.progress import JobProgress


def sub_model_losses(
    probe: CalibrationProbe,
    keep: torch.Tensor,
    candidates: torch.Tensor,
    drops: torch.Tensor,
    batch: torch.Tensor,
) -> torch.Tensor:
    """[R] mean loss on `batch` of the R sub-models that drop `drops` [R, A] of the alive units
    `candidates` [A] from the model pruned to `keep` [U], in one forward pass."""
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


@dataclass
class RoundScorer:
    """Draws and scores the sub-models of each round, as many as the pacer allows, reporting progress."""

    probe: CalibrationProbe
    world: World
    pacer: RoundPacer
    progress: JobProgress
    per_forward: int  # sub-models per forward pass
    rounds: int

    def score(
        self,
        index: int,
        keep: torch.Tensor,
        candidates: torch.Tensor,
        probs: torch.Tensor,
        batch: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """([S, A] drops, [S] losses) of round `index`'s sub-models among the alive `candidates` [A],
        each unit dropped with `probs` [A]. Under a time limit their number is sized from the pace
        measured so far; before any is timed, one forward's worth on every rank runs first. How many
        is timing, so rank 0's count; every rank draws that many from the same `generator`."""
        pairs = self.world.decide(lambda: self.pacer.pairs(index))
        if pairs is not None:
            drops = sample_antithetic_drops(probs, pairs, generator)  # [S, A]
            losses = self._losses(index, keep, candidates, drops, batch, drops.shape[0])
            return drops[: losses.shape[0]], losses  # a round behind the time limit ends early
        first = sample_antithetic_drops(probs, max(1, self.per_forward * self.world.size // 2), generator)
        losses = self._losses(index, keep, candidates, first, batch, first.shape[0])
        more = (self.world.decide(lambda: self.pacer.pairs(index)) or 0) - first.shape[0] // 2
        if more <= 0:
            return first, losses
        rest = sample_antithetic_drops(probs, more, generator)
        total = first.shape[0] + rest.shape[0]
        rest_losses = self._losses(index, keep, candidates, rest, batch, total, first.shape[0])
        losses = torch.cat([losses, rest_losses])
        return torch.cat([first, rest])[: losses.shape[0]], losses

    def _losses(
        self,
        index: int,
        keep: torch.Tensor,
        candidates: torch.Tensor,
        drops: torch.Tensor,
        batch: torch.Tensor,
        round_total: int,
        first: int = 0,
    ) -> torch.Tensor:
        """[S] losses of `drops` [S, A], step by step; they are sub-models `first` onward of the round's
        `round_total` (for progress). Under a time limit rank 0 decides when the round stops."""
        step_size = self.per_forward * self.world.size  # one forward on every rank
        rounds_after = self.rounds - index - 1
        losses = []
        for start in range(0, drops.shape[0], step_size):
            began = time.perf_counter()
            step = drops[start : start + step_size]  # [≤ N·R, A]
            losses.append(
                step_losses(self.probe, self.world, keep, candidates, step, batch, self.per_forward)
            )
            self.pacer.pace.record(step.shape[0], time.perf_counter() - began)
            done = first + start + step.shape[0]
            self.progress.advance(
                (index + done / max(round_total, 1)) / self.rounds, round=index + 1, rounds=self.rounds
            )
            if done >= MIN_SUB_MODELS and self.world.decide(lambda: self.pacer.out_of_time(rounds_after)):
                break
        return torch.cat(losses)
