"""SQLAlchemy tables and engine setup. Times are float epoch seconds: identical on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Engine, create_engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# where a job process finds the store's URL (which may hold a password): its environment, never its argv
DATABASE_URL_ENV = "FWDPRUNE_DATABASE_URL"
# pg_advisory_lock key that serializes migrations of every fwdprune store in a PostgreSQL database
MIGRATION_LOCK_KEY = 0x66776470_72756E65 & 0x7FFF_FFFF_FFFF_FFFF  # "fwdprune"


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_status_seq", "status", "seq"),
        # per key: its queued and running jobs (quota, fair claims), and when its last job started
        Index("ix_jobs_owner_status_seq", "owner", "status", "seq"),
        Index("ix_jobs_owner_started_at", "owner", "started_at"),
    )

    # seq orders jobs (and is the list cursor's key); id is the unguessable public name.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    resolved: Mapped[dict[str, Any]] = mapped_column(JSON)  # server-side paths; never shown to users
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    artifacts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    computing: Mapped[bool] = mapped_column(Boolean, default=False)
    # what a worker must offer to claim the job: `gpus` GPUs (0: one if the worker has any, else the
    # CPU), each with at least `min_gpu_memory_bytes` of memory
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    min_gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[float] = mapped_column(Float)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class WorkerRow(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    slots: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other database, or an in-memory one."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return None if not database or database == ":memory:" else Path(database)


def make_engine(url: str, busy_timeout_s: float = 30.0, *, create: bool = False) -> Engine:
    """The engine of the store at `url`. A SQLite file is opened, never created (`mode=rw`), unless
    `create` (the migrations, which make it): a database whose directory went away (unmounted, say) is
    an error, not a new empty file on whatever filesystem is left under its path."""
    if url.startswith("sqlite"):
        # Several processes (API, worker, job runners) share the file: WAL lets readers and one writer
        # proceed together, and the busy timeout turns lock contention into waiting instead of errors.
        path = sqlite_file(url)
        if path is None or create:
            engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False})
        else:
            uri = f"file:{quote(str(path))}?mode=rw"

            def connect() -> sqlite3.Connection:
                return sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False)

            engine = create_engine(url, creator=connect)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Any:
    """The Alembic configuration of the store's migrations, against `url`."""
    from alembic.config import Config

    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    return config


def upgrade(url: str) -> None:
    """Apply Alembic migrations up to head, once: every process calls it at start, possibly all at once.

    A lock held across the whole upgrade makes concurrent first starts wait for the one that migrates
    and then find the schema at head, instead of racing to create the same tables.
    """
    from alembic import command

    with migration_lock(url):
        command.upgrade(alembic_config(url), "head")


@contextlib.contextmanager
def migration_lock(url: str) -> Iterator[None]:
    """A lock shared by every process migrating this store: PostgreSQL advisory lock, or a lock file."""
    if url.startswith("postgresql"):
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                    conn.commit()
        finally:
            engine.dispose()
        return
    database = sqlite_file(url)
    if database is None:
        yield  # an in-memory SQLite database belongs to one process
        return
    # flock on a file next to the database: released by the kernel even if this process is killed
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
