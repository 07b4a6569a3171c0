"""What every part of the store shares: the engine and its sessions, the database's clock, job statuses,
and the claim that fences a worker's changes."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from sqlalchemy import ColumnElement, Float, literal_column, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.store.engine import make_engine, sqlite_file, upgrade
from service.store.tables import JobRow

ACTIVE = ("running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
UNFINISHED = ("queued", *ACTIVE)
# pg_advisory_xact_lock(space, key) of a key's quota checks (the two-number form: apart from migrations')
OWNER_LOCK_SPACE = 0x66777071


class Owned(Protocol):
    @property
    def owner(self) -> str: ...


Row = TypeVar("Row", bound=Owned)


@dataclass(frozen=True)
class Claim:
    """Who runs a job: the worker that claimed it and the attempt number the claim gave it."""

    worker_id: str
    attempt: int


def fence(claim: Claim | None) -> tuple[ColumnElement[bool], ...]:
    """The WHERE terms that limit an UPDATE to the job as `claim` holds it (none: an unfenced change)."""
    if claim is None:
        return ()
    return (JobRow.worker_id == claim.worker_id, JobRow.attempts == claim.attempt)


def db_clock(url: str) -> ColumnElement[float]:
    """The database's time in epoch seconds, as an SQL expression: on PostgreSQL the server's clock, one for
    every host; on SQLite, which has no server, the clock of the process that runs the statement (leases
    allow for that: `service.store.workers`)."""
    if url.startswith("sqlite"):
        # julianday('now') works on every SQLite; unixepoch('subsec') needs 3.42
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
    # clock_timestamp, not now(): now() is frozen at the start of the transaction
    return literal_column("CAST(extract(epoch from clock_timestamp()) AS double precision)", Float)


def lock_owner(s: Session, owner: str) -> None:
    """Serialise this transaction with every other that counts or adds `owner`'s jobs or files, until it
    ends, so a quota check counts everything committed before it. PostgreSQL: an advisory lock per owner;
    SQLite needs none once the transaction has written (one writer at a time holds the database)."""
    if s.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:4], "big", signed=True)
    s.execute(text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": OWNER_LOCK_SPACE, "key": key})


def visible_to(row: Row | None, owner: str | None) -> Row | None:
    """`row` if `owner` may see it (None: an admin asking for everyone's), else None."""
    if row is None or (owner is not None and row.owner != owner):
        return None
    return row


def file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class StoreBase:
    """The database a store talks to; each concern of the store adds its queries to this."""

    def __init__(self, url: str, *, migrate: bool = True, busy_timeout_s: float = 30.0) -> None:
        if migrate:
            upgrade(url)
        self.url = url
        self.engine: Engine = make_engine(url, busy_timeout_s=busy_timeout_s)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.now: ColumnElement[float] = db_clock(url)
        # SQLite: the file this store opened, so `ping` notices when its path names another file (or
        # none): connections already open keep reading the old one, unmounted or deleted as it may be
        self._file = sqlite_file(url)
        self._identity = None if self._file is None else file_identity(self._file)

    @property
    def postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        """Whether the store answers, with its schema; for SQLite, also that the file at its path is
        still the one it opened."""
        if self._file is not None:
            identity = file_identity(self._file)
            if identity is None or identity != (self._identity or identity):
                return False
            self._identity = identity
        try:
            with self.engine.connect() as conn:
                conn.execute(select(JobRow.seq).limit(1))
            return True
        except Exception:
            return False

    def clock(self) -> float:
        """The database's time, epoch seconds."""
        with self.session() as s:
            return float(s.execute(select(self.now)).scalar_one())
