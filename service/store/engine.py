"""The store's database: its engine (SQLite or PostgreSQL) and its migrations, applied once per start."""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.engine import Engine, create_engine, make_url
from sqlalchemy.sql import text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# where a job process finds the store's URL (which may hold a password): its environment, never its argv
DATABASE_URL_ENV = "FWDPRUNE_DATABASE_URL"
# pg_advisory_lock key that serializes migrations of every fwdprune store in a PostgreSQL database
MIGRATION_LOCK_KEY = 0x66776470_72756E65 & 0x7FFF_FFFF_FFFF_FFFF  # "fwdprune"


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
