"""A store that fails a running job's process: a SQLite file another process holds `BEGIN EXCLUSIVE` on,
a store that stays unavailable past the retry window, and what the job's owner is told about either.

A lock held for less than the window is waited out (progress updates may be dropped meanwhile); one
held longer ends the job's process with a verdict that asks its worker to requeue it, never to fail it.
No message the owner reads carries the SQL, the worker's id or its host.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from pruning.events import ProgressEvent, StageEvent
from service.main import create_app
from service.settings import Settings, hash_key
from service.store import Claim, Store
from service.store.retry import StoreUnavailable
from service.store.tables import JobRow
from service.worker import Worker
from service.worker.job_runner import EXIT_STORE_UNAVAILABLE, JobEvents, failure_result
from tests.service.conftest import KEY_A
from tests.service.conftest import queue_job as _queue

WORKER = f"wrk_{socket.gethostname()[:32]}_4242_a1b2c3"  # as a worker names itself
STAGE: StageEvent = {"type": "stage", "stage": "scoring"}


@contextmanager
def exclusive_lock(db: Path, hold_s: float) -> Iterator[threading.Event]:
    """A second connection holds `BEGIN EXCLUSIVE` on the file for `hold_s` seconds (or until the block
    ends, whichever is later); the event is set while it holds the lock."""
    locked, done = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, timeout=5)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(hold_s)
        conn.rollback()
        conn.close()
        done.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(timeout=10)
    try:
        yield done
    finally:
        thread.join(timeout=hold_s + 10)


@pytest.fixture
def claimed(tmp_path: Path) -> Iterator[tuple[Path, Store, str, Claim]]:
    """A SQLite store on a file, a job claimed in it, and a store handle as the job's process opens one."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    store = Store(url)
    job_id = _queue(store)
    claim = store.claim_job(WORKER)
    assert claim is not None
    runner_store = Store(url, migrate=False, busy_timeout_s=0.2)
    try:
        yield db, runner_store, job_id, Claim(WORKER, claim.job.attempts)
    finally:
        runner_store.close()
        store.close()


def _types(store: Store, job_id: str) -> list[str]:
    return [event.type for event in store.events(job_id, 0, 100)]


def test_a_job_waits_out_an_exclusive_lock(claimed: tuple[Path, Store, str, Claim]) -> None:
    """A stage event sent while another process holds the file for 3 s (15 times the busy timeout) is
    written once the lock goes; the job goes on."""
    db, store, job_id, claim = claimed
    events = JobEvents(store, job_id, claim=claim)  # the default window: minutes
    with exclusive_lock(db, hold_s=3.0):
        started = time.monotonic()
        events(STAGE)
        waited = time.monotonic() - started
    assert waited >= 2.0
    assert "stage" in _types(store, job_id)
    job = store.get_job(job_id)
    assert job is not None and job.computing and job.status == "running"


def test_progress_is_dropped_under_a_lock_not_waited_for(claimed: tuple[Path, Store, str, Claim]) -> None:
    db, store, job_id, claim = claimed
    events = JobEvents(store, job_id, claim=claim, retry_window_s=30)
    progress: ProgressEvent = {
        "type": "progress",
        "stage": "scoring",
        "fraction": 0.5,
        "eta_s": 9.0,
        "round": 1,
    }
    with exclusive_lock(db, hold_s=2.0) as released:
        started = time.monotonic()
        events(progress)  # one try, the busy timeout long
        assert time.monotonic() - started < 1.5
        assert not released.is_set()
    events({**progress, "fraction": 0.6})  # within the throttle's interval, but the last one was dropped
    job = store.get_job(job_id)
    assert job is not None and job.progress["fraction"] == 0.6
    assert _types(store, job_id).count("progress") == 1


def test_a_lock_past_the_window_ends_the_job_for_a_requeue(claimed: tuple[Path, Store, str, Claim]) -> None:
    db, store, job_id, claim = claimed
    events = JobEvents(store, job_id, claim=claim, retry_window_s=1.0)
    with exclusive_lock(db, hold_s=4.0), pytest.raises(StoreUnavailable) as raised:
        events(STAGE)
    assert events.unavailable is raised.value
    # the engine may wrap what its sink raised: the verdict still asks for a requeue
    result, code = failure_result(RuntimeError("a rank failed"), events.unavailable)
    assert code == EXIT_STORE_UNAVAILABLE and result["store_unavailable"] is True
    assert result["message"] == "the job store was unavailable for 1s: the database was locked"


def test_a_store_error_fails_the_job_without_its_sql(claimed: tuple[Path, Store, str, Claim]) -> None:
    db, store, job_id, claim = claimed
    with exclusive_lock(db, hold_s=1.0), pytest.raises(OperationalError) as raised:
        store.record_event(job_id, STAGE, claim=claim)
    assert "[SQL:" in str(raised.value) and WORKER in str(raised.value)  # what the job used to show
    result, _ = failure_result(raised.value)
    assert result == {
        "ok": False,
        "code": "internal_error",
        "message": "the job store failed a request: the database was locked",
    }


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "device": "cpu",
        "heartbeat_interval_s": 1000.0,
        "poll_interval_s": 0.01,
        "store_retry_max_wait_s": 0.05,
        "store_retry_window_s": 1.0,
        **overrides,
    }
    settings = Settings(**values)
    settings.ensure_dirs()
    return settings


class UnreachableStoreWorker(Worker):
    """A real worker whose job processes (the real job runner) are handed a store they cannot open."""

    def runner_env(self, gpus: Any) -> dict[str, str]:
        env = super().runner_env(gpus)
        env["FWDPRUNE_DATABASE_URL"] = f"sqlite:///{self.settings.data_dir / 'elsewhere' / 'gone.db'}"
        return env


