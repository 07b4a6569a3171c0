"""The job's plan and progress: fractions of the whole job, ETA, and sub-models sized to a deadline."""

from __future__ import annotations

from typing import Any

import pytest

from pruning.runtime.progress import MIN_SUB_MODELS, JobProgress, ScoringPace


def tracker(min_interval_s: float = 0.0) -> tuple[JobProgress, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    return JobProgress(events.append, min_interval_s=min_interval_s), events


def test_no_progress_is_told_before_there_is_a_plan() -> None:
    progress, events = tracker()
    progress.enter("load")
    progress.advance(0.5)
    assert events == []


def test_fraction_and_eta_follow_the_plan_and_the_stage_fraction() -> None:
    progress, events = tracker()
    progress.set_plan({"scoring": 30.0, "compensate": 10.0, "evaluate_pruned": 10.0})
    assert events[-1] == {
        "type": "plan",
        "expected_s": 50.0,
        "stage_s": {"scoring": 30.0, "compensate": 10.0, "evaluate_pruned": 10.0},
    }
    progress.enter("scoring")
    progress.advance(0.5, round=1, rounds=2)
    last = events[-1]
    assert (last["type"], last["stage"], last["round"], last["rounds"]) == ("progress", "scoring", 1, 2)
    assert last["fraction"] == pytest.approx(15.0 / 50.0, abs=1e-3)
    assert last["eta_s"] == pytest.approx(35.0, abs=0.1)  # nothing finished yet: the plan's own pace


def test_eta_scales_with_how_the_finished_stages_compared_to_their_plan() -> None:
    progress, _ = tracker()
    progress.set_plan({"scoring": 1.0, "compensate": 10.0})
    progress.enter("scoring")
    progress.actual["scoring"] = 2.0  # twice as slow as planned
    progress.stage, progress.stage_fraction = "compensate", 0.0
    assert progress.speed() == pytest.approx(2.0)
    assert progress.eta_s() == pytest.approx(20.0)
    assert progress.seconds_after("scoring") == pytest.approx(20.0)


def test_eta_follows_the_running_stage_once_it_is_under_way() -> None:
    progress, events = tracker()
    progress.set_plan({"scoring": 30.0, "compensate": 20.0})
    progress.enter("scoring")
    progress._stage_start -= 4.0  # 4 s in, 40% done: the stage runs at a third of its planned time
    progress.advance(0.4)
    assert progress.running_speed() == pytest.approx(4.0 / 12.0, rel=1e-2)
    # the stage's own pace for what is left of it; later stages as planned (nothing finished yet)
    assert events[-1]["eta_s"] == pytest.approx(18.0 / 3.0 + 20.0, rel=1e-2)


def test_progress_never_moves_back_and_ends_at_one() -> None:
    progress, events = tracker()
    progress.set_plan({"scoring": 10.0, "export": 1.0})
    progress.enter("scoring")
    progress.advance(0.9)
    progress.set_plan({"scoring": 100.0})  # re-planned far longer: the computed fraction drops
    progress.advance(0.91)
    progress.enter("export")
    progress.finish()
    fractions = [e["fraction"] for e in events if e["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["stage"] == "done" and events[-1]["eta_s"] == 0.0


def test_progress_events_are_throttled_except_stage_changes_and_completion() -> None:
    progress, events = tracker(min_interval_s=3600.0)
    progress.set_plan({"scoring": 10.0})
    progress.enter("scoring")
    for step in range(1, 10):
        progress.advance(step / 10)
    progress.advance(1.0)
    assert [e.get("fraction") for e in events if e["type"] == "progress"] == [0.0, 1.0]


def test_token_counted_stages_advance_with_the_forward_passes() -> None:
    progress, events = tracker()
    progress.set_plan({"evaluate_pruned": 10.0})
    progress.enter("evaluate_pruned")
    progress.expect_tokens(400)
    progress.tokens(100)
    assert progress.stage_fraction == pytest.approx(0.25)
    progress.tokens(300)
    assert progress.stage_fraction == pytest.approx(1.0)


def paced(limit_s: float, after_s: float) -> tuple[JobProgress, list[dict[str, Any]]]:
    """A tracker with `after_s` planned after the rounds and a deadline `limit_s` from its start."""
    progress, events = tracker()
    progress.set_plan({"scoring": 0.0, "search": 0.75 * after_s, "compensate": 0.25 * after_s})
    progress.deadline = progress.start + limit_s
    return progress, events


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
    assert progress.sub_models_per_round(2, pace(0.1, prior_s=4.0)) in (362, 364)


def test_a_deadline_too_close_still_scores_the_minimum_and_says_so() -> None:
    progress, events = paced(limit_s=10.0, after_s=50.0)
    assert progress.sub_models_per_round(3, pace(0.5)) == MIN_SUB_MODELS
    assert events[-1]["type"] == "warning" and "time limit" in events[-1]["message"]


def test_a_round_runs_to_the_end_of_its_share_of_the_time_and_no_further() -> None:
    progress, _ = paced(limit_s=100.0, after_s=20.0)
    progress.sub_models_per_round(2, pace(0.1))  # two rounds share 97 - 20 s: 38.5 s each
    assert progress.round_share == pytest.approx(38.5, abs=0.1)
    assert not progress.out_of_time(pace(0.1), rounds_after=1)  # just begun
    assert progress.round_end is not None
    progress.round_end -= 38.5 + 1.0  # 1 s past its share: within OVERRUN of it (1.9 s)
    assert not progress.out_of_time(pace(0.1), rounds_after=1)
    progress.round_end -= 2.0  # 3 s past: stop, whatever is left of its sub-models
    assert progress.out_of_time(pace(0.1), rounds_after=1)


def test_a_round_stops_when_even_the_minimum_after_it_would_overrun() -> None:
    progress, _ = paced(limit_s=100.0, after_s=20.0)
    progress.deadline = progress.start + 10.0  # the stages after the rounds alone need 20 s
    assert progress.out_of_time(pace(0.1), rounds_after=0)
    untimed, _ = tracker()
    assert not untimed.out_of_time(pace(1.0), rounds_after=5)  # no deadline
