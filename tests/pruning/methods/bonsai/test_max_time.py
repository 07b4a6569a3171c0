"""max_time, the ceiling every service job runs under: bonsai's rounds keep the sub-models they were
asked for while those fit before the deadline, and only a deadline too close cuts them (time_limit, by
contrast, sizes them to fill its time)."""

from __future__ import annotations

from typing import Any

from pruning.methods.bonsai.pacing import RoundPacer, ScoringPace
from pruning.runtime.progress import JobProgress


def paced(limit_s: float, fill: bool) -> tuple[RoundPacer, list[Any]]:
    """Three rounds of 64 sub-models at 0.1 s each, 20 s planned after them, a deadline `limit_s` away."""
    events: list[Any] = []
    progress = JobProgress(events.append, min_interval_s=0.0)
    progress.set_plan({"scoring": 0.0, "search": 15.0, "compensate": 5.0})
    progress.deadline = progress.start + limit_s
    progress.fill_to_deadline = fill
    pacer = RoundPacer(progress, rounds=3, samples_per_round=64)
    pacer.pace = ScoringPace()
    pacer.pace.record(10, 1.0)
    return pacer, events


def test_under_max_time_a_round_keeps_its_sub_models_when_they_fit() -> None:
    ceiling, _ = paced(limit_s=100.0, fill=False)
    assert ceiling.pairs(index=1) == 32  # the option's 64 sub-models
    filled, _ = paced(limit_s=100.0, fill=True)  # time_limit: 97 - 20 s for two rounds, 385 each
    assert filled.pairs(index=1) in (192, 193)


def test_under_max_time_a_deadline_too_close_cuts_the_sub_models_to_fit() -> None:
    ceiling, events = paced(limit_s=30.0, fill=False)  # 29.1 - 20 s for two rounds: 45 sub-models each
    assert ceiling.pairs(index=1) == 22
    assert events[-1]["type"] == "plan" and events[-1]["sub_models_per_round"] == 44
