"""The job's plan and progress: fractions of the whole job and the ETA."""

from __future__ import annotations

from typing import Any

import pytest

from pruning.runtime.progress import JobProgress


def tracker(min_interval_s: float = 0.0) -> tuple[JobProgress, list[Any]]:
    events: list[Any] = []
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
