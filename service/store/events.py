"""A job's event log: the one way an event is written, the status event of a change, and reads."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select, update

from pruning.events import Event as EngineEvent
from service.schemas.events import JobEvent, StatusEvent
from service.store.base import ACTIVE, Claim, StoreBase, fence
from service.store.tables import EventRow, JobRow

PROGRESS_KEYS = ("stage", "round", "rounds", "fraction", "eta_s")


def event_row(job_id: str, event: JobEvent, at: float | None = None) -> EventRow:
    """The row of any event, the service's or the engine's: its type, and the rest as its data."""
    return EventRow(
        job_id=job_id,
        created_at=time.time() if at is None else at,
        type=str(event.get("type", "event")),
        data={key: value for key, value in event.items() if key != "type"},
    )


def status_event(values: Mapping[str, Any]) -> StatusEvent:
    """The event of a change that sets the columns `values` (a status, and a failure's error)."""
    event = StatusEvent(type="status", status=str(values["status"]))
    if values.get("error_code"):
        event["error"] = {"code": str(values["error_code"]), "message": values.get("error_message")}
    return event


def progress_columns(event: EngineEvent) -> dict[str, Any]:
    """The job columns an engine event updates: any stage means computing has begun."""
    kind = event.get("type")
    if kind == "stage":
        return {"progress": {"stage": event.get("stage")}, "computing": True}
    if kind == "progress":
        return {"progress": {key: event.get(key) for key in PROGRESS_KEYS}}
    return {}


class EventQueries(StoreBase):
    def events(self, job_id: str, after: int, limit: int) -> Sequence[EventRow]:
        with self.session() as s:
            return s.scalars(
                select(EventRow)
                .where(EventRow.job_id == job_id, EventRow.seq > after)
                .order_by(EventRow.seq)
                .limit(limit)
            ).all()

    def record_event(
        self, job_id: str, event: EngineEvent, *, store_event: bool = True, claim: Claim | None = None
    ) -> bool:
        """An engine event: progress updates the job's progress; any stage means computing has begun.

        With `claim` (the job runner's), nothing is written unless that claim still holds the job, and the
        answer is False: the runner's job was taken from its worker and the runner must stop.
        """
        values = progress_columns(event)
        with self.session() as s, s.begin():
            query = update(JobRow).where(JobRow.id == job_id, *fence(claim))
            if claim is not None:
                query = query.where(JobRow.status.in_(ACTIVE))
            # a plain event changes no column, but the UPDATE is still the ownership check
            result = s.execute(query.values(**(values or {"attempts": JobRow.attempts})))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if store_event:
                s.add(event_row(job_id, event))
            return True
