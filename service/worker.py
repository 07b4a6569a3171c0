"""The worker: claims queued jobs, runs each in its own process group, and owns their final status.

A job process may die in any way (user error, bug, OOM killer, someone's kill -9); the worker sees its
exit status and turns it into `failed` with a reason. A worker that dies itself stops heartbeating, and
any other worker (or its own successor) reaps its jobs via `Store.reap_dead_workers`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.artifacts import describe
from service.db import WorkerRow
from service.settings import Settings
from service.store import Store


def gpu_info() -> list[dict[str, Any]]:
    """GPUs as NVML sees them (no torch in the worker); empty without nvidia-ml-py or an NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        return []
    try:
        return [_gpu(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError:
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _gpu(nvml: Any, index: int) -> dict[str, Any]:
    """One GPU: NVML's index (nvidia-smi's), memory in bytes, and the UUID that names it to CUDA."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        "index": index,
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_used_bytes": int(memory.used),
        "memory_total_bytes": int(memory.total),
    }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass
class Running:
    job_id: str
    slot: int
    proc: subprocess.Popen[bytes]
    tmp_dir: Path
    log: Any
    term_sent_at: float | None = None
    killed: bool = False
    shutdown: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def result_path(self) -> Path:
        return self.tmp_dir / "result.json"

    @property
    def out_dir(self) -> Path:
        return self.tmp_dir / "out"


class Worker:
    def __init__(self, settings: Settings, slots: int | None = None, store: Store | None = None) -> None:
        self.settings = settings
        settings.ensure_dirs()
        self.store = store or Store(settings.db_url)
        self.gpus = gpu_info()
        self.slots = slots or settings.worker_slots or max(1, len(self.gpus))
        self.id = f"wrk_{socket.gethostname()[:32]}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.running: dict[str, Running] = {}
        self.stop_event = threading.Event()
        self._next_beat = 0.0
        self._started = time.time()
        self.parent_pid: int | None = None  # embedded mode: stop when the server process is gone

    # lifecycle -------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.tick()
                self.stop_event.wait(self.settings.poll_interval_s)
        finally:
            self.shutdown()

    def tick(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.stop_event.set()
            return
        now = time.time()
        if now >= self._next_beat:
            self.beat(now)
            self.store.reap_dead_workers(self.settings.heartbeat_timeout_s)
            self._next_beat = now + self.settings.heartbeat_interval_s
        for running in list(self.running.values()):
            self.supervise(running)
        while len(self.running) < self.slots and not self.stop_event.is_set():
            job = self.store.claim_job(self.id)
            if job is None:
                break
            self.start(job.id)

    def beat(self, now: float) -> None:
        info = {"gpus": gpu_info() if self.gpus else [], "running": sorted(self.running)}
        self.store.heartbeat(
            WorkerRow(
                id=self.id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                slots=self.slots,
                started_at=self._started,
                heartbeat_at=now,
                info=info,
            )
        )

    def shutdown(self) -> None:
        """Stop our job processes and give their jobs back to the queue, so a restart loses nothing."""
        for running in list(self.running.values()):
            running.shutdown = True
            self._signal(running, signal.SIGTERM)
        deadline = time.time() + min(self.settings.cancel_grace_s, 5.0)
        for running in list(self.running.values()):
            try:
                running.proc.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self._signal(running, signal.SIGKILL)
                running.proc.wait()
            self._finalize(running)
        self.store.remove_worker(self.id)
        self.store.close()

    # jobs ------------------------------------------------------------------------------------------------
    def start(self, job_id: str) -> None:
        slot = next(i for i in range(self.slots) if i not in {r.slot for r in self.running.values()})
        tmp_dir = self.settings.jobs_dir / f".tmp-{job_id}"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        env = dict(os.environ)
        if self.gpus:
            # one GPU per slot, named by UUID: CUDA's own device order need not follow NVML's indices
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot].get("uuid") or str(self.gpus[slot]["index"])
        log = (tmp_dir / "job.log").open("wb")
        cmd = [
            sys.executable,
            "-m",
            "service.job_runner",
            "--database-url",
            self.store.url,
            "--job-id",
            job_id,
            "--out-dir",
            str(tmp_dir / "out"),
            "--result",
            str(tmp_dir / "result.json"),
            "--device",
            self.settings.device,
        ]
        # its own session, so cancel can signal the job's whole process tree (data loaders and all)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.store.set_pid(job_id, proc.pid)
        self.running[job_id] = Running(job_id, slot, proc, tmp_dir, log)

    def supervise(self, running: Running) -> None:
        if running.proc.poll() is not None:
            self._finalize(running)
            return
        if running.term_sent_at is None:
            job = self.store.get_job(running.job_id)
            if job is None or job.status == "cancelling":
                self._signal(running, signal.SIGTERM)
                running.term_sent_at = time.time()
        elif not running.killed and time.time() - running.term_sent_at >= self.settings.cancel_grace_s:
            self._signal(running, signal.SIGKILL)
            running.killed = True

    @staticmethod
    def _signal(running: Running, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.proc.pid, sig)

    def _finalize(self, running: Running) -> None:
        self.running.pop(running.job_id, None)
        running.log.close()
        rc = running.proc.returncode
        job = self.store.get_job(running.job_id)
        try:
            if job is None:
                return
            if job.status == "cancelling" or running.term_sent_at is not None:
                self.store.finish_job(job.id, "cancelled")
            elif running.shutdown:
                self.store.requeue(job.id, "worker shut down; job requeued")
            else:
                self._verdict(running, rc)
        finally:
            # partial artifacts never outlive the job process; published ones were renamed away already
            shutil.rmtree(running.tmp_dir, ignore_errors=True)

    def _verdict(self, running: Running, rc: int) -> None:
        result: dict[str, Any] = {}
        if running.result_path.is_file():
            result = json.loads(running.result_path.read_text(encoding="utf-8"))
        if rc == 0 and result.get("ok"):
            final = self.settings.jobs_dir / running.job_id
            shutil.rmtree(final, ignore_errors=True)
            artifacts = describe(running.out_dir)
            running.out_dir.rename(final)  # atomic publication: same filesystem, one rename
            self.store.finish_job(
                running.job_id, "succeeded", metrics=result.get("metrics"), artifacts=artifacts
            )
            return
        if result:
            code, message = result.get("code", "internal_error"), result.get("message")
        elif rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            code = "worker_lost"
            message = f"job process was killed by signal {name}"
            if -rc == signal.SIGKILL:
                message += " (by an operator or the kernel's out-of-memory killer)"
        else:
            code, message = (
                "internal_error",
                f"job process exited with status {rc}: {self._log_tail(running)}",
            )
        self.store.finish_job(running.job_id, "failed", error_code=code, error_message=message)

    @staticmethod
    def _log_tail(running: Running, limit: int = 2000) -> str:
        try:
            return (running.tmp_dir / "job.log").read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""


def run_worker(settings: Settings, slots: int | None = None, parent_pid: int | None = None) -> None:
    worker = Worker(settings, slots)
    worker.parent_pid = parent_pid

    def stop(_signum: int, _frame: Any) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
