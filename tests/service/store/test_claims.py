"""Who takes which job: concurrent claims (FOR UPDATE SKIP LOCKED on PostgreSQL, conditional UPDATEs on
SQLite), jobs that fit a worker's free GPUs, the GPUs CUDA_VISIBLE_DEVICES leaves a worker, GPUs held by
running jobs, and a dead worker's job re-run once before it fails."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from service.settings import Settings
from service.store import Claim, FreeGpu, Store, gpus_for
from service.store.tables import JobRow, WorkerRow
from service.worker import Worker, own_gpus, visible_gpus
from tests.service.conftest import queue_job as _queue

GIB = 1 << 30


def _status(store: Store, job_id: str) -> str:
    job = store.get_job(job_id)
    assert job is not None
    return job.status


def _placements(store: Store, job_id: str) -> list[dict[str, Any]]:
    return [e.data for e in store.events(job_id, 0, 100) if e.type == "placement"]


# fairness -----------------------------------------------------------------------------------------------
def test_another_keys_single_job_is_claimed_next(db_url: str) -> None:
    """Alice queued many jobs, then Bob one: Bob's is the next a worker takes, whether it has one slot
    (Alice's first job has ended) or several (Alice's first job still runs)."""
    store = Store(db_url)
    try:
        alice = [_queue(store, f"job_alice_{i}", owner="alice") for i in range(20)]
        bob = _queue(store, "job_bob", owner="bob")
        first = store.claim_job("w1")
        assert first is not None and first.job.id == alice[0]  # nobody has run anything: the oldest
        second = store.claim_job("w2")  # Alice has a job running, Bob none
        assert second is not None and second.job.id == bob
        third = store.claim_job("w3")
        assert third is not None and third.job.id == alice[1]
    finally:
        store.close()


def test_one_slot_takes_turns_between_keys(db_url: str) -> None:
    store = Store(db_url)
    try:
        for i in range(3):
            _queue(store, f"job_alice_{i}", owner="alice")
        for i in range(2):
            _queue(store, f"job_bob_{i}", owner="bob")
        order = []
        while (claimed := store.claim_job("w1")) is not None:
            order.append(claimed.job.id)
            # each job ends before the next claim, a little later than the last one started
            store.finish_job(claimed.job.id, "succeeded", claim=Claim("w1", claimed.job.attempts))
            time.sleep(0.01)
        assert order == ["job_alice_0", "job_bob_0", "job_alice_1", "job_bob_1", "job_alice_2"]
    finally:
        store.close()


# concurrency --------------------------------------------------------------------------------------------
def test_concurrent_workers_claim_each_job_exactly_once(db_url: str) -> None:
    store = Store(db_url)
    jobs = [_queue(store, f"job_{i:02d}") for i in range(40)]
    claims: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(name: str) -> None:
        mine = Store(db_url, migrate=False)  # its own engine and connections, as a worker host has
        try:
            start.wait(timeout=30)  # all at once
            while (claimed := mine.claim_job(name)) is not None:
                with lock:
                    claims.append((claimed.job.id, name))
        except BaseException as err:  # reported by the test
            errors.append(err)
        finally:
            mine.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        assert sorted(job_id for job_id, _ in claims) == jobs  # every job, none twice
        for job_id, name in claims:
            job = store.get_job(job_id)
            assert job is not None and (job.status, job.worker_id, job.attempts) == ("running", name, 1)
            assert _placements(store, job_id) == [{"worker": name, "gpus": []}]
    finally:
        store.close()


def test_postgresql_claims_skip_a_row_another_claim_holds(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks and SKIP LOCKED are PostgreSQL's; SQLite serialises whole transactions")
    store = Store(db_url)
    try:
        first, second = _queue(store, "job_first"), _queue(store, "job_second")
        with store.engine.connect() as holder:
            # another worker is in the middle of claiming the oldest job: its row is locked
            holder.execute(select(JobRow.id).where(JobRow.id == first).with_for_update())
            got: list[str | None] = []

            def claim() -> None:
                claimed = store.claim_job("w")
                got.append(None if claimed is None else claimed.job.id)

            claimer = threading.Thread(target=claim)
            claimer.start()
            claimer.join(timeout=10)
            assert not claimer.is_alive(), "the claim waited for the locked row instead of skipping it"
            assert got == [second]
            holder.rollback()
        claimed = store.claim_job("w")  # the lock is gone: the skipped job is next
        assert claimed is not None and claimed.job.id == first
    finally:
        store.close()


# GPU fit --------------------------------------------------------------------------------------------------
def test_cpu_only_worker_takes_only_jobs_that_ask_for_no_gpu(db_url: str) -> None:
    store = Store(db_url)
    try:
        one_gpu = _queue(store, "job_one_gpu", gpus=1)
        memory_floor = _queue(store, "job_memory_floor", min_gib=8)  # names GPU memory: wants a GPU
        anywhere = _queue(store, "job_anywhere")
        claimed = store.claim_job("cpu")
        assert claimed is not None and (claimed.job.id, claimed.gpus) == (anywhere, ())
        assert store.claim_job("cpu") is None
        assert _status(store, one_gpu) == "queued" and _status(store, memory_floor) == "queued"
    finally:
        store.close()


def test_gpu_worker_takes_the_oldest_job_its_free_gpus_fit(db_url: str) -> None:
    store = Store(db_url)
    small = [FreeGpu("GPU-a", 24 * GIB), FreeGpu("GPU-b", 24 * GIB)]
    try:
        four = _queue(store, "job_four", gpus=4)
        big_memory = _queue(store, "job_80gib", gpus=1, min_gib=80)
        pair = _queue(store, "job_pair", gpus=2, min_gib=20)
        anywhere = _queue(store, "job_anywhere")
        single = _queue(store, "job_single", gpus=1)

        claimed = store.claim_job("small", small)  # skips the two it cannot run, oldest first otherwise
        assert claimed is not None and (claimed.job.id, claimed.gpus) == (pair, ("GPU-a", "GPU-b"))
        assert _placements(store, pair) == [{"worker": "small", "gpus": ["GPU-a", "GPU-b"]}]
        # both GPUs held by the pair: even a job that asks for none waits, it would run on a GPU here
        assert store.claim_job("small", [], gpu_worker=True) is None
        claimed = store.claim_job("small", small[1:])  # GPU-a is still held
        assert claimed is not None and (claimed.job.id, claimed.gpus) == (anywhere, ("GPU-b",))
        claimed = store.claim_job("small", small[:1])
        assert claimed is not None and (claimed.job.id, claimed.gpus) == (single, ("GPU-a",))
        assert store.claim_job("small", small) is None  # what is left needs more than it has
        assert _status(store, four) == "queued" and _status(store, big_memory) == "queued"

        large = [FreeGpu(f"GPU-{i}", 141 * GIB) for i in range(4)]
        claimed = store.claim_job("large", large)
        assert claimed is not None and (claimed.job.id, len(claimed.gpus)) == (four, 4)
        claimed = store.claim_job("large", large[3:])
        assert claimed is not None and (claimed.job.id, claimed.gpus) == (big_memory, ("GPU-3",))
    finally:
        store.close()


def test_fit_rule() -> None:
    mixed = [FreeGpu("GPU-small", 16 * GIB), FreeGpu("GPU-big", 80 * GIB), FreeGpu("GPU-big2", 80 * GIB)]
    assert gpus_for(0, None, mixed, gpu_worker=True) == ("GPU-small",)
    assert gpus_for(0, 40 * GIB, mixed, gpu_worker=True) == ("GPU-big",)
    assert gpus_for(2, 40 * GIB, mixed, gpu_worker=True) == ("GPU-big", "GPU-big2")
    assert gpus_for(3, 40 * GIB, mixed, gpu_worker=True) is None
    assert gpus_for(0, None, [], gpu_worker=True) is None  # all busy
    assert gpus_for(0, None, [], gpu_worker=False) == ()
    assert gpus_for(1, None, [], gpu_worker=False) is None


# the worker's GPUs ---------------------------------------------------------------------------------------
def _device(index: int, uuid: str, gib: int = 80, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": uuid,
        "name": "NVIDIA H100",
        "memory_used_bytes": 0,
        "memory_total_bytes": gib * GIB,
        **extra,
    }


# NVML's list: four GPUs, the last in MIG mode with two instances (listed in its place)
NVML = [
    _device(0, "GPU-0a1b2c3d-0000-0000-0000-000000000000"),
    _device(1, "GPU-1a1b2c3d-0000-0000-0000-000000000000"),
    _device(2, "GPU-2a1b2c3d-0000-0000-0000-000000000000"),
    _device(3, "MIG-3a000000-0000-0000-0000-000000000000", 40, mig=0, parent_uuid="GPU-3a1b2c3d-0"),
    _device(3, "MIG-3b000000-0000-0000-0000-000000000000", 40, mig=1, parent_uuid="GPU-3a1b2c3d-0"),
]


@pytest.mark.parametrize(
    ("cuda_visible_devices", "expected"),
    [
        (None, [0, 1, 2, 3, 4]),  # unset: every device
        ("", []),
        ("-1", []),
        ("2,0", [2, 0]),  # in the operator's order
        (" 1 , 2 ", [1, 2]),
        ("1,1", [1]),
        ("1,7,2", [1]),  # CUDA stops at the first entry that names no device
        ("GPU-2a1b2c3d-0000-0000-0000-000000000000,0", [2, 0]),
        ("GPU-1a", [1]),  # a UUID prefix that names one GPU
        ("GPU-,1", []),  # one that names several names none
        ("MIG-3b000000-0000-0000-0000-000000000000", [4]),
        ("3", [3, 4]),  # a GPU in MIG mode brings its instances
        ("GPU-3a1b2c3d-0,0", [3, 4, 0]),
        ("MIG-GPU-3a1b2c3d/1/0", []),
    ],
)
def test_cuda_visible_devices_filter(cuda_visible_devices: str | None, expected: list[int]) -> None:
    assert visible_gpus(NVML, cuda_visible_devices) == [NVML[i] for i in expected]


# a stand-in job runner that waits for a `release` file, then reports the GPUs it was given
RUNNER = """
import json, os, pathlib, sys, time
out, result = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
deadline = time.monotonic() + 60
while not (result.parent / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
out.mkdir(parents=True, exist_ok=True)
metrics = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
result.write_text(json.dumps({"ok": True, "metrics": metrics, "artifacts": []}))
"""


class GpuWorker(Worker):
    """A real worker, given its GPUs as data, whose job processes are RUNNER instead of the engine."""

    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        return [sys.executable, "-c", RUNNER, str(tmp_dir / "out"), str(tmp_dir / "result.json")]


def _release_and_finish(worker: Worker, job_id: str) -> None:
    running = worker.running[job_id]
    (running.tmp_dir / "release").touch()
    running.proc.wait(timeout=30)


def test_worker_holds_a_jobs_gpus_until_it_ends(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", heartbeat_interval_s=1000.0, poll_interval_s=0.01)
    store = Store(db_url)
    gpus = [_device(0, "GPU-aaaa", 24), _device(1, "GPU-bbbb", 24)]
    # more slots than GPUs: slots bound the jobs running, free GPUs what can be claimed
    worker = GpuWorker(settings, slots=4, store=Store(db_url, migrate=False), gpus=gpus)
    try:
        first, second, third = (_queue(store, f"job_{i}", gpus=1) for i in range(3))
        worker.tick()
        assert sorted(worker.running) == [first, second] and _status(store, third) == "queued"
        assert {worker.running[first].gpus, worker.running[second].gpus} == {("GPU-aaaa",), ("GPU-bbbb",)}
        freed = worker.running[first].gpus
        _release_and_finish(worker, first)
        worker.tick()  # the first job's verdict frees its GPU, and the third job gets it
        assert sorted(worker.running) == [second, third] and worker.running[third].gpus == freed
        assert _placements(store, third) == [{"worker": worker.id, "gpus": list(freed)}]
        worker.beat()
        (row,) = store.workers()
        assert row.info["held_gpus"] == {
            second: list(worker.running[second].gpus),
            third: list(freed),
        }
        for job_id in (second, third):
            _release_and_finish(worker, job_id)
        worker.tick()
        for job_id, given in ((first, freed), (third, freed)):
            job = store.get_job(job_id)
            assert job is not None and job.status == "succeeded"
            assert job.metrics == {"cuda_visible_devices": ",".join(given)}  # what the job process saw
    finally:
        worker.shutdown()
        store.close()


def test_runner_environment_names_the_jobs_gpus(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    gpu_worker = Worker(settings, store=Store(db_url), gpus=[_device(0, "GPU-a"), _device(1, "GPU-b")])
    cpu_worker = Worker(settings, store=Store(db_url, migrate=False), gpus=[])
    try:
        assert gpu_worker.slots == 2 and cpu_worker.slots == 1
        assert gpu_worker.runner_env(("GPU-b", "GPU-a"))["CUDA_VISIBLE_DEVICES"] == "GPU-b,GPU-a"
        assert gpu_worker.runner_env(())["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees no GPU
        assert own_gpus(Settings(data_dir=tmp_path / "data", device="cpu")) == []  # a CPU-only worker
    finally:
        gpu_worker.shutdown()
        cpu_worker.shutdown()


# reaping -------------------------------------------------------------------------------------------------
def _dead_worker(store: Store, worker_id: str) -> None:
    """A worker that sent one heartbeat, 100 s ago by the database's clock."""
    now = time.time()
    store.heartbeat(
        WorkerRow(id=worker_id, hostname="h", pid=1, slots=1, started_at=now, heartbeat_at=now, info={})
    )
    with store.session() as s, s.begin():
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=WorkerRow.heartbeat_at - 100)
        )


def test_a_dead_workers_computing_job_is_rerun_once_then_failed(db_url: str) -> None:
    store = Store(db_url)
    try:
        job_id = _queue(store, "job_1")
        for attempt, worker_id in ((1, "killed"), (2, "killed_again")):
            _dead_worker(store, worker_id)
            claimed = store.claim_job(worker_id)
            assert claimed is not None and claimed.job.attempts == attempt
            claim = Claim(worker_id, attempt)
            assert store.record_event(job_id, {"type": "stage", "stage": "scoring"}, claim=claim)
            assert store.reap_dead_workers(timeout_s=10) == [job_id]
        job = store.get_job(job_id)
        assert job is not None and (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)
        assert "attempt 2 of 2" in (job.error_message or "")
        statuses = [e.data["status"] for e in store.events(job_id, 0, 100) if e.type == "status"]
        assert statuses == ["queued", "running", "queued", "running", "failed"]
    finally:
        store.close()
