"""The store on SQLite and PostgreSQL: migrations, ownership, atomic claims, cancellation, reaping."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy import event, update

from service.store import IdempotencyConflict, QueueFull, Store, StoredBytesExceeded
from service.store.tables import FileRow, JobRow, WorkerRow


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


def _concurrently(count: int, action: Callable[[int], object]) -> list[object]:
    """`action(i)` for i in range(count), all started at once; what each returned or raised."""
    outcomes: list[object] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait(timeout=30)
        try:
            outcomes[i] = action(i)
        except Exception as err:  # the outcome the test looks at
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_queued_jobs_per_key_are_bounded(db_url: str) -> None:
    store = Store(db_url)
    stores = [Store(db_url, migrate=False) for _ in range(8)]  # as several API processes would
    try:
        outcomes = _concurrently(8, lambda i: stores[i].create_job(_job(f"job_{i}"), max_queued=3))
        assert sum(isinstance(o, tuple) for o in outcomes) == 3
        assert sum(isinstance(o, QueueFull) for o in outcomes) == 5
        assert str(next(o for o in outcomes if isinstance(o, QueueFull))) == (
            "this key already has 3 queued jobs, the most it may have waiting"
        )
        assert store.list_jobs("alice")[0] and len(store.list_jobs("alice")[0]) == 3
        assert store.create_job(_job("job_bob", owner="bob"), max_queued=3)[1]  # another key's quota
        assert store.claim_job("w1") is not None  # a job that starts no longer waits in the queue
        assert store.create_job(_job("job_next"), max_queued=3)[1]
        _, created = store.create_job(_job("job_again", key="k"), max_queued=4)
        retried, created_again = store.create_job(_job("job_retry", key="k"), max_queued=1)
        assert created and (retried.id, created_again) == ("job_again", False)  # a replay is no new job
    finally:
        for each in (store, *stores):
            each.close()


def _file(file_id: str, size: int, owner: str = "alice") -> FileRow:
    return FileRow(
        id=file_id,
        owner=owner,
        filename="a.txt",
        bytes=size,
        sha256="x" * 64,
        path=file_id,
        created_at=time.time(),
    )


def test_stored_bytes_per_key_are_bounded(db_url: str) -> None:
    store = Store(db_url)
    stores = [Store(db_url, migrate=False) for _ in range(6)]
    try:
        store.add_file(_file("file_0", 400), max_stored_bytes=1000)
        outcomes = _concurrently(
            6, lambda i: stores[i].add_file(_file(f"file_{i + 1}", 250), max_stored_bytes=1000)
        )
        assert sum(isinstance(o, FileRow) for o in outcomes) == 2  # 400 + 2 x 250 of 1000
        refused = [o for o in outcomes if isinstance(o, StoredBytesExceeded)]
        assert (
            len(refused) == 4
            and str(refused[0])
            == "this key's files and published checkpoints hold 900 bytes of the 1000 it may keep"
        )
        assert store.stored_bytes("alice") == 900 and store.stored_bytes("bob") == 0
        store.add_file(_file("file_bob", 1000, owner="bob"), max_stored_bytes=1000)
    finally:
        for each in (store, *stores):
            each.close()


def test_files_are_listed_a_page_at_a_time(db_url: str) -> None:
    store = Store(db_url)
    try:
        for i in range(5):
            store.add_file(_file(f"file_{i}", 1))
        store.add_file(_file("file_bob", 1, owner="bob"))
        pages, after = [], None
        while True:
            rows, more = store.list_files("alice", limit=2, after=after)
            pages.append([row.id for row in rows])
            if not more:
                break
            after = rows[-1].id
        assert pages == [["file_4", "file_3"], ["file_2", "file_1"], ["file_0"]]
        assert store.list_files("alice", after="file_nope") == ([], False)
        assert len(store.list_files(None, limit=10)[0]) == 6  # an admin's view of every key's
    finally:
        store.close()


def test_deleting_a_file_asks_sql_which_jobs_read_it(db_url: str) -> None:
    """No job is loaded into Python to decide, inside the delete's write transaction."""
    store = Store(db_url)
    loaded: list[str] = []

    def count(target: JobRow, _context: object) -> None:
        loaded.append(target.id)

    try:
        store.add_file(_file("file_1", 1))
        store.add_file(_file("file_2", 1))
        for i in range(200):
            store.create_job(_job(f"job_{i}"))  # each reads file_1
        done = _job("job_done")
        done.request = {"calibration_file": "file_x", "eval_file": "file_2"}
        store.create_job(done)
        event.listen(JobRow, "load", count)
        assert not store.delete_file("file_1")
        assert store.get_file("file_1", None) is not None  # still there: unfinished jobs read it
        assert not store.delete_file("file_2")  # a queued job's eval_file
        store.request_cancel("job_done")
        assert store.delete_file("file_2")
        assert loaded == []
    finally:
        event.remove(JobRow, "load", count)
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
