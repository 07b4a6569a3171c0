"""Claims: a worker takes the next queued job that fits its free GPUs, under a new attempt number; the
next job is chosen fairly across keys (`_keys_in_turn`).

Claims on PostgreSQL lock the chosen queued job with `FOR UPDATE SKIP LOCKED` and take it in the same
transaction, so workers claiming at once each get a different job without waiting. SQLite has one writer
at a time: a claim reads its candidate, then takes it with a conditional UPDATE whose row count says
whether it won.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, literal, select
from sqlalchemy.orm import Session, aliased

from service.schemas.events import PlacementEvent
from service.store.base import ACTIVE, StoreBase
from service.store.tables import JobRow
from service.store.transitions import transition


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


def _fits(free: Sequence[FreeGpu], gpu_worker: bool, jobs: Any = JobRow) -> ColumnElement[bool]:
    """`gpus_for`'s rule as SQL over the jobs table (or an alias of it), so a claim never locks or skips
    past a job it could run for the sake of an older one it cannot."""
    if not gpu_worker:
        return and_(jobs.gpus == 0, jobs.min_gpu_memory_bytes.is_(None))
    floor = func.coalesce(jobs.min_gpu_memory_bytes, 0)
    big_enough: ColumnElement[int] = literal(0)
    for gpu in free:
        big_enough = big_enough + case((floor <= gpu.memory_total_bytes, 1), else_=0)
    needed = case((jobs.gpus == 0, 1), else_=jobs.gpus)
    return needed <= big_enough  # type: ignore[no-any-return]


def _keys_in_turn(free: Sequence[FreeGpu], gpu_worker: bool) -> Select[str]:
    """The keys with a queued job the worker can run, fairest first: the key with the fewest jobs
    running, then the one whose last job started longest ago (never: first), then the one whose job has
    waited longest. So a key's thousand queued jobs take turns with another key's one, on one worker
    slot as on many. One row per key: a claim weighs keys, not each of their queued jobs."""
    queued, active, started = aliased(JobRow), aliased(JobRow), aliased(JobRow)
    waiting = (
        select(queued.owner, func.min(queued.seq).label("first"))
        .where(queued.status == "queued", _fits(free, gpu_worker, queued))
        .group_by(queued.owner)
        .subquery()
    )
    running = (
        select(active.owner, func.count().label("jobs"))
        .where(active.status.in_(ACTIVE))
        .group_by(active.owner)
        .subquery()
    )
    last_started = (
        select(func.coalesce(func.max(started.started_at), 0.0))
        .where(started.owner == waiting.c.owner)
        .correlate(waiting)
        .scalar_subquery()
    )
    return (
        select(waiting.c.owner)
        .select_from(waiting.outerjoin(running, running.c.owner == waiting.c.owner))
        .order_by(func.coalesce(running.c.jobs, 0), last_started, waiting.c.first)
    )


def _oldest_fitting(owner: str, free: Sequence[FreeGpu], gpu_worker: bool) -> Select[str, int, int | None]:
    """The key's oldest queued job the worker can run: its id and what it asks for."""
    return (
        select(JobRow.id, JobRow.gpus, JobRow.min_gpu_memory_bytes)
        .where(JobRow.owner == owner, JobRow.status == "queued", _fits(free, gpu_worker))
        .order_by(JobRow.seq)
        .limit(1)
    )


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


def _placement(worker_id: str, gpus: tuple[str, ...]) -> PlacementEvent:
    return PlacementEvent(type="placement", worker=worker_id, gpus=list(gpus))


def _take(s: Session, worker_id: str, job_id: str, gpus: tuple[str, ...]) -> Claimed | None:
    """Take the queued job for the worker, in the caller's transaction; None if it is no longer queued."""
    if not transition(s, job_id, ("queued",), note=_placement(worker_id, gpus), **_running(worker_id)):
        return None
    return Claimed(s.scalars(select(JobRow).where(JobRow.id == job_id)).one(), gpus)


class ClaimQueries(StoreBase):
    def claim_job(
        self, worker_id: str, free_gpus: Sequence[FreeGpu] = (), *, gpu_worker: bool = False
    ) -> Claimed | None:
        """Take the next queued job that fits the worker, with the GPUs of `free_gpus` it runs on.

        A worker with GPUs (`gpu_worker`, implied by any free GPU) runs every job on at least one of
        them, so with none free it takes nothing. Fitting follows `gpus_for`; among the jobs that fit,
        the oldest of the key whose turn it is (`_keys_in_turn`) wins. The claim writes a `placement`
        event naming the worker and the GPUs.
        """
        gpu_worker = gpu_worker or bool(free_gpus)
        if gpu_worker and not free_gpus:
            return None
        if self.postgresql:
            return self._claim_skip_locked(worker_id, free_gpus, gpu_worker)
        return self._claim_conditional(worker_id, free_gpus, gpu_worker)

    def _claim_skip_locked(
        self, worker_id: str, free_gpus: Sequence[FreeGpu], gpu_worker: bool
    ) -> Claimed | None:
        """PostgreSQL: lock the next key's oldest fitting queued row, skipping rows other claims hold
        locked (then the key after), and take it in the same transaction: concurrent workers never wait
        on each other or race for a row."""
        with self.session() as s, s.begin():
            for owner in s.scalars(_keys_in_turn(free_gpus, gpu_worker)).all():
                oldest = _oldest_fitting(owner, free_gpus, gpu_worker)
                candidate = s.execute(oldest.with_for_update(skip_locked=True)).first()
                if candidate is None:  # every one of them is being claimed right now
                    continue
                job_id, needed, min_memory = candidate
                gpus = gpus_for(needed, min_memory, free_gpus, gpu_worker)
                if gpus is None:  # the SQL filter and `gpus_for` disagree: leave the job for another worker
                    return None
                return _take(s, worker_id, job_id, gpus)
            return None

    def _claim_conditional(
        self, worker_id: str, free_gpus: Sequence[FreeGpu], gpu_worker: bool
    ) -> Claimed | None:
        """SQLite (one writer at a time, no row locks): read the next key's oldest fitting job, then take
        it with a conditional UPDATE whose row count says whether this worker won it; a loser tries the
        next."""
        for _ in range(10):
            with self.session() as s:
                owner = s.scalars(_keys_in_turn(free_gpus, gpu_worker).limit(1)).first()
                candidate = (
                    None
                    if owner is None
                    else s.execute(_oldest_fitting(owner, free_gpus, gpu_worker)).first()
                )
            if candidate is None:
                return None
            job_id, needed, min_memory = candidate
            gpus = gpus_for(needed, min_memory, free_gpus, gpu_worker)
            if gpus is None:
                return None
            with self.session() as s, s.begin():
                claimed = _take(s, worker_id, job_id, gpus)
            if claimed is not None:
                return claimed
        return None
