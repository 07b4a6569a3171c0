"""The job store: every state change of files, jobs, events and workers goes through here.

Status changes are conditional UPDATEs (`WHERE status IN (...)`) whose row count says who won, so the
API, any number of workers and the job runners can race on the same rows without locks held across calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import EventRow, FileRow, JobRow, WorkerRow, make_engine, upgrade

ACTIVE = ("running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class Store:
    def __init__(self, url: str, *, migrate: bool = True) -> None:
        if migrate:
            upgrade(url)
        self.url = url
        self.engine: Engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    # files -----------------------------------------------------------------------------------------------
    def add_file(self, row: FileRow) -> FileRow:
        with self.session() as s, s.begin():
            s.add(row)
        return row

    def get_file(self, file_id: str, owner: str | None) -> FileRow | None:
        with self.session() as s:
            row = s.get(FileRow, file_id)
        return row if row is not None and (owner is None or row.owner == owner) else None

    def list_files(self, owner: str | None) -> Sequence[FileRow]:
        query = select(FileRow).order_by(FileRow.created_at.desc(), FileRow.id)
        if owner is not None:
            query = query.where(FileRow.owner == owner)
        with self.session() as s:
            return s.scalars(query).all()

    def file_in_use(self, file_id: str) -> bool:
        """Whether an unfinished job reads this file (it must not vanish under the job)."""
        with self.session() as s:
            jobs = s.scalars(select(JobRow).where(JobRow.status.in_(("queued", *ACTIVE)))).all()
        return any(file_id in (j.request.get("calibration_file"), j.request.get("eval_file")) for j in jobs)

    def delete_file(self, file_id: str) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(FileRow).where(FileRow.id == file_id))

    # jobs ------------------------------------------------------------------------------------------------
    def create_job(self, row: JobRow) -> tuple[JobRow, bool]:
        """Insert `row`, or return the job already made with the same idempotency key: (job, created)."""
        if row.idempotency_key is not None:
            existing = self._by_idempotency_key(row.owner, row.idempotency_key)
            if existing is not None:
                return self._same_request(existing, row), False
        try:
            with self.session() as s, s.begin():
                s.add(row)
                s.flush()  # the job row must exist before its first event (foreign key)
                s.add(
                    EventRow(
                        job_id=row.id, created_at=row.created_at, type="status", data={"status": "queued"}
                    )
                )
        except IntegrityError:
            # a concurrent request with the same key won the insert
            if row.idempotency_key is None:
                raise
            existing = self._by_idempotency_key(row.owner, row.idempotency_key)
            if existing is None:
                raise
            return self._same_request(existing, row), False
        return row, True

    @staticmethod
    def _same_request(existing: JobRow, row: JobRow) -> JobRow:
        if existing.request_hash != row.request_hash:
            raise IdempotencyConflict
        return existing

    def _by_idempotency_key(self, owner: str, key: str) -> JobRow | None:
        with self.session() as s:
            return s.scalars(
                select(JobRow).where(JobRow.owner == owner, JobRow.idempotency_key == key)
            ).first()

    def get_job(self, job_id: str, owner: str | None = None) -> JobRow | None:
        with self.session() as s:
            row = s.scalars(select(JobRow).where(JobRow.id == job_id)).first()
        return row if row is not None and (owner is None or row.owner == owner) else None

    def list_jobs(
        self, owner: str | None, *, status: str | None = None, limit: int = 50, after: str | None = None
    ) -> tuple[Sequence[JobRow], bool]:
        """Newest first; `after` is the id of the last job of the previous page. Returns (jobs, has_more)."""
        query = select(JobRow).order_by(JobRow.seq.desc()).limit(limit + 1)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if status is not None:
            query = query.where(JobRow.status == status)
        with self.session() as s:
            if after is not None:
                cursor = s.scalars(select(JobRow.seq).where(JobRow.id == after)).first()
                if cursor is None:
                    return [], False
                query = query.where(JobRow.seq < cursor)
            rows = s.scalars(query).all()
        return rows[:limit], len(rows) > limit

    def _transition(self, job_id: str, from_statuses: Iterable[str], **values: Any) -> bool:
        with self.session() as s, s.begin():
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(tuple(from_statuses)))
                .values(**values)
            )
            if result.rowcount == 1 and "status" in values:  # type: ignore[attr-defined]
                data: dict[str, Any] = {"status": values["status"]}
                if values.get("error_code"):
                    data["error"] = {"code": values["error_code"], "message": values.get("error_message")}
                s.add(EventRow(job_id=job_id, created_at=time.time(), type="status", data=data))
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def request_cancel(self, job_id: str) -> None:
        """Queued jobs are cancelled at once; running ones go to `cancelling` for their worker to stop."""
        if not self._transition(job_id, ("queued",), status="cancelled", finished_at=time.time()):
            self._transition(job_id, ("running",), status="cancelling")

    def delete_job(self, job_id: str) -> bool:
        with self.session() as s, s.begin():
            s.execute(delete(EventRow).where(EventRow.job_id == job_id))
            result = s.execute(
                delete(JobRow).where(JobRow.id == job_id, JobRow.status.in_(("queued", *TERMINAL)))
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def claim_job(self, worker_id: str) -> JobRow | None:
        """Atomically take the oldest queued job: the conditional UPDATE lets exactly one worker win it."""
        for _ in range(10):
            with self.session() as s:
                candidate = s.scalars(
                    select(JobRow.id).where(JobRow.status == "queued").order_by(JobRow.seq).limit(1)
                ).first()
            if candidate is None:
                return None
            if self._transition(
                candidate,
                ("queued",),
                status="running",
                worker_id=worker_id,
                started_at=time.time(),
                attempts=JobRow.attempts + 1,
                computing=False,
                pid=None,
            ):
                return self.get_job(candidate)
        return None

    def set_pid(self, job_id: str, pid: int | None) -> None:
        with self.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job_id).values(pid=pid))

    def record_event(self, job_id: str, event: dict[str, Any], *, store_event: bool = True) -> None:
        """An engine event: progress updates the job's progress; any stage means computing has begun."""
        now = time.time()
        kind = str(event.get("type", "event"))
        with self.session() as s, s.begin():
            job = s.scalars(select(JobRow).where(JobRow.id == job_id)).first()
            if job is None:
                return
            if kind == "stage":
                job.progress = {"stage": event.get("stage")}
                job.computing = True
            elif kind == "progress":
                job.progress = {
                    key: event.get(key) for key in ("stage", "round", "rounds", "fraction", "eta_s")
                }
            if store_event:
                s.add(
                    EventRow(
                        job_id=job_id,
                        created_at=now,
                        type=kind,
                        data={k: v for k, v in event.items() if k != "type"},
                    )
                )

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
    ) -> bool:
        return self._transition(
            job_id,
            from_statuses,
            status=status,
            finished_at=time.time(),
            metrics=metrics,
            artifacts=artifacts,
            error_code=error_code,
            error_message=error_message,
            pid=None,
        )

    def requeue(self, job_id: str, reason: str) -> bool:
        ok = self._transition(
            job_id,
            ACTIVE,
            status="queued",
            worker_id=None,
            pid=None,
            started_at=None,
            progress={},
            computing=False,
        )
        if ok:
            self.record_event(job_id, {"type": "warning", "message": reason})
        return ok

    def events(self, job_id: str, after: int, limit: int) -> Sequence[EventRow]:
        with self.session() as s:
            return s.scalars(
                select(EventRow)
                .where(EventRow.job_id == job_id, EventRow.seq > after)
                .order_by(EventRow.seq)
                .limit(limit)
            ).all()

    def jobs_of_worker(self, worker_id: str) -> Sequence[JobRow]:
        with self.session() as s:
            return s.scalars(
                select(JobRow).where(JobRow.worker_id == worker_id, JobRow.status.in_(ACTIVE))
            ).all()

    def reap_dead_workers(self, timeout_s: float, max_attempts: int = 2) -> list[str]:
        """Jobs held by workers that stopped heartbeating: requeue once if nothing was computed, else fail."""
        cutoff = time.time() - timeout_s
        with self.session() as s:
            alive = set(s.scalars(select(WorkerRow.id).where(WorkerRow.heartbeat_at >= cutoff)).all())
            orphans = [
                j
                for j in s.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE))).all()
                if j.worker_id not in alive
            ]
        reaped = []
        for job in orphans:
            reason = f"worker {job.worker_id} stopped sending heartbeats for over {timeout_s:g}s"
            if job.status == "cancelling":
                self.finish_job(job.id, "cancelled")
            elif not job.computing and job.attempts < max_attempts:
                self.requeue(job.id, f"{reason}; requeued because the job had not started computing")
            else:
                self.finish_job(job.id, "failed", error_code="worker_lost", error_message=reason)
            reaped.append(job.id)
        return reaped

    # workers ---------------------------------------------------------------------------------------------
    def heartbeat(self, row: WorkerRow) -> None:
        with self.session() as s, s.begin():
            s.merge(row)

    def remove_worker(self, worker_id: str) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def workers(self) -> Sequence[WorkerRow]:
        with self.session() as s:
            return s.scalars(select(WorkerRow)).all()

    # metrics ---------------------------------------------------------------------------------------------
    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    def finished_since(self, after: float | None) -> list[tuple[str, float, float]]:
        """(id, finished_at, run seconds) of finished jobs that ran, finished after `after` (None: all)."""
        query = select(JobRow.id, JobRow.started_at, JobRow.finished_at).where(
            JobRow.status.in_(TERMINAL), JobRow.started_at.is_not(None), JobRow.finished_at.is_not(None)
        )
        if after is not None:
            query = query.where(JobRow.finished_at > after)
        with self.session() as s:
            rows = s.execute(query.order_by(JobRow.finished_at)).all()
        return [
            (job_id, float(end), float(end) - float(start))
            for job_id, start, end in rows
            if start is not None and end is not None
        ]
