"""A job's plan and progress: how long each stage should take, how far the job is, when it will end, and
how many of bonsai's sub-models fit a time limit.

Work is counted in forward-token equivalents (one token through the whole model once) and turned into
seconds by the rate measured on the dense model's evaluation; as stages finish, the ETA is scaled by how
their actual times compared with the plan. Events go to the job's sink as
{"type": "progress", "stage", "fraction" (of the whole job), "eta_s", ...} and {"type": "plan", ...}.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

EventSink = Callable[[dict[str, Any]], None]  # receives stage, progress, plan, warning and metric events

# the stages a job runs, in order; `search` is bonsai's split search, timed within `scoring`
STAGES = ("load", "data", "evaluate_dense", "scoring", "search", "compensate", "evaluate_pruned", "export")
# An ls fit runs each decoder layer about four to five times over its sequences (the dense and pruned
# streams, each module's input, then both streams' outputs), without the LM head: its cost in forward
# passes over the same tokens (docs/performance.md, "Budgets").
LS_FIT_FORWARDS = 4.5
# per round under a time limit: fewer leave the regression's scale of the prior (per unit kind) to noise,
# and a kind whose scale comes out 0 looks free to remove
MIN_SUB_MODELS = 32
# Rounds are sized to end MARGIN of the time limit early, and one stops early only when it would overrun
# the limit by more than OVERRUN of it: a band wide enough for the pace's ordinary wobble.
MARGIN, OVERRUN = 0.03, 0.05
MAX_SUB_MODELS = 16384
# how far into a stage (of it, and in seconds) its own pace counts in the ETA: earlier, one slow first
# step would swing it
MEASURED_FRACTION, MEASURED_S = 0.02, 1.0


class JobProgress:
    """Planned seconds per stage, the stage running now and how far into it, as events."""

    def __init__(self, emit: EventSink, min_interval_s: float = 0.5) -> None:
        self.emit, self.min_interval_s = emit, min_interval_s
        self.planned: dict[str, float] = {}  # stage -> seconds
        self.actual: dict[str, float] = {}  # finished stage -> seconds
        self.stage: str | None = None
        self.stage_fraction = 0.0
        self._stage_start = self._last_emit = 0.0
        self.start = time.perf_counter()
        self.deadline: float | None = None  # perf_counter time the job must end by
        self.round_end: float | None = None  # under a deadline: when the running round's share ends
        self.round_share = 0.0  # that share, in seconds
        self._stage_tokens = self._stage_tokens_expected = 0.0
        self._reported = 0.0  # the fraction last reported: the bar never moves back when plans change

    # -- plan ------------------------------------------------------------------------------------------
    def set_plan(self, seconds: dict[str, float], **announce: Any) -> None:
        """Replace the planned seconds of the stages named (others keep theirs) and announce the plan."""
        self.planned.update(seconds)
        self.emit(
            {
                "type": "plan",
                "expected_s": round(self.expected_s(), 1),
                "stage_s": {k: round(v, 1) for k, v in self.planned.items()},
                **announce,
            }
        )

    def expected_s(self) -> float:
        """The whole job's expected duration: finished stages as they took, the rest as planned."""
        return sum(self.actual.get(stage, self.planned.get(stage, 0.0)) for stage in STAGES)

    def seconds_after(self, stage: str) -> float:
        """Planned seconds of the stages after `stage`, scaled by how the finished ones compared."""
        later = STAGES[STAGES.index(stage) + 1 :]
        return sum(self.planned.get(s, 0.0) for s in later) * self.speed()

    def speed(self) -> float:
        """Actual over planned time of the finished stages that had a plan (1 before any)."""
        planned = sum(self.planned[s] for s in self.actual if self.planned.get(s))
        actual = sum(self.actual[s] for s in self.actual if self.planned.get(s))
        return actual / planned if planned > 0 else 1.0

    def running_speed(self) -> float:
        """Actual over planned time of the running stage so far, once it is under way; before that, as
        the finished stages went. The plan's rates come from the dense evaluation's forwards, which can
        run at another rate than a stage's own (int8 scoring's batched forwards on a GPU: several times
        faster per token), so the running stage's own pace is what its ETA follows."""
        running = self.planned.get(self.stage or "", 0.0) * self.stage_fraction
        elapsed = self.elapsed_in_stage()
        if self.stage_fraction >= MEASURED_FRACTION and elapsed >= MEASURED_S and running > 0:
            return elapsed / running
        return self.speed()

    # -- progress --------------------------------------------------------------------------------------
    def enter(self, stage: str) -> None:
        """`stage` starts; the one before it is done."""
        now = time.perf_counter()
        if self.stage is not None:
            self.actual[self.stage] = self.actual.get(self.stage, 0.0) + now - self._stage_start
        self.stage, self.stage_fraction, self._stage_start = stage, 0.0, now
        self._stage_tokens = self._stage_tokens_expected = 0.0
        self._send(force=True)

    def elapsed_in_stage(self) -> float:
        return time.perf_counter() - self._stage_start

    def expect_tokens(self, tokens: float) -> None:
        """The current stage is this many forward tokens; its progress follows `tokens`."""
        self._stage_tokens_expected = float(tokens)

    def tokens(self, count: int) -> None:
        """`count` tokens went through the model (every forward pass reports here)."""
        if self._stage_tokens_expected > 0:
            self._stage_tokens += count
            self.advance(self._stage_tokens / self._stage_tokens_expected)

    def advance(self, fraction: float, **extra: Any) -> None:
        """The current stage is `fraction` done."""
        self.stage_fraction = min(max(fraction, 0.0), 1.0)
        self._send(force=fraction >= 1.0, **extra)

    def finish(self) -> None:
        if self.stage is not None:
            self.enter("done")
            self.stage = None

    def fraction(self) -> float:
        total = self.expected_s()
        if total <= 0 or self.stage is None or self.stage not in STAGES:
            return 1.0 if self.stage == "done" else 0.0
        done = sum(self.actual.get(s, 0.0) for s in STAGES[: STAGES.index(self.stage)])
        current = self.planned.get(self.stage, 0.0) * self.stage_fraction
        return min(1.0, (done + current) / total)

    def eta_s(self) -> float:
        if self.stage is None or self.stage not in STAGES:
            return 0.0
        current = self.planned.get(self.stage, 0.0) * (1.0 - self.stage_fraction)
        return current * self.running_speed() + self.seconds_after(self.stage)

    def _send(self, force: bool, **extra: Any) -> None:
        if not self.planned:  # no fraction or ETA to tell before the plan
            return
        now = time.perf_counter()
        if not force and now - self._last_emit < self.min_interval_s:
            return
        self._last_emit = now
        self._reported = max(self._reported, round(self.fraction(), 4))
        self.emit(
            {
                "type": "progress",
                "stage": self.stage,
                "fraction": self._reported,
                "eta_s": round(self.eta_s(), 1),
                **extra,
            }
        )

    # -- pacing ------------------------------------------------------------------------------------------
    def sub_models_per_round(self, rounds_left: int, pace: ScoringPace) -> int:
        """Sub-models for each of bonsai's `rounds_left` rounds (this one's prior pass done) so that the
        job ends by the deadline, from the measured pace and the planned seconds of everything after the
        rounds; this round's share of the time ends at `round_end`. Even (antithetic pairs), at least
        MIN_SUB_MODELS."""
        assert self.deadline is not None
        per_sub_model = pace.per_sub_model() or 1e-9
        other = (rounds_left - 1) * pace.prior_s + rounds_left * pace.overhead_s
        target = self.deadline - MARGIN * (self.deadline - self.start)
        now = time.perf_counter()
        available = target - now - self.seconds_after("scoring") - other
        share = available / max(rounds_left, 1)
        self.round_end, self.round_share = now + share, max(share, 0.0)
        per_round = int(share / per_sub_model)
        if per_round < MIN_SUB_MODELS:
            self.emit(
                {
                    "type": "warning",
                    "message": "the time limit leaves too little time for scoring; "
                    f"scoring {MIN_SUB_MODELS} sub-models per round, so the job will end late",
                }
            )
        return min(max(per_round - per_round % 2, MIN_SUB_MODELS), MAX_SUB_MODELS)

    def affordable(self, stage: str, count: int) -> int | None:
        """How many of the `count` equal steps the current stage (`stage`, as planned) can take before the
        deadline leaves just enough for the stages after it; None without a deadline."""
        if self.deadline is None:
            return None
        per_step = self.planned.get(stage, 0.0) * self.speed() / max(count, 1)
        target = self.deadline - MARGIN * (self.deadline - self.start)
        left = target - time.perf_counter() - self.seconds_after(stage)
        return count if per_step <= 0 else max(0, int(left / per_step))

    def out_of_time(self, pace: ScoringPace, rounds_after: int) -> bool:
        """Whether the running round must stop before its sub-models are all scored: it has used its
        share of the time (by more than OVERRUN of the share: the pace fell behind, as when the machine
        slows down; the rounds after it are sized again from what is left), or even the minimum of the
        `rounds_after` rounds and the stages after them would now end clearly past the deadline."""
        if self.deadline is None:
            return False
        now = time.perf_counter()
        if self.round_end is not None and now > self.round_end + OVERRUN * self.round_share:
            return True
        per_sub_model = pace.per_sub_model() or 0.0
        later = rounds_after * (MIN_SUB_MODELS * per_sub_model + pace.prior_s + pace.overhead_s)
        needed = pace.overhead_s + later + self.seconds_after("scoring")
        return now + needed > self.deadline + OVERRUN * (self.deadline - self.start)


class ScoringPace:
    """How fast bonsai's rounds go: seconds per sub-model (the median of the latest forwards, so that a
    slow first forward, or a burst of load, does not steer every later decision), per activation-prior
    pass, and per round outside both (the regression and the selection)."""

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
