"""Processes coming and going: job processes die with their worker, concurrent first starts migrate once,
`fwdprune serve` restarts its embedded worker, and probes show details to admins only."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from service.store import Store
from service.worker import Worker
from tests.service.conftest import ADMIN, KEY_A, REPO, Server
from tests.service.conftest import queue_job as _queue

# A worker process whose job processes sleep instead of pruning: `guarded` ones run the job runner's own
# guard (parent-death signal and watchdog), `plain` ones rely on what the worker sets when it starts them.
WORKER_SCRIPT = """
import os, sys
from service.settings import Settings
from service.worker import Worker

GUARDED = "from service.worker.job_runner import die_with_worker; die_with_worker(int(sys.argv[1])); "

class SleepingWorker(Worker):
    def runner_command(self, job_id, claim, tmp_dir):
        guard = GUARDED if job_id.endswith("guarded") else ""
        return [sys.executable, "-c", guard + "import time; time.sleep(120)", str(os.getpid())]

SleepingWorker(Settings(), slots=2).run()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie (dead, not yet reaped by its new parent) is gone too
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _until(check: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def test_job_processes_die_with_a_killed_worker(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")} | {
        "FWDPRUNE_DATA_DIR": str(data_dir),
        "FWDPRUNE_HEARTBEAT_INTERVAL_S": "0.2",
        "FWDPRUNE_HEARTBEAT_TIMEOUT_S": "1",
        "FWDPRUNE_POLL_INTERVAL_S": "0.05",
    }
    settings = Settings(
        data_dir=data_dir, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, poll_interval_s=0.05
    )
    settings.ensure_dirs()
    store = Store(settings.db_url)
    jobs = ["job_guarded", "job_plain"]
    for job_id in jobs:
        _queue(store, job_id)
    worker = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT], cwd=REPO, env=env)
    try:

        def pids() -> list[int] | None:
            found = [j.pid for j in (store.get_job(job_id) for job_id in jobs) if j is not None and j.pid]
            return found if len(found) == len(jobs) else None

        runner_pids = _until(pids, 30, "both jobs to start")
        assert all(_alive(pid) for pid in runner_pids)
        assert len(list(settings.jobs_dir.glob(".tmp-*"))) == 2
        worker.kill()  # kill -9: no shutdown code runs
        worker.wait(timeout=10)
        _until(lambda: not any(_alive(pid) for pid in runner_pids), 5, "the job processes to die")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)

    successor = Worker(settings, slots=1, store=Store(settings.db_url, migrate=False))
    successor.slots = 0  # it only reaps and cleans up here: the stand-in jobs would not run

    def cleaned() -> bool:
        successor.tick()
        return not list(settings.jobs_dir.glob(".tmp-*"))

    try:
        _until(cleaned, 10, "the successor to remove the dead worker's temporary directories")
        assert {store.get_job(job_id).status for job_id in jobs} == {"queued"}  # type: ignore[union-attr]
    finally:
        successor.shutdown()
        store.close()


def _upgrade(url: str, barrier: Any, results: Any) -> None:
    from service.store.engine import upgrade

    barrier.wait(timeout=30)  # all at once, as API and workers starting together on an empty database
    try:
        upgrade(url)
        results.put("ok")
    except Exception as err:  # reported to the test, which shows it
        results.put(f"{type(err).__name__}: {err}")


def test_concurrent_first_starts_migrate_once(db_url: str) -> None:
    processes = 4
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_upgrade, args=(db_url, barrier, results)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * processes
    store = Store(db_url, migrate=False)
    try:
        assert store.count_by_status()["queued"] == 0  # the schema is there, and whole
    finally:
        store.close()


def test_migrate_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "migrate", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    store = Store(f"sqlite:///{tmp_path / 'data' / 'fwdprune.db'}", migrate=False)
    try:
        assert store.count_by_status()["succeeded"] == 0
    finally:
        store.close()


def test_probes_show_details_to_admins_only(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_keys=[KEY_A], admin_keys=[ADMIN])
    with TestClient(create_app(settings)) as client:
        store: Store = client.app.state.store  # type: ignore[attr-defined]
        worker = Worker(settings, slots=1, store=Store(settings.db_url, migrate=False))
        try:
            worker.beat()
            assert client.get("/healthz").json() == {"status": "ok"}
            anonymous = client.get("/readyz")
            assert anonymous.status_code == 200 and anonymous.json() == {"status": "ready"}
            user = client.get("/readyz", headers={"Authorization": f"Bearer {KEY_A}"})
            assert user.json() == {"status": "ready"}
            admin = client.get("/readyz", headers={"Authorization": f"Bearer {ADMIN}"}).json()
            assert admin["worker_ids"] == [worker.id] and admin["jobs"]["queued"] == 0
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY_A}"}).status_code == 403
            scrape = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
            assert scrape.status_code == 200 and "fwdprune_workers 1.0" in scrape.text
            worker.store.remove_worker(worker.id)
            assert client.get("/readyz").status_code == 503  # no live worker
            assert store.live_workers(settings.heartbeat_timeout_s) == []
        finally:
            worker.shutdown()
    public = Settings(data_dir=tmp_path / "data", api_keys=[KEY_A], public_metrics=True)
    with TestClient(create_app(public)) as client:
        assert client.get("/metrics").status_code == 200
        assert "jobs" in client.get("/readyz").json()


def test_serve_restarts_its_embedded_worker(tmp_path: Path, models_dir: Path) -> None:
    server = Server(tmp_path / "data", models_dir).start()  # ready: its worker has sent a heartbeat
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}

        def worker_ids() -> list[str]:
            return list(
                httpx.get(f"{server.url}/readyz", headers=admin, timeout=5).json().get("worker_ids", [])
            )

        first = _until(worker_ids, 30, "a live worker")
        pid = int(first[0].split("_")[-2])  # wrk_<host>_<pid>_<suffix>
        os.kill(pid, signal.SIGKILL)
        _until(lambda: any(w not in first for w in worker_ids()), 30, "a restarted worker", step_s=0.25)
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()


def _with_password(url: str) -> str:
    """`url` with a password in it (the local PostgreSQL trusts loopback and never asks for it)."""
    return url.replace("postgres@", "postgres:hunter2-in-the-url@") if url.startswith("postgresql") else url


def test_the_database_url_reaches_the_job_process_through_its_environment(
    db_url: str, tmp_path: Path
) -> None:
    """`ps` shows every user each process's argv: the store's URL (a password and all) is not in it."""
    url = _with_password(db_url)
    settings = Settings(data_dir=tmp_path / "data", device="cpu", database_url=url, heartbeat_interval_s=1000)
    worker = Worker(settings, slots=1, store=Store(url))
    try:
        job_id = _queue(worker.store)  # its request names no model: the job runner fails it, in the store
        worker.tick()
        pid = worker.running[job_id].proc.pid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"service.worker.job_runner" in argv and url.encode() not in b" ".join(argv)
        assert not any(b"hunter2" in arg or b"sqlite" in arg or b"postgresql" in arg for arg in argv)
        assert worker.runner_env(())["FWDPRUNE_DATABASE_URL"] == url
        worker.running[job_id].proc.wait(timeout=120)
        worker.tick()
        job = worker.store.get_job(job_id)
        assert job is not None and job.status == "failed"
        assert (job.error_message or "").startswith("ValidationError")  # it read its job from the store
    finally:
        worker.shutdown()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings built in-process read FWDPRUNE_* variables: the developer's own must not leak in."""
    for name in list(os.environ):
        if name.startswith("FWDPRUNE_"):
            monkeypatch.delenv(name)
