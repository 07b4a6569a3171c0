"""A job's events: the ones the service writes (typed here), the engine's (`pruning.events`, received
by the job runner through the engine's one sink type), and how the API shows them.

The store writes every event through one function (`service.store.events.event_row`), whatever its
source: status changes, placements and warnings from the service, stage, plan, progress, metric and
warning events from the engine. An event is a `type` and its data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, TypedDict

from pydantic import BaseModel
from typing_extensions import NotRequired

from pruning.events import Event as EngineEvent


class ErrorDetail(TypedDict):
    code: str
    message: str | None


class StatusEvent(TypedDict):
    """The job's status changed; a failure says why."""

    type: Literal["status"]
    status: str
    error: NotRequired[ErrorDetail]


class PlacementEvent(TypedDict):
    """Where a claimed job runs: its worker, and the UUIDs of its GPUs (none: the CPU)."""

    type: Literal["placement"]
    worker: str
    gpus: list[str]


class WarningEvent(TypedDict):
    """Something the job's owner should know; `worker` names the worker it concerns, if any."""

    type: Literal["warning"]
    message: str
    worker: NotRequired[str]


ServiceEvent = StatusEvent | PlacementEvent | WarningEvent
JobEvent = ServiceEvent | EngineEvent  # the engine's are stored whole, as it sent them

# what names a machine or a process (worker ids hold host names and pids, GPUs go by UUID): admins only
WORKER_DETAILS = frozenset({"worker", "gpus", "hostname", "host", "pid"})


def shown_to_owner(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """An event's data as a job's owner sees it: where it ran is reduced to how many GPUs it holds."""
    shown = {key: value for key, value in data.items() if key not in WORKER_DETAILS}
    if event_type == "placement" and isinstance(data.get("gpus"), list):
        shown["gpu_count"] = len(data["gpus"])
    return shown


class EventPublic(BaseModel):
    seq: int
    created_at: datetime
    type: str
    data: dict[str, Any]


class EventList(BaseModel):
    data: list[EventPublic]
    next_after: int
