"""The job store: every state change of files, jobs, events and workers goes through here.

`Store` is one object over one database; its queries live by concern: `files`, `jobs` (creation, reads,
status changes), `claims` (which worker runs which job), `reaping` (jobs of dead workers), `events`,
`workers` (heartbeats) and `metrics`. Every status change is a conditional UPDATE with its event
(`transitions`).

A worker's claim on a job is a `Claim` (worker id and attempt number). Every change a worker or its job
runner makes to a claimed job is fenced by it: `WHERE id=? AND worker_id=? AND attempts=?`, so a worker
whose job was reaped and handed to another one changes nothing.
"""

from __future__ import annotations

from service.store.base import ACTIVE, STATUSES, TERMINAL, Claim, db_clock
from service.store.claims import Claimed, ClaimQueries, FreeGpu, gpus_for
from service.store.events import EventQueries
from service.store.files import FileInUse, FileQueries, StoredBytesExceeded
from service.store.jobs import FileGone, IdempotencyConflict, JobQueries, QueueFull
from service.store.metrics import MetricQueries
from service.store.reaping import Orphan, ReapQueries
from service.store.workers import WorkerQueries

__all__ = [
    "ACTIVE",
    "STATUSES",
    "TERMINAL",
    "Claim",
    "Claimed",
    "FileGone",
    "FileInUse",
    "FreeGpu",
    "IdempotencyConflict",
    "Orphan",
    "QueueFull",
    "Store",
    "StoredBytesExceeded",
    "db_clock",
    "gpus_for",
]


class Store(FileQueries, JobQueries, ClaimQueries, ReapQueries, EventQueries, WorkerQueries, MetricQueries):
    """The store of one database (`StoreBase` opens it, migrating it first unless told not to)."""
