"""How many sub-models bonsai's rounds score under a job's time limit, and when a round stops early.

Without a deadline a round scores `samples_per_round` sub-models. Under one, the first forward's worth is
timed, then each round gets its share of the time the deadline leaves after everything planned to follow
the rounds (`JobProgress.time_left_before`); a round behind its share stops early and the rounds after it
are sized again from what is left. The split search judges only the candidates that still fit.
"""

from __future__ import annotations

import statistics
import time
from collections import deque

from pruning import events
from pruning.runtime.progress import JobProgress

# per round under a time limit: fewer leave the regression's scale of the prior (per unit kind) to noise,
# and a kind whose scale comes out 0 looks free to remove
MIN_SUB_MODELS = 32
MAX_SUB_MODELS = 16384
# a round stops early only when it would overrun its share (or the limit) by more than OVERRUN of it:
# a band wide enough for the pace's ordinary wobble
OVERRUN = 0.05


class ScoringPace:
    """How fast the rounds go: seconds per sub-model (the median of the latest forwards, so that a slow
    first forward, or a burst of load, does not steer every later decision), per activation-prior pass,
    and per round outside both (the regression and the selection)."""

    def __init__(self, window: int = 16) -> None:
        self._recent: deque[float] = deque(maxlen=window)  # seconds per sub-model of each forward
        self.forward_s = 0.0  # all sub-model forwards so far
        self.prior_s = 0.0
        self.overhead_s = 0.0

    def record(self, sub_models: int, seconds: float) -> None:
        self._recent.append(seconds / max(sub_models, 1))
        self.forward_s += seconds

    def per_sub_model(self) -> float | None:
        return statistics.median(self._recent) if self._recent else None


class RoundPacer:
    """The rounds' sub-model counts against the job's plan (`progress`), from the measured `pace`."""

    def __init__(self, progress: JobProgress, rounds: int, samples_per_round: int) -> None:
        self.progress, self.rounds, self.samples_per_round = progress, rounds, samples_per_round
        self.pace = ScoringPace()
        self.round_end: float | None = None  # under a deadline: when the running round's share ends
        self.round_share = 0.0  # that share, in seconds

    def pairs(self, index: int) -> int | None:
        """Antithetic pairs for round `index`: the option's; under a time limit what the measured pace
        allows, under max_time the fewer of the two (None until a sub-model has been timed); announces
        the resized plan."""
        if self.progress.deadline is None:
            return max(1, self.samples_per_round // 2)
        per_sub_model = self.pace.per_sub_model()
        if per_sub_model is None:
            return None
        rounds_left = self.rounds - index
        sub_models = self.sub_models_per_round(rounds_left)
        if not self.progress.fill_to_deadline:  # a ceiling (max_time): never more than the job asked for
            sub_models = min(sub_models, self.samples_per_round)
        planned = self.progress.elapsed_in_stage() + rounds_left * (
            sub_models * per_sub_model + self.pace.overhead_s
        )
        self.progress.set_plan(
            {"scoring": planned + (rounds_left - 1) * self.pace.prior_s}, sub_models_per_round=sub_models
        )
        return sub_models // 2

    def sub_models_per_round(self, rounds_left: int) -> int:
        """Sub-models for each of the `rounds_left` rounds (this one's prior pass done) so that the job
        ends by the deadline; this round's share of the time ends at `round_end`. Even (antithetic
        pairs), at least MIN_SUB_MODELS."""
        pace = self.pace
        per_sub_model = pace.per_sub_model() or 1e-9
        other = (rounds_left - 1) * pace.prior_s + rounds_left * pace.overhead_s
        left = self.progress.time_left_before("scoring")
        assert left is not None, "sized only under a deadline"
        share = (left - other) / max(rounds_left, 1)
        self.round_end, self.round_share = time.perf_counter() + share, max(share, 0.0)
        per_round = int(share / per_sub_model)
        if per_round < MIN_SUB_MODELS:
            self.progress.emit(
                events.warning(
                    "the time limit leaves too little time for scoring; "
                    f"scoring {MIN_SUB_MODELS} sub-models per round, so the job will end late"
                )
            )
        return min(max(per_round - per_round % 2, MIN_SUB_MODELS), MAX_SUB_MODELS)

    def out_of_time(self, rounds_after: int) -> bool:
        """Whether the running round must stop before its sub-models are all scored: it has used its
        share of the time (by more than OVERRUN of the share: the pace fell behind, as when the machine
        slows down; the rounds after it are sized again from what is left), or even the minimum of the
        `rounds_after` rounds and the stages after them would now end clearly past the deadline."""
        deadline = self.progress.deadline
        if deadline is None:
            return False
        now = time.perf_counter()
        if self.round_end is not None and now > self.round_end + OVERRUN * self.round_share:
            return True
        pace = self.pace
        per_sub_model = pace.per_sub_model() or 0.0
        later = rounds_after * (MIN_SUB_MODELS * per_sub_model + pace.prior_s + pace.overhead_s)
        needed = pace.overhead_s + later + self.progress.seconds_after("scoring")
        return now + needed > deadline + OVERRUN * (deadline - self.progress.start)


def affordable(progress: JobProgress, stage: str, count: int) -> int | None:
    """How many of the `count` equal steps `stage` (as planned) can take before the deadline leaves just
    enough for the stages after it; None without a deadline."""
    left = progress.time_left_before(stage)
    if left is None:
        return None
    per_step = progress.planned.get(stage, 0.0) * progress.speed() / max(count, 1)
    return count if per_step <= 0 else max(0, int(left / per_step))


__all__ = ["MAX_SUB_MODELS", "MIN_SUB_MODELS", "OVERRUN", "RoundPacer", "ScoringPace", "affordable"]
