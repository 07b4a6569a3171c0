"""The store on SQLite and PostgreSQL: migrations, ownership, atomic claims, cancellation, reaping."""

from __future__ import annotations

import threading
import time

from sqlalchemy import update

from service.db import FileRow, JobRow, WorkerRow
from service.store import IdempotencyConflict, Store


def _job(job_id: str, owner: str = "alice", key: str | None = None, digest: str = "h1") -> JobRow:
    return JobRow(
        id=job_id,
        owner=owner,
        status="queued",
        request={"calibration_file": "file_1"},
        resolved={},
        request_hash=digest,
        idempotency_key=key,
        metadata_={},
        created_at=time.time(),
        progress={},
        attempts=0,
        computing=False,
    )


def test_files_jobs_and_ownership(db_url: str) -> None:
    store = Store(db_url)
    Store(db_url).close()  # migrating twice is a no-op
    try:
        store.add_file(
            FileRow(
                id="file_1",
                owner="alice",
                filename="a.txt",
                bytes=3,
                sha256="x" * 64,
                path="/tmp/a",
                created_at=time.time(),
            )
        )
        assert store.get_file("file_1", "bob") is None and store.get_file("file_1", "alice") is not None
        for i in range(3):
            store.create_job(_job(f"job_{i}"))
        assert store.file_in_use("file_1")
        page, more = store.list_jobs("alice", limit=2)
        assert [j.id for j in page] == ["job_2", "job_1"] and more
        page, more = store.list_jobs("alice", limit=2, after="job_1")
        assert [j.id for j in page] == ["job_0"] and not more
        assert store.list_jobs("bob")[0] == []
        assert store.count_by_status()["queued"] == 3
    finally:
        store.close()


def test_idempotency(db_url: str) -> None:
    store = Store(db_url)
    try:
        first, created = store.create_job(_job("job_a", key="k"))
        again, created_again = store.create_job(_job("job_b", key="k"))
        assert created and not created_again and again.id == first.id
        try:
            store.create_job(_job("job_c", key="k", digest="other"))
            raise AssertionError("expected a conflict")
        except IdempotencyConflict:
            pass
        _, created_other_owner = store.create_job(_job("job_d", owner="bob", key="k"))
        assert created_other_owner
    finally:
        store.close()


def test_claims_are_atomic(db_url: str) -> None:
    store = Store(db_url)
    try:
        for i in range(6):
            store.create_job(_job(f"job_{i}"))
        claimed: list[str] = []
        lock = threading.Lock()

        def worker(name: str) -> None:
            mine = Store(db_url, migrate=False)
            while (won := mine.claim_job(name)) is not None:
                with lock:
                    claimed.append(won.job.id)
            mine.close()

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(claimed) == [f"job_{i}" for i in range(6)]  # each exactly once
        assert store.count_by_status()["running"] == 6
    finally:
        store.close()


def test_cancel_progress_and_reaping(db_url: str) -> None:
    store = Store(db_url)
    try:
        for i in range(4):
            store.create_job(_job(f"job_{i}"))
        store.request_cancel("job_3")  # queued: cancelled at once
        assert store.get_job("job_3").status == "cancelled"  # type: ignore[union-attr]
        now = time.time()
        store.heartbeat(
            WorkerRow(id="dead", hostname="h", pid=1, slots=3, started_at=now, heartbeat_at=now, info={})
        )
        # heartbeats carry the database's clock: age this one there, 100 s into the past
        with store.session() as s, s.begin():
            s.execute(update(WorkerRow).values(heartbeat_at=WorkerRow.heartbeat_at - 100))
        for _ in range(3):
            store.claim_job("dead")
        store.record_event("job_0", {"type": "stage", "stage": "scoring"})
        store.record_event(
            "job_0",
            {"type": "progress", "stage": "scoring", "round": 1, "rounds": 2, "fraction": 0.5, "eta_s": 3.0},
        )
        assert store.get_job("job_0").progress["fraction"] == 0.5  # type: ignore[union-attr]
        store.request_cancel("job_2")  # running: the worker must stop it
        assert store.get_job("job_2").status == "cancelling"  # type: ignore[union-attr]

        reaped = store.reap_dead_workers(timeout_s=10)
        assert sorted(reaped) == ["job_0", "job_1", "job_2"]
        computing, waiting, cancelled = (store.get_job(f"job_{i}") for i in range(3))
        # a dead worker's job is re-run, whether or not it had started computing
        assert computing.status == "queued" and waiting.status == "queued"  # type: ignore[union-attr]
        assert cancelled.status == "cancelled"  # type: ignore[union-attr]
        kinds = [e.type for e in store.events("job_0", 0, 100)]
        assert kinds == ["status", "status", "placement", "stage", "progress", "status", "warning"]
        assert "starts over" in store.events("job_0", 0, 100)[-1].data["message"]
        # a job requeued once and lost again is failed, not requeued forever
        store.claim_job("dead")
        store.claim_job("dead")
        assert store.get_job("job_0").attempts == 2 and store.get_job("job_1").attempts == 2  # type: ignore[union-attr]
        assert sorted(store.reap_dead_workers(timeout_s=10)) == ["job_0", "job_1"]
        for job_id in ("job_0", "job_1"):
            lost = store.get_job(job_id)
            assert lost.status == "failed" and lost.error_code == "worker_lost"  # type: ignore[union-attr]
            assert "heartbeats" in lost.error_message  # type: ignore[union-attr,operator]
    finally:
        store.close()
