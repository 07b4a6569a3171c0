"""The job store: every state change of files, jobs, events and workers goes through here.

Status changes are conditional UPDATEs (`WHERE status IN (...)`) whose row count says who won, so the
API, any number of workers and the job runners can race on the same rows without locks held across calls.
Claims on PostgreSQL lock the oldest queued job that fits the worker with `FOR UPDATE SKIP LOCKED` and
take it in the same transaction, so workers claiming at once each get a different job without waiting.

A worker's claim on a job is a `Claim` (worker id and attempt number). Every change a worker or its job
runner makes to a claimed job is fenced by it: `WHERE id=? AND worker_id=? AND attempts=?`, so a worker
whose job was reaped and handed to another one changes nothing. Heartbeats and the reaper read the
database's clock, never a worker's, so clock skew between hosts cannot make a live worker look dead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import EventRow, FileRow, JobRow, WorkerRow, make_engine, upgrade

ACTIVE = ("running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


class FileGone(Exception):
    """A file the job names was deleted while the job was being created."""


class FileInUse(Exception):
    """An unfinished job reads the file."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


@dataclass(frozen=True)
class Claim:
    """Who runs a job: the worker that claimed it and the attempt number the claim gave it."""

    worker_id: str
    attempt: int


@dataclass(frozen=True)
class FreeGpu:
    """A GPU a worker can give to a job it claims: its UUID, and its total memory as NVML reports it."""

    uuid: str
    memory_total_bytes: int


@dataclass(frozen=True)
class Claimed:
    """A job a worker has just claimed, and the UUIDs of the GPUs it runs on (none: the CPU)."""

    job: JobRow
    gpus: tuple[str, ...]


def gpus_for(
    needed: int, min_memory_bytes: int | None, free: Sequence[FreeGpu], gpu_worker: bool
) -> tuple[str, ...] | None:
    """The GPUs of `free` a job gets, in the worker's order; None when the job does not fit.

    `needed` 0 asks for whatever the worker has: one GPU on a GPU worker, the CPU on a CPU-only one. A
    job that names a GPU memory floor wants a GPU, so a CPU-only worker takes neither it nor any job that
    asks for GPUs.
    """
    if not gpu_worker:
        return () if needed == 0 and min_memory_bytes is None else None
    big_enough = [gpu.uuid for gpu in free if gpu.memory_total_bytes >= (min_memory_bytes or 0)]
    count = max(needed, 1)
    return tuple(big_enough[:count]) if len(big_enough) >= count else None


def _fits(free: Sequence[FreeGpu], gpu_worker: bool) -> ColumnElement[bool]:
    """`gpus_for`'s rule as SQL over the jobs table, so a claim never locks or skips past a job it
    could run for the sake of an older one it cannot."""
    if not gpu_worker:
        return and_(JobRow.gpus == 0, JobRow.min_gpu_memory_bytes.is_(None))
    floor = func.coalesce(JobRow.min_gpu_memory_bytes, 0)
    big_enough: ColumnElement[int] = literal(0)
    for gpu in free:
        big_enough = big_enough + case((floor <= gpu.memory_total_bytes, 1), else_=0)
    needed = case((JobRow.gpus == 0, 1), else_=JobRow.gpus)
    return needed <= big_enough


def _oldest_fitting(free: Sequence[FreeGpu], gpu_worker: bool) -> Select[str, int, int | None]:
    """The oldest queued job the worker can run: its id and what it asks for."""
    return (
        select(JobRow.id, JobRow.gpus, JobRow.min_gpu_memory_bytes)
        .where(JobRow.status == "queued", _fits(free, gpu_worker))
        .order_by(JobRow.seq)
        .limit(1)
    )


@dataclass(frozen=True)
class Orphan:
    """An active job whose worker looked dead, as the reaper saw it when it listed the job."""

    id: str
    status: str
    worker_id: str | None
    attempts: int
    computing: bool


def db_clock(url: str) -> ColumnElement[float]:
    """The database server's time in epoch seconds, as an SQL expression (one clock for every host)."""
    if url.startswith("sqlite"):
        # julianday('now') works on every SQLite; unixepoch('subsec') needs 3.42
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
    # clock_timestamp, not now(): now() is frozen at the start of the transaction
    return literal_column("CAST(extract(epoch from clock_timestamp()) AS double precision)", Float)


