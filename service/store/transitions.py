"""Status changes: one conditional UPDATE whose row count says who won, and its events if it did.

Every status change of a job (claim, cancel, finish, requeue, reap) goes through `transition`, so each
writes its status event the same way, in the same transaction as the change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from service.schemas.events import PlacementEvent, WarningEvent
from service.store.events import event_row, status_event
from service.store.tables import JobRow


def transition(
    s: Session,
    job_id: str,
    from_statuses: Iterable[str],
    *where: ColumnElement[bool],
    note: WarningEvent | PlacementEvent | None = None,
    **values: Any,
) -> bool:
    """Set `values` on the job if its status is one of `from_statuses` and every `where` term holds, in
    the caller's transaction; its status event (and `note`, an extra event) only if the UPDATE won."""
    result = s.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_(tuple(from_statuses)), *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if "status" in values:
        s.add(event_row(job_id, status_event(values)))
    if note is not None:
        s.add(event_row(job_id, note))
    return True


def back_to_queue() -> dict[str, Any]:
    """The columns that give a job back to the queue (the attempt count stays: it bounds requeues)."""
    return {
        "status": "queued",
        "worker_id": None,
        "pid": None,
        "started_at": None,
        "progress": {},
        "computing": False,
    }


def ended(status: str, **values: Any) -> dict[str, Any]:
    """The columns of a job that ends with `status` (and `values`: its error, metrics or artifacts)."""
    return {"status": status, "finished_at": time.time(), "pid": None, **values}
