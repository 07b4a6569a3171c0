"""The hard limits a worker puts on a job process: killed past its time bound plus the grace
(`time_limit_exceeded`), or once its processes hold more memory than the bound (`memory_limit_exceeded`),
each a failure code of its own; the engine's soft deadline (max_time) stays what sizes the work.

Job processes here are stand-ins for the job runner (a sleeper; one whose child holds memory), run by a
real worker loop on a real SQLite store."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from service.settings import Settings
from service.store import Claim, Store
from service.store.tables import JobRow
from service.worker import Worker
from service.worker.limits import grace_s, memory_limit_bytes, session_rss, time_cap_s
from tests.service.conftest import queue_job

MIB = 1 << 20
# a stand-in job runner: writes its pid, starts a helper holding `held` MiB in its session, then sleeps
RUNNER = """
import pathlib, subprocess, sys, time
tmp, held = pathlib.Path(sys.argv[1]), int(sys.argv[2])
hold = f"b = bytearray({held} << 20); import time; time.sleep(120)"
helper = subprocess.Popen([sys.executable, "-c", hold])
(tmp / "pids").write_text(f"{helper.pid}")
time.sleep(120)
"""


class StandInWorker(Worker):
    held_mib = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helpers: list[int] = []  # the pid of each job's helper process

    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        return [sys.executable, "-c", RUNNER, str(tmp_dir), str(self.held_mib)]

    def _discard(self, running: Any) -> None:  # note the helper's pid before the directory goes
        pid_file = running.tmp_dir / "pids"
        if pid_file.is_file():
            self.helpers.append(int(pid_file.read_text()))
        super()._discard(running)


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": f"sqlite:///{tmp_path / 'store.db'}",
        "device": "cpu",
        "heartbeat_interval_s": 0.5,
        "poll_interval_s": 0.05,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.close()


def _run_until_ended(worker: Worker, store: Store, job_id: str, timeout_s: float = 60) -> JobRow:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = store.get_job(job_id)
            if job is not None and job.status in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never ended: {store.get_job(job_id)}")
    finally:
        worker.stop_event.set()
        thread.join(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (killed, not yet reaped by its parent, itself killed and reaped by init) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_job_past_its_time_bound_and_grace_is_killed_with_its_own_code(
    tmp_path: Path, store: Store
) -> None:
    job_id = queue_job(store)
    with store.session() as s, s.begin():  # the job's own max_time, shorter than the server's
        s.execute(update(JobRow).where(JobRow.id == job_id).values(request={"max_time": 1.0}))
    worker = StandInWorker(_settings(tmp_path, max_job_seconds=3600, job_grace_s=0.5), slots=1)
    started = time.monotonic()
    job = _run_until_ended(worker, store, job_id)
    took = time.monotonic() - started
    assert (job.status, job.error_code) == ("failed", "time_limit_exceeded"), job.error_message
    assert "time bound of 1 s and the grace of 0.5 s" in (job.error_message or "")
    assert 1.5 <= took < 15, took  # not before the bound and its grace, and soon after
    assert worker.helpers and not _alive(worker.helpers[0])  # the whole process group was killed


def test_a_job_whose_processes_pass_the_memory_bound_is_killed_with_its_own_code(
    tmp_path: Path, store: Store
) -> None:
    job_id = queue_job(store)
    worker = StandInWorker(_settings(tmp_path, max_job_memory_bytes=100 * MIB), slots=1)
    worker.held_mib = 160
    assert worker.memory_limit == 100 * MIB
    job = _run_until_ended(worker, store, job_id)
    assert (job.status, job.error_code) == ("failed", "memory_limit_exceeded"), job.error_message
    assert "more than the 100 MiB a job may hold" in (job.error_message or "")
    # the helper holding the memory, in the job's session, was counted and killed with the runner
    assert worker.helpers and not _alive(worker.helpers[0])


def test_time_caps_grace_and_the_default_memory_bound() -> None:
    assert time_cap_s({"max_time": 7200.0}, 3600) == 3600  # never past the worker's own limit
    assert time_cap_s({"max_time": 600.0}, 3600) == 600
    assert time_cap_s({"time_limit": 60.0, "max_time": 600.0}, 3600) == 60  # the time it fills
    assert time_cap_s({}, 3600) == 3600
    assert grace_s(5.0, None) == 60.0 and grace_s(6 * 3600, None) == 2160.0 and grace_s(5.0, 2.0) == 2.0
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert memory_limit_bytes(None, 4) == int(total * 0.8 / 4)
    assert memory_limit_bytes(123 * MIB, 4) == 123 * MIB


def test_session_memory_counts_every_process_of_the_session() -> None:
    mine = session_rss([os.getsid(0)])[os.getsid(0)]
    assert mine > 10 * MIB  # this pytest process at least
    assert session_rss([2**22 + 12345]) == {2**22 + 12345: 0}  # no such session
