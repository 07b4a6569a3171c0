"""A job's plan and progress: how long each stage should take, how far the job is and when it will end.

Work is counted in forward-token equivalents (one token through the whole model once) and turned into
seconds by the rate measured on the dense model's evaluation; as stages finish, the ETA is scaled by how
their actual times compared with the plan. Events go to the job's sink as
{"type": "progress", "stage", "fraction" (of the whole job), "eta_s", ...} and {"type": "plan", ...}.
"""

from __future__ import annotations

import time
from typing import Any

from pruning.events import EventSink, PlanEvent, ProgressEvent

# the stages a job runs, in order; `search` is bonsai's split search, timed within `scoring`
STAGES = (
    "load",
    "data",
    "evaluate_dense",
    "scoring",
    "search",
    "compensate",
    "recover",
    "evaluate_pruned",
    "export",
)
# Work that a deadline bounds is sized to end MARGIN of the time limit early.
MARGIN = 0.03
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
        # time_limit: the work is sized to fill the time to the deadline; max_time (False): only cut to fit
        self.fill_to_deadline = True
        self._stage_tokens = self._stage_tokens_expected = 0.0
        self._reported = 0.0  # the fraction last reported: the bar never moves back when plans change

    # -- plan ------------------------------------------------------------------------------------------
    def set_plan(self, seconds: dict[str, float], **announce: Any) -> None:
        """Replace the planned seconds of the stages named (others keep theirs) and announce the plan."""
        self.planned.update(seconds)
        plan: PlanEvent = {
            "type": "plan",
            "expected_s": round(self.expected_s(), 1),
            "stage_s": {k: round(v, 1) for k, v in self.planned.items()},
            **announce,  # type: ignore[typeddict-item]
        }
        self.emit(plan)

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
        progress: ProgressEvent = {
            "type": "progress",
            "stage": self.stage,
            "fraction": self._reported,
            "eta_s": round(self.eta_s(), 1),
            **extra,  # type: ignore[typeddict-item]
        }
        self.emit(progress)

    def time_left_before(self, stage: str) -> float | None:
        """Seconds until the deadline, less MARGIN of the time limit and what the stages after `stage`
        are planned to take; None without a deadline."""
        if self.deadline is None:
            return None
        target = self.deadline - MARGIN * (self.deadline - self.start)
        return target - time.perf_counter() - self.seconds_after(stage)
