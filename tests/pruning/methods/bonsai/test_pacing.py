"""bonsai's pacing under a time limit: sub-models per round, when a round stops, what the split search
can afford."""

from __future__ import annotations

from typing import Any

import pytest

from pruning.methods.bonsai.pacing import MIN_SUB_MODELS, RoundPacer, ScoringPace, affordable
from pruning.runtime.progress import JobProgress


def tracker(min_interval_s: float = 0.0) -> tuple[JobProgress, list[Any]]:
    events: list[Any] = []
    return JobProgress(events.append, min_interval_s=min_interval_s), events


def paced(limit_s: float, after_s: float) -> tuple[JobProgress, list[Any]]:
    """A tracker with `after_s` planned after the rounds and a deadline `limit_s` from its start."""
    progress, events = tracker()
    progress.set_plan({"scoring": 0.0, "search": 0.75 * after_s, "compensate": 0.25 * after_s})
    progress.deadline = progress.start + limit_s
    return progress, events


def pacer(progress: JobProgress, measured: ScoringPace) -> RoundPacer:
    paced_rounds = RoundPacer(progress, rounds=3, samples_per_round=64)
    paced_rounds.pace = measured
    return paced_rounds


def pace(per_sub_model_s: float, prior_s: float = 0.0, overhead_s: float = 0.0) -> ScoringPace:
    measured = ScoringPace()
    measured.record(10, 10 * per_sub_model_s)
    measured.prior_s, measured.overhead_s = prior_s, overhead_s
    return measured


def test_pace_is_the_median_of_the_latest_forwards() -> None:
    measured = ScoringPace(window=3)
    for seconds in (10.0, 1.0, 1.2, 0.8):  # a slow first forward leaves the window, and the median
        measured.record(4, seconds)
    assert measured.per_sub_model() == pytest.approx(0.25)
    assert measured.forward_s == pytest.approx(13.0)


def test_sub_models_fill_the_time_left_after_what_follows_the_rounds() -> None:
    progress, _ = paced(limit_s=100.0, after_s=20.0)
    # aimed 3 s early (MARGIN): 97 - 20 after the rounds - 4 for the last round's prior = 73 s for two
    # rounds' sub-models at 0.1 s each
    assert pacer(progress, pace(0.1, prior_s=4.0)).sub_models_per_round(2) in (362, 364)


def test_a_deadline_too_close_still_scores_the_minimum_and_says_so() -> None:
    progress, events = paced(limit_s=10.0, after_s=50.0)
    assert pacer(progress, pace(0.5)).sub_models_per_round(3) == MIN_SUB_MODELS
    assert events[-1]["type"] == "warning" and "time limit" in events[-1]["message"]


def test_a_round_runs_to_the_end_of_its_share_of_the_time_and_no_further() -> None:
    progress, _ = paced(limit_s=100.0, after_s=20.0)
    rounds = pacer(progress, pace(0.1))
    rounds.sub_models_per_round(2)  # two rounds share 97 - 20 s: 38.5 s each
    assert rounds.round_share == pytest.approx(38.5, abs=0.1)
    assert not rounds.out_of_time(rounds_after=1)  # just begun
    assert rounds.round_end is not None
    rounds.round_end -= 38.5 + 1.0  # 1 s past its share: within OVERRUN of it (1.9 s)
    assert not rounds.out_of_time(rounds_after=1)
    rounds.round_end -= 2.0  # 3 s past: stop, whatever is left of its sub-models
    assert rounds.out_of_time(rounds_after=1)


def test_a_round_stops_when_even_the_minimum_after_it_would_overrun() -> None:
    progress, _ = paced(limit_s=100.0, after_s=20.0)
    progress.deadline = progress.start + 10.0  # the stages after the rounds alone need 20 s
    assert pacer(progress, pace(0.1)).out_of_time(rounds_after=0)
    untimed, _ = tracker()
    assert not pacer(untimed, pace(1.0)).out_of_time(rounds_after=5)  # no deadline


def test_without_a_deadline_a_round_scores_its_option_s_sub_models() -> None:
    untimed, _ = tracker()
    assert pacer(untimed, ScoringPace()).pairs(index=0) == 32


def test_under_a_deadline_the_first_forward_is_timed_before_any_count() -> None:
    progress, events = paced(limit_s=100.0, after_s=20.0)
    assert pacer(progress, ScoringPace()).pairs(index=0) is None
    pairs = pacer(progress, pace(0.1)).pairs(index=1)  # two rounds left: 38.5 s each, 0.1 s a sub-model
    assert pairs in (192, 193)
    assert events[-1]["type"] == "plan" and events[-1]["sub_models_per_round"] == 2 * pairs


def test_the_split_search_judges_what_fits_before_the_deadline() -> None:
    progress, _ = paced(limit_s=100.0, after_s=20.0)
    progress.set_plan({"search": 40.0, "compensate": 5.0})  # 10 s a candidate, of 4
    assert affordable(progress, "search", 4) == 9  # 92 s left before the 5 s after it: room for more
    progress.deadline = progress.start + 30.0  # 30 - 0.9 - 5 s after the search: two candidates
    assert affordable(progress, "search", 4) == 2
    untimed, _ = tracker()
    assert affordable(untimed, "search", 4) is None
