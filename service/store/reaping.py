"""Reaping: jobs whose worker stopped heartbeating are requeued, failed or cancelled, and what may still
be published is told apart from what never can.

Heartbeats and the reaper read the store's clock: on PostgreSQL the database server's, one for every host;
on SQLite (which has no server) each process's own, so heartbeats are stamped with the latest stamp when
that is ahead of the process's clock (`WorkerQueries._lease_now`). Either way clock skew cannot make a
live worker look dead; on SQLite it can delay the reaping of a dead one by the lead of the clock furthest
ahead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, select

from service.schemas.events import WarningEvent
from service.store.base import ACTIVE, StoreBase
from service.store.tables import JobRow, WorkerRow
from service.store.transitions import back_to_queue, ended, transition


@dataclass(frozen=True)
class Orphan:
    """An active job whose worker looked dead, as the reaper saw it when it listed the job."""

    id: str
    status: str
    worker_id: str | None
    attempts: int
    computing: bool


class ReapQueries(StoreBase):
    def _worker_alive(self, timeout_s: float) -> ColumnElement[bool]:
        """SQL: the job's worker has a heartbeat younger than `timeout_s` by the store's clock."""
        return exists().where(
            WorkerRow.id == JobRow.worker_id, WorkerRow.heartbeat_at >= self.now - timeout_s
        )

    def orphans(self, timeout_s: float) -> list[Orphan]:
        """Active jobs whose worker has sent no heartbeat for `timeout_s` (or has no worker row at all)."""
        query = select(JobRow.id, JobRow.status, JobRow.worker_id, JobRow.attempts, JobRow.computing).where(
            JobRow.status.in_(ACTIVE), ~self._worker_alive(timeout_s)
        )
        with self.session() as s:
            return [Orphan(*row) for row in s.execute(query).all()]

    def reap(self, orphan: Orphan, timeout_s: float, max_attempts: int = 2) -> bool:
        """Requeue, fail or cancel one orphan, in one UPDATE that re-checks what the decision rests on.

        A job whose worker died is requeued, whether or not it had started computing, until it has had
        `max_attempts` attempts; then it fails with `worker_lost`. So with the default of two, a worker
        killed mid-job loses nothing: its job is re-run once by another worker, and a job that kills
        every worker it runs on still ends. A job being cancelled is cancelled.

        The list may be out of date by now: the worker may have sent a heartbeat, or the job may have been
        requeued and claimed by another worker. Then the UPDATE matches nothing and the job stays as it is.
        """
        still = (
            JobRow.worker_id == orphan.worker_id
            if orphan.worker_id is not None
            else JobRow.worker_id.is_(None),
            JobRow.attempts == orphan.attempts,
            ~self._worker_alive(timeout_s),
        )
        # messages shown to the job's owner name no worker (its id holds a host name and a pid); the
        # warning event carries it for admins
        reason = f"its worker stopped sending heartbeats for over {timeout_s:g}s"
        note = None
        if orphan.status == "cancelling":
            values = ended("cancelled")
        elif orphan.attempts < max_attempts:
            redo = "; its computation starts over" if orphan.computing else ""
            message = f"{reason}; requeued after attempt {orphan.attempts} of {max_attempts}{redo}"
            note, values = WarningEvent(type="warning", message=message), back_to_queue()
            if orphan.worker_id is not None:
                note["worker"] = orphan.worker_id
        else:
            message = f"{reason}, in attempt {orphan.attempts} of {max_attempts}"
            values = ended("failed", error_code="worker_lost", error_message=message)
        with self.session() as s, s.begin():
            return transition(s, orphan.id, (orphan.status,), *still, note=note, **values)

    def reap_dead_workers(self, timeout_s: float, max_attempts: int = 2) -> list[str]:
        """Jobs held by workers that stopped heartbeating: requeued while attempts remain, then failed."""
        return [o.id for o in self.orphans(timeout_s) if self.reap(o, timeout_s, max_attempts)]

    def live_claims(self, timeout_s: float) -> set[tuple[str, int]]:
        """(job id, attempt) of every active job whose worker is alive by the database's clock."""
        query = select(JobRow.id, JobRow.attempts).where(
            JobRow.status.in_(ACTIVE), self._worker_alive(timeout_s)
        )
        with self.session() as s:
            return {(job_id, int(attempt)) for job_id, attempt in s.execute(query).all()}

    def publishable_attempts(self, job_ids: Iterable[str]) -> set[tuple[str, int]]:
        """(job id, attempt) of those of `job_ids` whose current attempt is running or has published.
        No other attempt's outputs can ever be published: the commit is fenced by the attempt number."""
        ids = list(job_ids)
        if not ids:
            return set()
        query = select(JobRow.id, JobRow.attempts).where(
            JobRow.id.in_(ids), JobRow.status.in_((*ACTIVE, "succeeded"))
        )
        with self.session() as s:
            return {(job_id, int(attempt)) for job_id, attempt in s.execute(query).all()}
