"""A worker whose clock is off cannot get a live worker's jobs reaped, nor have its own reaped.

On SQLite "the database's clock" is each process's own (SQLite has no server): a process whose clock runs
60 s behind stamps heartbeats 60 s old. Here each worker's store has its clock offset (its `now`, the SQL
expression every lease is written and compared with), as a worker on a skewed clock would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import literal, update

from service.settings import Settings
from service.store import Store, db_clock
from service.store.tables import WorkerRow
from service.worker import Worker
from tests.service.conftest import queue_job

TIMEOUT_S = 30.0


def _skewed(url: str, offset_s: float) -> Store:
    """A store handle whose clock runs `offset_s` ahead (negative: behind) of the others'."""
    store = Store(url, migrate=False)
    store.now = db_clock(url) + literal(offset_s)
    return store


def _beat(store: Store, worker_id: str) -> float:
    now = time.time()
    row = WorkerRow(id=worker_id, hostname="h", pid=1, slots=1, started_at=now, heartbeat_at=now, info={})
    return store.heartbeat(row)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Store(url).close()  # migrated
    yield url


@pytest.mark.parametrize("offset_s", [-60.0, 60.0, -3600.0], ids=["behind", "ahead", "an-hour-behind"])
def test_a_live_worker_on_a_skewed_clock_is_not_reaped(url: str, offset_s: float) -> None:
    """Both ways round: the skewed worker's jobs are safe from the true one's reaper, and the true
    worker's jobs from the skewed one's."""
    true, skewed = Store(url, migrate=False), _skewed(url, offset_s)
    try:
        queue_job(true, "job_true")
        queue_job(true, "job_skewed")
        for _ in range(3):  # each worker beats (then reaps) every interval, in turn
            _beat(true, "wrk_true")
            _beat(skewed, "wrk_skewed")
        claimed = {true.claim_job("wrk_true"), skewed.claim_job("wrk_skewed")}
        assert {c.job.id for c in claimed if c is not None} == {"job_true", "job_skewed"}
        for _ in range(3):
            _beat(true, "wrk_true")
            assert true.reap_dead_workers(TIMEOUT_S) == []
            _beat(skewed, "wrk_skewed")
            assert skewed.reap_dead_workers(TIMEOUT_S) == []
        for job_id in ("job_true", "job_skewed"):
            job = true.get_job(job_id)
            assert job is not None and (job.status, job.attempts) == ("running", 1)
    finally:
        true.close()
        skewed.close()


def test_a_dead_worker_is_still_reaped_whatever_the_clocks(url: str) -> None:
    true, behind = Store(url, migrate=False), _skewed(url, -60.0)
    try:
        queue_job(true, "job_1")
        _beat(true, "wrk_true")
        _beat(behind, "wrk_behind")
        assert behind.claim_job("wrk_behind") is not None
        # the worker behind dies: its last heartbeat ages past the timeout, by the store's time
        with true.session() as s, s.begin():
            s.execute(
                update(WorkerRow)
                .where(WorkerRow.id == "wrk_behind")
                .values(heartbeat_at=WorkerRow.heartbeat_at - 100)
            )
        _beat(true, "wrk_true")
        assert true.reap_dead_workers(TIMEOUT_S) == ["job_1"]
        job = true.get_job("job_1")
        assert job is not None and job.status == "queued"
    finally:
        true.close()
        behind.close()


def test_a_worker_behind_the_store_says_so(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Skew is no longer dangerous, but it delays reaping: the worker whose clock lags logs it once."""
    true = Store(url, migrate=False)
    settings = Settings(data_dir=tmp_path / "data", database_url=url, device="cpu")
    worker = Worker(settings, slots=1, store=_skewed(url, -60.0), gpus=[])
    try:
        assert _beat(true, "wrk_true") == pytest.approx(0.0, abs=5)
        with caplog.at_level(logging.WARNING, logger="fwdprune.worker"):
            worker.beat()
            worker.beat()
        skew = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
        assert len(skew) == 1 and "60 s behind" in skew[0], skew
    finally:
        worker.shutdown()
        true.close()
