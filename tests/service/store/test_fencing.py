"""One owner per job: claims, heartbeats, reaping and publication, interleaved step by step.

Each test drives `Store` and `Worker` methods in a fixed order (no sleeps decide the order) on SQLite and
on PostgreSQL. Job processes are small stand-ins for the job runner that write a checkpoint naming their
attempt, so a test can tell whose outputs were published. The last tests are about surviving store
errors: a flaky store, and a real SQLite write lock held by another connection.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from service.settings import Settings
from service.store import Claim, Claimed, Store
from service.store.tables import JobRow, WorkerRow
from service.worker import Worker
from tests.service.conftest import queue_job as _queue

TIMEOUT_S = 30.0
# a stand-in job runner: optionally waits for a `release` file, then writes a checkpoint naming its attempt
FAKE_RUNNER = """
import json, pathlib, sys, time
out, result, attempt, mode = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + 60
while mode == "hold" and not (result.parent / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
out.mkdir(parents=True, exist_ok=True)
(out / "weights.bin").write_text("attempt " + attempt)
artifacts = [{"name": "../.bashrc" if mode == "hostile" else "weights.bin", "bytes": 9, "sha256": "0" * 64}]
result.write_text(json.dumps({"ok": True, "metrics": {"attempt": int(attempt)}, "artifacts": artifacts}))
"""


class FakeWorker(Worker):
    """A real worker whose job processes are FAKE_RUNNER instead of the engine."""

    mode = "exit"

    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        return [
            sys.executable,
            "-c",
            FAKE_RUNNER,
            str(tmp_dir / "out"),
            str(tmp_dir / "result.json"),
            str(claim.attempt),
            self.mode,
        ]


def _settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "device": "cpu",
        "heartbeat_interval_s": 1000.0,  # tests call beat() themselves
        "heartbeat_timeout_s": TIMEOUT_S,
        "cancel_grace_s": 1.0,
        "poll_interval_s": 0.01,
        "store_retry_max_wait_s": 0.05,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[tuple[FakeWorker, FakeWorker, Store]]:
    """Workers A and B on one data dir and store, and a third store handle for the test itself."""
    settings = _settings(tmp_path / "data")
    store = Store(db_url)
    a = FakeWorker(settings, slots=1, store=Store(db_url, migrate=False))
    b = FakeWorker(settings, slots=1, store=Store(db_url, migrate=False))
    try:
        yield a, b, store
    finally:
        for worker in (a, b):
            worker.shutdown()
        store.close()


def _age(store: Store, worker_id: str, seconds: float = 10 * TIMEOUT_S) -> None:
    """Make a worker's last heartbeat `seconds` older, on the database's clock: it paused that long."""
    with store.session() as s, s.begin():
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=WorkerRow.heartbeat_at - seconds)
        )


def _job(store: Store, job_id: str) -> JobRow:
    job = store.get_job(job_id)
    assert job is not None
    return job


def _wait_exit(worker: Worker, job_id: str) -> None:
    worker.running[job_id].proc.wait(timeout=30)


def test_reaped_job_that_finishes_is_not_published(workers: tuple[FakeWorker, FakeWorker, Store]) -> None:
    """A pauses past the heartbeat timeout while its job computes; the job is requeued; A must not publish."""
    a, b, store = workers
    job_id = _queue(store)
    a.tick()  # beat, claim (attempt 1), start
    claim = a.running[job_id].claim
    assert store.record_event(job_id, {"type": "stage", "stage": "scoring"}, claim=claim)  # computing
    _wait_exit(a, job_id)  # the job is done, but A is paused before it looks
    _age(store, a.id)
    assert b.store.reap_dead_workers(TIMEOUT_S) == [job_id]
    a.slots = 0  # A resumes but takes no new job, so the requeued one stays queued here
    a.tick()  # its fenced finish is refused
    job = _job(store, job_id)
    assert (job.status, job.attempts, job.error_code, job.artifacts) == ("queued", 1, None, None)
    assert not (a.settings.jobs_dir / job_id).exists()  # nothing published by the worker that lost it
    assert list(a.settings.jobs_dir.iterdir()) == []  # and its temporary directory is gone
    assert not a.running


def test_an_artifact_name_no_client_may_write_is_never_published(
    workers: tuple[FakeWorker, FakeWorker, Store],
) -> None:
    a, _, store = workers
    job_id = _queue(store)
    a.mode = "hostile"
    a.tick()
    _wait_exit(a, job_id)
    a.tick()
    job = _job(store, job_id)
    assert (job.status, job.error_code, job.artifacts) == ("failed", "internal_error", None)
    assert job.error_message == "the job listed an artifact that is never published: '../.bashrc'"
    assert not (a.settings.jobs_dir / job_id).exists()


def test_requeued_job_is_published_by_its_new_owner_only(
    workers: tuple[FakeWorker, FakeWorker, Store],
) -> None:
    a, b, store = workers
    job_id = _queue(store)
    a.tick()
    _wait_exit(a, job_id)  # A's run ends, A pauses before reading it
    _age(store, a.id)
    b.mode = "hold"
    b.tick()  # reaps A's job (requeued), claims it as attempt 2, starts it
    assert b.running[job_id].claim.attempt == 2
    a.tick()  # A resumes: its job is no longer its own
    assert not a.running and not (a.settings.jobs_dir / job_id).exists()
    assert b.running[job_id].tmp_dir.is_dir()  # A's cleanup did not touch B's attempt
    (b.running[job_id].tmp_dir / "release").touch()
    _wait_exit(b, job_id)
    b.tick()
    job = _job(store, job_id)
    assert job.status == "succeeded" and job.metrics == {"attempt": 2} and job.attempts == 2
    assert (a.settings.jobs_dir / job_id / "weights.bin").read_text() == "attempt 2"


def test_worker_paused_right_after_claiming_never_runs_the_job_twice(
    workers: tuple[FakeWorker, FakeWorker, Store],
) -> None:
    a, b, store = workers
    job_id = _queue(store)
    a.beat()
    claimed = a.claim()  # A claims, then pauses before starting the job process
    # no GPU here: the job runs on the CPU, for as long as the worker's FWDPRUNE_MAX_JOB_SECONDS allows
    assert claimed == (job_id, Claim(a.id, 1), (), a.settings.max_job_seconds)
    _age(store, a.id)
    b.mode = "hold"
    b.tick()  # reaps, requeues and claims the job as attempt 2
    b_run = b.running[job_id]
    a.mode = "hold"
    a.start(*claimed)  # type: ignore[misc]  # A resumes: set_pid is refused, so A kills what it started
    assert not a.running
    assert b_run.proc.poll() is None and b_run.tmp_dir.is_dir()  # B's run is untouched
    assert [p.name for p in a.settings.jobs_dir.iterdir()] == [b_run.tmp_dir.name]
    job = _job(store, job_id)
    assert (job.worker_id, job.attempts, job.pid) == (b.id, 2, b_run.proc.pid)


def test_out_of_date_reaper_list_cannot_take_a_live_workers_job(
    workers: tuple[FakeWorker, FakeWorker, Store],
) -> None:
    a, b, store = workers
    job_id = _queue(store)
    a.mode = "hold"
    a.tick()
    _age(store, a.id)
    orphans = b.store.orphans(TIMEOUT_S)  # the reaper lists A's job as orphaned ...
    assert [o.id for o in orphans] == [job_id]
    a.beat()  # ... A's heartbeat gets through ...
    assert not b.store.reap(orphans[0], TIMEOUT_S)  # ... and the reaper's decision no longer applies
    assert (_job(store, job_id).status, _job(store, job_id).worker_id) == ("running", a.id)

    _age(store, a.id)  # the same with the job requeued and claimed by another worker meanwhile
    orphans = b.store.orphans(TIMEOUT_S)
    assert b.store.reap(orphans[0], TIMEOUT_S)  # requeued
    b.tick()  # claimed again by B (attempt 2), who beats first
    assert not b.store.reap(orphans[0], TIMEOUT_S)
    assert _job(store, job_id).worker_id == b.id


def test_heartbeats_use_the_database_clock(
    workers: tuple[FakeWorker, FakeWorker, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose own clock is an hour behind is still alive to a reaper on another host."""
    a, b, store = workers
    behind = types.SimpleNamespace(time=lambda: time.time() - 3600, monotonic=time.monotonic)
    monkeypatch.setattr("service.worker.supervision.time", behind)
    job_id = _queue(store)
    a.mode = "hold"
    a.tick()
    assert b.store.reap_dead_workers(TIMEOUT_S) == []
    assert _job(store, job_id).status == "running"
    assert [w.id for w in b.store.live_workers(TIMEOUT_S)] == [a.id]


def test_runner_events_stop_at_the_end_of_its_claim(workers: tuple[FakeWorker, FakeWorker, Store]) -> None:
    _, _, store = workers
    job_id = _queue(store)
    claimed = store.claim_job("wrk_x")
    assert claimed is not None
    first = Claim("wrk_x", claimed.job.attempts)
    assert store.record_event(job_id, {"type": "warning", "message": "mine"}, claim=first)
    assert store.owns(job_id, first)
    assert store.reap_dead_workers(TIMEOUT_S) == [job_id]  # wrk_x never sent a heartbeat
    assert store.claim_job("wrk_y") is not None
    assert not store.owns(job_id, first)
    assert not store.record_event(job_id, {"type": "warning", "message": "stale"}, claim=first)
    assert not store.set_pid(job_id, 123, claim=first)
    assert not store.finish_job(job_id, "succeeded", claim=first)
    assert not store.requeue(job_id, "stale", claim=first)
    messages = [e.data.get("message") for e in store.events(job_id, 0, 100) if e.type == "warning"]
    assert "mine" in messages and "stale" not in messages
    assert _job(store, job_id).status == "running"


def test_runner_environment_holds_no_keys(
    workers: tuple[FakeWorker, FakeWorker, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, _ = workers
    # the API's key only: other secrets (the S3 tests' AWS credentials) may be set, and a job needs them
    key = "api-key-0123456789abcdef"
    for name in ("FWDPRUNE_API_KEYS", "FWDPRUNE_ADMIN_KEYS", "FWDPRUNE_API_KEYS_FILE"):
        monkeypatch.setenv(name, key)
    monkeypatch.setenv("FWDPRUNE_DEVICE", "cpu")
    env = a.runner_env(())
    assert not any(key in value for value in env.values())
    assert not {"FWDPRUNE_API_KEYS", "FWDPRUNE_ADMIN_KEYS", "FWDPRUNE_API_KEYS_FILE"} & set(env)
    assert env["FWDPRUNE_DEVICE"] == "cpu"


def test_tick_retries_transient_store_errors(
    workers: tuple[FakeWorker, FakeWorker, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _, store = workers
    job_id = _queue(store)
    real_claim = a.store.claim_job
    failures = iter(range(3))

    def flaky_claim(worker_id: str, *args: Any, **kwargs: Any) -> Claimed | None:
        if next(failures, None) is not None:
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))
        return real_claim(worker_id, *args, **kwargs)

    monkeypatch.setattr(a.store, "claim_job", flaky_claim)
    a.tick()  # three failures, then the claim goes through
    assert job_id in a.running and _job(store, job_id).worker_id == a.id


def test_worker_loop_outlives_a_store_that_keeps_failing(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = FakeWorker(_settings(tmp_path / "data", store_retry_attempts=2), slots=1, store=Store(db_url))
    calls = 0
    enough = threading.Event()

    def broken_claim(_worker_id: str, *_args: Any, **_kwargs: Any) -> Claimed | None:
        nonlocal calls
        calls += 1
        if calls >= 8:  # four ticks, each retried once
            enough.set()
        raise OperationalError("UPDATE jobs", {}, Exception("database or disk is full"))

    monkeypatch.setattr(worker.store, "claim_job", broken_claim)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert enough.wait(timeout=20), f"the worker loop ended after {calls} store calls"
        assert thread.is_alive()
    finally:
        worker.stop_event.set()
        thread.join(timeout=20)
    assert not thread.is_alive()


def test_worker_waits_out_a_sqlite_write_lock(tmp_path: Path) -> None:
    """Another process holds `BEGIN IMMEDIATE` for 3 s, ten times the store's busy timeout."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    store = Store(url)
    job_id = _queue(store)
    settings = _settings(tmp_path / "data", store_busy_timeout_s=0.3, store_retry_max_wait_s=1.0)
    worker = FakeWorker(settings, slots=1, store=Store(url, migrate=False, busy_timeout_s=0.3))
    locked, hold_s = threading.Event(), 3.0

    def hold_lock() -> None:
        conn = sqlite3.connect(db, timeout=5)
        conn.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(hold_s)
        conn.rollback()
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(timeout=10)
        started = time.monotonic()
        worker.tick()  # heartbeat and claim both wait for the lock, through retries
        waited = time.monotonic() - started
        holder.join(timeout=10)
        assert waited >= hold_s * 0.8 and job_id in worker.running
        _wait_exit(worker, job_id)
        worker.tick()
        assert _job(store, job_id).status == "succeeded"
    finally:
        holder.join(timeout=10)
        worker.shutdown()
        store.close()