class Store:
    def __init__(self, url: str, *, migrate: bool = True, busy_timeout_s: float = 30.0) -> None:
        if migrate:
            upgrade(url)
        self.url = url
        self.engine: Engine = make_engine(url, busy_timeout_s=busy_timeout_s)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.now: ColumnElement[float] = db_clock(url)

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

    @staticmethod
    def _jobs_reading(s: Session, file_id: str) -> bool:
        jobs = s.scalars(select(JobRow).where(JobRow.status.in_(("queued", *ACTIVE)))).all()
        return any(file_id in (j.request.get("calibration_file"), j.request.get("eval_file")) for j in jobs)

    def file_in_use(self, file_id: str) -> bool:
        """Whether an unfinished job reads this file (it must not vanish under the job)."""
        with self.session() as s:
            return self._jobs_reading(s, file_id)

    def delete_file(self, file_id: str) -> bool:
        """Delete the file's row unless an unfinished job reads it; False (nothing deleted) if one does.
        The DELETE comes first so that it and a concurrent `create_job` naming the file serialise on the
        row (PostgreSQL) or the write lock (SQLite): whichever commits second sees the other."""
        try:
            with self.session() as s, s.begin():
                s.execute(delete(FileRow).where(FileRow.id == file_id))
                if self._jobs_reading(s, file_id):
                    raise FileInUse(file_id)  # rolls the DELETE back
        except FileInUse:
            return False
        return True

    # jobs ------------------------------------------------------------------------------------------------
    def create_job(self, row: JobRow, file_ids: Sequence[str] = ()) -> tuple[JobRow, bool]:
        """Insert `row`, or return the job already made with the same idempotency key: (job, created).
        Raises FileGone if one of `file_ids` was deleted meanwhile: the job is inserted before the files
        are read back (shared-locked on PostgreSQL), so a concurrent `delete_file` either sees the job or
        has already removed the row this transaction then misses."""
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

    def _transition(
        self,
        job_id: str,
        from_statuses: Iterable[str],
        *,
        claim: Claim | None = None,
        note: dict[str, Any] | None = None,
        on_won: Callable[[], None] | None = None,
        **values: Any,
    ) -> bool:
        """One conditional UPDATE; its status event (and `note`, an extra event) only if it won.

        `on_won` runs inside the transaction, after the UPDATE won and before the commit: while it runs
        the row stays locked, so nobody else can change the job, and if it raises nothing is committed.
        """
        with self.session() as s, s.begin():
            if not self._update(s, job_id, from_statuses, claim=claim, note=note, **values):
                return False
            if on_won is not None:
                s.flush()
                on_won()
            return True

    @staticmethod
    def _update(
        s: Session,
        job_id: str,
        from_statuses: Iterable[str],
        *,
        claim: Claim | None = None,
        note: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        """`_transition`'s UPDATE and events, inside the caller's transaction."""
        result = s.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status.in_(tuple(from_statuses)), *_fence(claim))
            .values(**values)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        if "status" in values:
            data: dict[str, Any] = {"status": values["status"]}
            if values.get("error_code"):
                data["error"] = {"code": values["error_code"], "message": values.get("error_message")}
            s.add(EventRow(job_id=job_id, created_at=time.time(), type="status", data=data))
        if note is not None:
            s.add(_event_row(job_id, note))
        return True

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

    def claim_job(
        self, worker_id: str, free_gpus: Sequence[FreeGpu] = (), *, gpu_worker: bool = False
    ) -> Claimed | None:
        """Take the oldest queued job that fits the worker, with the GPUs of `free_gpus` it runs on.

        A worker with GPUs (`gpu_worker`, implied by any free GPU) runs every job on at least one of
        them, so with none free it takes nothing. Fitting follows `gpus_for`; among the jobs that fit,
        the oldest wins. The claim writes a `placement` event naming the worker and the GPUs.
        """
        gpu_worker = gpu_worker or bool(free_gpus)
        if gpu_worker and not free_gpus:
            return None
        if self.engine.dialect.name == "postgresql":
            return self._claim_skip_locked(worker_id, free_gpus, gpu_worker)
        return self._claim_conditional(worker_id, free_gpus, gpu_worker)

    def _claim_skip_locked(
        self, worker_id: str, free_gpus: Sequence[FreeGpu], gpu_worker: bool
    ) -> Claimed | None:
        """PostgreSQL: lock the oldest fitting queued row, skipping rows other claims hold locked, and
        take it in the same transaction: concurrent workers never wait on each other or race for a row."""
        with self.session() as s, s.begin():
            candidate = s.execute(
                _oldest_fitting(free_gpus, gpu_worker).with_for_update(skip_locked=True)
            ).first()
            if candidate is None:
                return None
            job_id, needed, min_memory = candidate
            gpus = gpus_for(needed, min_memory, free_gpus, gpu_worker)
            if gpus is None:  # the SQL filter and `gpus_for` disagree: leave the job for another worker
                return None
            if not self._update(
                s, job_id, ("queued",), note=_placement(worker_id, gpus), **_running(worker_id)
            ):
                return None
            return Claimed(s.scalars(select(JobRow).where(JobRow.id == job_id)).one(), gpus)

    def _claim_conditional(
        self, worker_id: str, free_gpus: Sequence[FreeGpu], gpu_worker: bool
    ) -> Claimed | None:
        """SQLite (one writer at a time, no row locks): read the oldest fitting job, then take it with a
        conditional UPDATE whose row count says whether this worker won it; a loser tries the next."""
        for _ in range(10):
            with self.session() as s:
                candidate = s.execute(_oldest_fitting(free_gpus, gpu_worker)).first()
            if candidate is None:
                return None
            job_id, needed, min_memory = candidate
            gpus = gpus_for(needed, min_memory, free_gpus, gpu_worker)
            if gpus is None:
                return None
            if self._transition(job_id, ("queued",), note=_placement(worker_id, gpus), **_running(worker_id)):
                job = self.get_job(job_id)
                return None if job is None else Claimed(job, gpus)
        return None

    def set_pid(self, job_id: str, pid: int | None, claim: Claim | None = None) -> bool:
        """Record the job process's pid; False when `claim` no longer holds the job."""
        with self.session() as s, s.begin():
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), *_fence(claim))
                .values(pid=pid)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def owns(self, job_id: str, claim: Claim) -> bool:
        """Whether `claim` still holds the job (it is active under that worker and attempt)."""
        with self.session() as s:
            query = select(JobRow.id).where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), *_fence(claim))
            return s.scalars(query).first() is not None

    def record_event(
        self, job_id: str, event: dict[str, Any], *, store_event: bool = True, claim: Claim | None = None
    ) -> bool:
        """An engine event: progress updates the job's progress; any stage means computing has begun.

        With `claim` (the job runner's), nothing is written unless that claim still holds the job, and the
        answer is False: the runner's job was taken from its worker and the runner must stop.
        """
        kind = str(event.get("type", "event"))
        values: dict[str, Any] = {}
        if kind == "stage":
            values = {"progress": {"stage": event.get("stage")}, "computing": True}
        elif kind == "progress":
            values = {
                "progress": {key: event.get(key) for key in ("stage", "round", "rounds", "fraction", "eta_s")}
            }
        with self.session() as s, s.begin():
            query = update(JobRow).where(JobRow.id == job_id, *_fence(claim))
            if claim is not None:
                query = query.where(JobRow.status.in_(ACTIVE))
            # a plain event changes no column, but the UPDATE is still the ownership check
            result = s.execute(query.values(**(values or {"attempts": JobRow.attempts})))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            if store_event:
                s.add(_event_row(job_id, event))
            return True

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
            status=status,
            finished_at=time.time(),
            metrics=metrics,
            artifacts=artifacts,
            error_code=error_code,
            error_message=error_message,
            pid=None,
        )

    def requeue(self, job_id: str, reason: str, claim: Claim | None = None) -> bool:
        """Give an active job back to the queue (the attempt count stays: it bounds requeues)."""
        return self._transition(
            job_id,
            ACTIVE,
            claim=claim,
            note={"type": "warning", "message": reason},
            status="queued",
            worker_id=None,
            pid=None,
            started_at=None,
            progress={},
            computing=False,
        )

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

    def _worker_alive(self, timeout_s: float) -> ColumnElement[bool]:
        """SQL: the job's worker has a heartbeat younger than `timeout_s` by the database's clock."""
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
        reason = f"worker {orphan.worker_id} stopped sending heartbeats for over {timeout_s:g}s"
        still = (
            JobRow.worker_id == orphan.worker_id
            if orphan.worker_id is not None
            else JobRow.worker_id.is_(None),
            JobRow.attempts == orphan.attempts,
            ~self._worker_alive(timeout_s),
        )
        if orphan.status == "cancelling":
            return self._reap_update(orphan, still, status="cancelled", finished_at=time.time(), pid=None)
        if orphan.attempts < max_attempts:
            redo = "; its computation starts over" if orphan.computing else ""
            return self._reap_update(
                orphan,
                still,
                note={
                    "type": "warning",
                    "message": f"{reason}; requeued after attempt {orphan.attempts} of {max_attempts}{redo}",
                },
                status="queued",
                worker_id=None,
                pid=None,
                started_at=None,
                progress={},
                computing=False,
            )
        return self._reap_update(
            orphan,
            still,
            status="failed",
            finished_at=time.time(),
            error_code="worker_lost",
            error_message=f"{reason}, in attempt {orphan.attempts} of {max_attempts}",
            pid=None,
        )

    def _reap_update(
        self,
        orphan: Orphan,
        still: tuple[ColumnElement[bool], ...],
        note: dict[str, Any] | None = None,
        **values: Any,
    ) -> bool:
        with self.session() as s, s.begin():
            result = s.execute(
                update(JobRow)
                .where(JobRow.id == orphan.id, JobRow.status == orphan.status, *still)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return False
            data: dict[str, Any] = {"status": values["status"]}
            if values.get("error_code"):
                data["error"] = {"code": values["error_code"], "message": values.get("error_message")}
            s.add(EventRow(job_id=orphan.id, created_at=time.time(), type="status", data=data))
            if note is not None:
                s.add(_event_row(orphan.id, note))
            return True

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

    # workers ---------------------------------------------------------------------------------------------
    def heartbeat(self, row: WorkerRow) -> None:
        """Create or refresh the worker's row; its heartbeat time is the database's clock, not `row`'s."""
        values = {"hostname": row.hostname, "pid": row.pid, "slots": row.slots, "info": row.info}
        with self.session() as s, s.begin():
            result = s.execute(
                update(WorkerRow).where(WorkerRow.id == row.id).values(heartbeat_at=self.now, **values)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                # only this worker writes its row, so no one can insert it between the UPDATE and here
                s.execute(
                    insert(WorkerRow).values(id=row.id, started_at=self.now, heartbeat_at=self.now, **values)
                )

    def remove_worker(self, worker_id: str) -> None:
        with self.session() as s, s.begin():
            s.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def workers(self) -> Sequence[WorkerRow]:
        with self.session() as s:
            return s.scalars(select(WorkerRow)).all()

    def live_workers(self, timeout_s: float) -> Sequence[WorkerRow]:
        """Workers with a heartbeat younger than `timeout_s`, by the database's clock."""
        with self.session() as s:
            return s.scalars(select(WorkerRow).where(WorkerRow.heartbeat_at >= self.now - timeout_s)).all()

    def clock(self) -> float:
        """The database's time, epoch seconds."""
        with self.session() as s:
            return float(s.execute(select(self.now)).scalar_one())

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


def _running(worker_id: str) -> dict[str, Any]:
    """The columns a claim sets: the job runs under `worker_id`, as its next attempt."""
    return {
        "status": "running",
        "worker_id": worker_id,
        "started_at": time.time(),
        "attempts": JobRow.attempts + 1,
        "computing": False,
        "pid": None,
    }


def _placement(worker_id: str, gpus: tuple[str, ...]) -> dict[str, Any]:
    """The event that says where a claimed job runs: its worker, and its GPUs (none: the CPU)."""
    return {"type": "placement", "worker": worker_id, "gpus": list(gpus)}


def _fence(claim: Claim | None) -> tuple[ColumnElement[bool], ...]:
    """The WHERE terms that limit an UPDATE to the job as `claim` holds it (none: an unfenced change)."""
    if claim is None:
        return ()
    return (JobRow.worker_id == claim.worker_id, JobRow.attempts == claim.attempt)


def _event_row(job_id: str, event: dict[str, Any]) -> EventRow:
    return EventRow(
        job_id=job_id,
        created_at=time.time(),
        type=str(event.get("type", "event")),
        data={k: v for k, v in event.items() if k != "type"},
    )