def test_a_job_process_that_cannot_reach_the_store_is_requeued_not_failed(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    worker = UnreachableStoreWorker(settings, slots=1, store=Store(settings.db_url))
    try:
        job_id = _queue(worker.store)
        worker.tick()
        running = worker.running[job_id]
        assert running.proc.wait(timeout=120) == EXIT_STORE_UNAVAILABLE, running.log_tail()
        worker.tick()  # requeues the job, and claims it again
        job = worker.store.get_job(job_id)
        assert job is not None and job.error_code is None and job.attempts == 2
        events = [
            (e.type, e.data.get("status") or e.data.get("message"))
            for e in worker.store.events(job_id, 0, 100)
        ]
        assert [event for event in events if event[0] != "placement"] == [
            ("status", "queued"),
            ("status", "running"),
            ("status", "queued"),
            (
                "warning",
                "the job store could not take the job's writes for 1s; requeued after attempt 1 of 5",
            ),
            ("status", "running"),
        ]
    finally:
        worker.shutdown()


class VerdictWorker(Worker):
    """A real worker whose job processes write `verdict` (none: write nothing) and exit with `rc`."""

    verdict: dict[str, Any] | None = None
    rc = 0

    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        write = (
            "" if self.verdict is None else f"open(sys.argv[1], 'w').write({json.dumps(self.verdict)!r}); "
        )
        return [sys.executable, "-c", f"import sys; {write}sys.exit({self.rc})", str(tmp_dir / "result.json")]


@pytest.mark.parametrize(
    "verdict",
    [
        {"ok": False, "store_unavailable": True, "code": "internal_error", "message": "locked"},
        None,  # the store and the disk both failed it: only its exit status says why
    ],
)
def test_the_worker_requeues_on_a_store_outage_and_fails_after_the_last_attempt(
    tmp_path: Path, verdict: dict[str, Any] | None
) -> None:
    worker = VerdictWorker(_settings(tmp_path), slots=1, store=Store(_settings(tmp_path).db_url))
    worker.verdict, worker.rc = verdict, EXIT_STORE_UNAVAILABLE
    try:
        job_id = _queue(worker.store)
        worker.tick()
        for attempt in range(1, 6):
            worker.running[job_id].proc.wait(timeout=30)
            worker.tick()  # requeues the job and claims it again, or fails it after the last attempt
            job = worker.store.get_job(job_id)
            assert job is not None
            assert (job.status, job.attempts) == (("running", attempt + 1) if attempt < 5 else ("failed", 5))
        assert job.error_code == "internal_error"
        assert job.error_message == "the job store could not take the job's writes for 1s, in attempt 5 of 5"
    finally:
        worker.shutdown()


def test_the_owner_reads_no_sql_worker_id_or_host(tmp_path: Path) -> None:
    """A failure whose message is a raw store error, as the job's process used to report it."""
    settings = Settings(data_dir=tmp_path / "data", api_keys=[KEY_A])
    with TestClient(create_app(settings)) as client:
        store: Store = client.app.state.store  # type: ignore[attr-defined]
        db = Path(store.engine.url.database or "")
        job_id = _queue(store, owner=hash_key(KEY_A))
        with store.session() as s, s.begin():
            request = {"model": "tiny-llama", "calibration_file": "file_x", "sparsity": 0.2}
            s.execute(update(JobRow).where(JobRow.id == job_id).values(request=request))
        claimed = store.claim_job(WORKER)
        assert claimed is not None
        claim = Claim(WORKER, claimed.job.attempts)
        locked_out = Store(settings.db_url, migrate=False, busy_timeout_s=0.1)
        with exclusive_lock(db, hold_s=1.0), pytest.raises(OperationalError) as raised:
            locked_out.record_event(job_id, STAGE, claim=claim)
        locked_out.close()
        raw = f"OperationalError: {raised.value}\nin {WORKER} at 10.1.2.3"
        assert store.finish_job(job_id, "failed", error_code="internal_error", error_message=raw)
        headers = {"Authorization": f"Bearer {KEY_A}"}
        shown = client.get(f"/v1/jobs/{job_id}", headers=headers).json()["error"]["message"]
        events = client.get(f"/v1/jobs/{job_id}/events", headers=headers).json()["data"]
    failure = [e["data"]["error"]["message"] for e in events if e["data"].get("error")]
    assert failure == [shown]
    assert shown.startswith("OperationalError: (sqlite3.OperationalError) database is locked")
    for leak in ("SQL", "UPDATE", "parameters", "sqlalche.me", "wrk_", "4242", "10.1.2.3", str(db.parent)):
        assert leak not in shown, leak


def test_the_worker_keeps_its_host_out_of_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = "gpuhost-17.cluster.internal"
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    worker = VerdictWorker(_settings(tmp_path), slots=1, store=Store(_settings(tmp_path).db_url))
    message = f"RuntimeError: gloo: connection to {host}:29500 from {WORKER} refused"
    worker.verdict, worker.rc = {"ok": False, "code": "internal_error", "message": message}, 1
    try:
        job_id = _queue(worker.store)
        worker.tick()
        worker.running[job_id].proc.wait(timeout=30)
        worker.tick()
        job = worker.store.get_job(job_id)
        assert job is not None and job.status == "failed"
        assert job.error_message == "RuntimeError: gloo: connection to a host:29500 from a worker refused"
    finally:
        worker.shutdown()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FWDPRUNE_"):
            monkeypatch.delenv(name)
