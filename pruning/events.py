"""What a job tells its caller as it runs: typed events, and the one sink type that receives them.

Events are plain dicts at run time (a library caller, the CLI's progress bar and the service's job log
all take them as JSON objects), typed here so that every producer builds them the same way:

    {"type": "stage", "stage": "scoring"}
    {"type": "plan", "expected_s": 612.0, "stage_s": {...}, "budget": "fast", ...}
    {"type": "progress", "stage": "scoring", "fraction": 0.42, "eta_s": 301.5, "round": 2, "rounds": 3}
    {"type": "warning", "message": "..."}
    {"type": "metric", "name": "perplexity_before", "value": 17.2}

Torch-free: the service's API process reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypedDict

from typing_extensions import NotRequired


class StageEvent(TypedDict):
    """A stage begins (`done` once the job has ended)."""

    type: Literal["stage"]
    stage: str


class PlanEvent(TypedDict):
    """How long the job should take, by stage; sent once the dense model was measured, and again when
    a time limit resizes the rounds."""

    type: Literal["plan"]
    expected_s: float
    stage_s: dict[str, float]
    budget: NotRequired[str]
    time_limit_s: NotRequired[float | None]
    sub_models_per_round: NotRequired[int]


class ProgressEvent(TypedDict):
    """How far the whole job is (`fraction` never moves back) and when it should end."""

    type: Literal["progress"]
    stage: str | None
    fraction: float
    eta_s: float
    round: NotRequired[int]  # bonsai's scoring round, of `rounds`
    rounds: NotRequired[int]
    candidate: NotRequired[int]  # bonsai's split search: the candidate judged, of `candidates`
    candidates: NotRequired[int]
    step: NotRequired[int]  # recovery: the optimizer step, of `steps`
    steps: NotRequired[int]


class WarningEvent(TypedDict):
    """Something the caller should know that does not stop the job."""

    type: Literal["warning"]
    message: str


class MetricEvent(TypedDict):
    """A quality figure as soon as it is measured: `<figure>_before`, `<figure>_after`, ..."""

    type: Literal["metric"]
    name: str
    value: float


Event = StageEvent | PlanEvent | ProgressEvent | WarningEvent | MetricEvent
EventSink = Callable[[Event], None]


def stage(name: str) -> StageEvent:
    return {"type": "stage", "stage": name}


def warning(message: str) -> WarningEvent:
    return {"type": "warning", "message": message}


def metric(name: str, value: float) -> MetricEvent:
    return {"type": "metric", "name": name, "value": value}


def silent(event: Event) -> None:
    """No one listens: the event is dropped."""
