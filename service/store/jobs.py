"""Jobs: creation (idempotent, and never naming a deleted file), reads, and the status changes a user or
a worker asks for. Status changes are conditional UPDATEs (see `transitions`): the API, any number of
workers and the job runners can race on the same rows without locks held across calls."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.schemas.events import WarningEvent
from service.store.base import ACTIVE, TERMINAL, Claim, StoreBase, fence, lock_owner, visible_to
from service.store.events import event_row, status_event
from service.store.tables import EventRow, FileRow, JobRow
from service.store.transitions import back_to_queue, ended, transition


class FileGone(Exception):
    """A file the job names was deleted while the job was being created."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class QueueFull(Exception):
    """The key already has as many queued jobs as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this key already has {limit} queued jobs, the most it may have waiting")
        self.limit = limit


class JobQueries(StoreBase):
    def create_job(
        self, row: JobRow, file_ids: Sequence[str] = (), *, max_queued: int | None = None
    ) -> tuple[JobRow, bool]:
        """Insert `row`, or return the job already made with the same idempotency key: (job, created).

        Raises FileGone if one of `file_ids` was deleted meanwhile: the job is inserted before the files
        are read back (shared-locked on PostgreSQL), so a concurrent `delete_file` either sees the job or
        has already removed the row this transaction then misses. Raises QueueFull if the owner would
        have more than `max_queued` queued jobs: counted after the insert, under the owner's lock, so
        concurrent submits of one key (from any number of API processes) never pass the bound together.
        """
        if row.idempotency_key is not None:
            existing = self._by_idempotency_key(row.owner, row.idempotency_key)
            if existing is not None:
                return _same_request(existing, row), False
        try:
            with self.session() as s, s.begin():
                lock_owner(s, row.owner)
                s.add(row)
                s.flush()  # the job row must exist before its first event (foreign key)
                if max_queued is not None and self._queued(s, row.owner) > max_queued:
                    raise QueueFull(max_queued)  # rolls the job back
                s.add(event_row(row.id, status_event({"status": row.status}), at=row.created_at))
                s.flush()
                named = select(FileRow.id).where(FileRow.id.in_(file_ids)).with_for_update(read=True)
                found = set(s.scalars(named))
                missing = [file_id for file_id in file_ids if file_id not in found]
                if missing:
                    raise FileGone(missing[0])  # rolls the job back
        except IntegrityError:
            # a concurrent request with the same key won the insert
            if row.idempotency_key is None:
                raise
            existing = self._by_idempotency_key(row.owner, row.idempotency_key)
            if existing is None:
                raise
            return _same_request(existing, row), False
        return row, True

    def replayed_job(self, owner: str, key: str, request_hash: str) -> JobRow | None:
        """The job already made with this Idempotency-Key (None: none was); IdempotencyConflict if it was
        made from a different request."""
        existing = self._by_idempotency_key(owner, key)
        if existing is not None and existing.request_hash != request_hash:
            raise IdempotencyConflict
        return existing

    @staticmethod
    def _queued(s: Session, owner: str) -> int:
        query = (
            select(func.count()).select_from(JobRow).where(JobRow.owner == owner, JobRow.status == "queued")
        )
        return int(s.execute(query).scalar_one())

    def _by_idempotency_key(self, owner: str, key: str) -> JobRow | None:
        with self.session() as s:
            return s.scalars(
                select(JobRow).where(JobRow.owner == owner, JobRow.idempotency_key == key)
            ).first()

    def get_job(self, job_id: str, owner: str | None = None) -> JobRow | None:
        with self.session() as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).first()
        return visible_to(row, owner)

    def list_jobs(
        self, owner: str | None, *, status: str | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[Sequence[JobRow], bool]:
        """Newest first; `after` is the id of the last job of the previous page. Returns (jobs, has_more).
        An `after` that names no job of `owner`'s (none at all, or another key's) gives an empty page:
        another key's id answers as one that names nothing."""
        query = select(JobRow).order_by(JobRow.seq.desc()).limit(limit + 1)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if status is not None:
            query = query.where(JobRow.status == status)
        with self.session() as s:
            if after is not None:
                mine = () if owner is None else (JobRow.owner == owner,)
                cursor = s.scalars(select(JobRow.seq).where(JobRow.id == after, *mine)).first()
                if cursor is None:
                    return [], False
                query = query.where(JobRow.seq < cursor)
            rows = s.scalars(query).all()
        return rows[:limit], len(rows) > limit

    def jobs_of_worker(self, worker_id: str) -> Sequence[JobRow]:
        with self.session() as s:
            return s.scalars(
                select(JobRow).where(JobRow.worker_id == worker_id, JobRow.status.in_(ACTIVE))
            ).all()

    def job_statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Status by id of those of `job_ids` that exist."""
        ids = list(job_ids)
        if not ids:
            return {}
        with self.session() as s:
            return {
                job_id: status
                for job_id, status in s.execute(select(JobRow.id, JobRow.status).where(JobRow.id.in_(ids)))
            }

    def _transition(
        self,
        job_id: str,
        from_statuses: Iterable[str],
        *,
        claim: Claim | None = None,
        note: WarningEvent | None = None,
        on_won: Callable[[], None] | None = None,
        **values: Any,
    ) -> bool:
        """One fenced `transition` in a transaction of its own.

        `on_won` runs inside the transaction, after the UPDATE won and before the commit: while it runs
        the row stays locked, so nobody else can change the job, and if it raises nothing is committed.
        """
        with self.session() as s, s.begin():
            if not transition(s, job_id, from_statuses, *fence(claim), note=note, **values):
                return False
            if on_won is not None:
                s.flush()
                on_won()
            return True

    def request_cancel(self, job_id: str) -> None:
        """Queued jobs are cancelled at once; running ones go to `cancelling` for their worker to stop."""
        if not self._transition(job_id, ("queued",), **ended("cancelled")):
            self._transition(job_id, ("running",), status="cancelling")

    def delete_job(self, job_id: str) -> bool:
        with self.session() as s, s.begin():
            s.execute(delete(EventRow).where(EventRow.job_id == job_id))
            result = s.execute(
                delete(JobRow).where(JobRow.id == job_id, JobRow.status.in_(("queued", *TERMINAL)))
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def set_pid(self, job_id: str, pid: int | None, claim: Claim | None = None) -> bool:
        """Record the job process's pid; False when `claim` no longer holds the job."""
        with self.session() as s, s.begin():
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), *fence(claim))
                .values(pid=pid)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def owns(self, job_id: str, claim: Claim) -> bool:
        """Whether `claim` still holds the job (it is active under that worker and attempt)."""
        with self.session() as s:
            query = select(JobRow.id).where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), *fence(claim))
            return s.scalars(query).first() is not None

    def finish_job(
        self,
        job_id: str,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        artifacts: list[dict[str, Any]] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        from_statuses: Iterable[str] = ACTIVE,
        claim: Claim | None = None,
        on_won: Callable[[], None] | None = None,
    ) -> bool:
        """The job's final status; with `on_won` (publication), that runs before the status commits."""
        return self._transition(
            job_id,
            from_statuses,
            claim=claim,
            on_won=on_won,
            **ended(
                status,
                metrics=metrics,
                artifacts=artifacts,
                error_code=error_code,
                error_message=error_message,
            ),
        )

    def requeue(self, job_id: str, reason: str, claim: Claim | None = None) -> bool:
        """Give an active job back to the queue (the attempt count stays: it bounds requeues)."""
        note = WarningEvent(type="warning", message=reason)
        return self._transition(job_id, ACTIVE, claim=claim, note=note, **back_to_queue())


def _same_request(existing: JobRow, row: JobRow) -> JobRow:
    if existing.request_hash != row.request_hash:
        raise IdempotencyConflict
    return existing
