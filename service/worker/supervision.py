"""The worker: claims queued jobs, runs each in its own process group, and owns their final status.

A job process may die in any way (user error, bug, OOM killer, someone's kill -9); the worker sees its
exit status and turns it into `failed` with a reason. A worker that dies itself stops heartbeating, and
any other worker (or its own successor) reaps its jobs via `Store.reap_dead_workers`; its job processes
die with it (parent-death signal), and the next worker to start removes their temporary directories.

A job runs on the GPUs its claim gave it (by UUID, through CUDA_VISIBLE_DEVICES) and holds them until
its process ends: slots bound how many jobs a worker runs, its free GPUs which jobs it can claim.

Every change the worker makes to a job is fenced by its claim (worker id and attempt): when a change is
refused, the job was reaped from this worker (it paused too long, or its heartbeats could not get
through), so the worker kills the job's processes and throws their outputs away instead of publishing.
Store errors (a locked or unreachable database, a full disk) are retried with backoff, and one that
persists costs a tick, never the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pruning.runtime.procs import parent_death_signal
from service.errors import public_message
from service.objects.backends import open_storage
from service.settings import Settings
from service.store import Claim, FreeGpu, Store
from service.store.engine import DATABASE_URL_ENV
from service.store.tables import WorkerRow
from service.worker.inventory import gpus_now, own_gpus
from service.worker.limits import Watchdog, grace_s, memory_limit_bytes, time_cap_s
from service.worker.process import (
    TMP_PREFIX,
    Running,
    failure,
    parse_tmp_dir_name,
    store_was_unavailable,
    tmp_dir_name,
    without_secrets,
)
from service.worker.publication import Publisher
from service.worker.retry import StoreCall

log = logging.getLogger("fwdprune.worker")

MAX_TICK_BACKOFF_S = 30.0
SKEW_WARN_S = 5.0  # a heartbeat stamp this far ahead of this worker's clock: another clock leads its own
SKEW_NOTICE_EVERY_S = 600.0
# a job whose process outlasted the store's retry window is requeued until it has had this many attempts
STORE_OUTAGE_ATTEMPTS = 5


class Worker:
    def __init__(
        self,
        settings: Settings,
        slots: int | None = None,
        store: Store | None = None,
        gpus: list[dict[str, Any]] | None = None,
    ) -> None:
        """`gpus`: the devices jobs may use, as `gpu_info` lists them; default: `own_gpus`. Slots bound
        how many jobs run at once; free GPUs bound which jobs can be claimed."""
        self.settings = settings
        settings.ensure_dirs()
        self.storage = open_storage(settings)  # SettingsError for a storage URL it cannot use
        self.store = store or Store(settings.db_url, busy_timeout_s=settings.store_busy_timeout_s)
        self.gpus = gpus if gpus is not None else own_gpus(settings)
        self.slots = slots or settings.worker_slots or max(1, len(self.gpus))
        self.id = f"wrk_{socket.gethostname()[:32]}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.running: dict[str, Running] = {}
        self.stop_event = threading.Event()
        self._next_beat = 0.0
        self._started = time.time()
        self._skew_noticed = -SKEW_NOTICE_EVERY_S
        self._swept = False
        self.parent_pid: int | None = None  # embedded mode: stop when the server process is gone
        self._call = StoreCall(settings)
        self.publisher = Publisher(self.store, self.storage, settings.jobs_dir, self._call)
        self.memory_limit = memory_limit_bytes(settings.max_job_memory_bytes, self.slots)
        self.watchdog = Watchdog(
            lambda: list(self.running.values()),
            self.memory_limit,
            max(0.1, min(settings.poll_interval_s, 0.5)),
            self.stop_event,
            time.monotonic,
        )

    # lifecycle -------------------------------------------------------------------------------------------
    def run(self) -> None:
        failures = 0
        self.watchdog.start()  # the hard limits on job processes, checked apart from this loop
        try:
            while not self.stop_event.is_set():
                try:
                    self.tick()
                    failures = 0
                except Exception:
                    # a store that stays unreachable through all retries costs this tick, not the worker
                    failures += 1
                    log.exception("worker tick failed (%d in a row); carrying on", failures)
                delay = self.settings.poll_interval_s * 2 ** min(failures, 8)
                self.stop_event.wait(min(delay, max(MAX_TICK_BACKOFF_S, self.settings.poll_interval_s)))
        finally:
            self.shutdown()

    def tick(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.stop_event.set()
            return
        now = time.monotonic()
        if now >= self._next_beat:
            self.beat()
            self.give_back_strays()
            reaped = self._call(self.store.reap_dead_workers, self.settings.heartbeat_timeout_s)
            if reaped or not self._swept:
                self.sweep()
            self._next_beat = now + self.settings.heartbeat_interval_s
        for running in list(self.running.values()):
            self.supervise(running)
        while len(self.running) < self.slots and not self.stop_event.is_set():
            claimed = self.claim()
            if claimed is None:
                break
            self.start(*claimed)

    def beat(self) -> None:
        info = {
            "gpus": gpus_now(self.gpus),
            "running": sorted(self.running),
            "held_gpus": {job_id: list(r.gpus) for job_id, r in sorted(self.running.items()) if r.gpus},
        }
        row = WorkerRow(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            slots=self.slots,
            started_at=self._started,
            heartbeat_at=0.0,  # the store stamps the database's time
            info=info,
        )
        self._report_skew(self._call(self.store.heartbeat, row))

    def _report_skew(self, lag_s: float) -> None:
        """Say (at most every SKEW_NOTICE_EVERY_S) that this worker's clock lags another's: on SQLite
        leases follow the clock furthest ahead, so no live worker is reaped, but a dead one is reaped up
        to that lead late."""
        now = time.monotonic()
        if lag_s < SKEW_WARN_S or now - self._skew_noticed < SKEW_NOTICE_EVERY_S:
            return
        self._skew_noticed = now
        log.warning(
            "this worker's clock is %.0f s behind the latest heartbeat in the store (another worker's clock "
            "is ahead): leases follow the clock furthest ahead, so a worker that dies is reaped up to %.0f s "
            "late; synchronise the clocks (NTP)",
            lag_s,
            lag_s,
        )

    def give_back_strays(self) -> None:
        """Requeue jobs the store says we hold but we run no process for (a start that failed halfway)."""
        for job in self._call(self.store.jobs_of_worker, self.id):
            if job.id not in self.running:
                claim = Claim(self.id, job.attempts)
                self._call(self.store.requeue, job.id, "the worker could not start the job; requeued", claim)

    def sweep(self) -> None:
        """Remove temporary directories of jobs no live worker runs, and outputs of jobs that failed."""
        jobs_dir = self.settings.jobs_dir
        # listed before the store is read: a directory made after its job's claim is then never mistaken
        names = [entry.name for entry in jobs_dir.iterdir() if entry.is_dir()]
        live = self._call(self.store.live_claims, self.settings.heartbeat_timeout_s)
        live |= {(r.job_id, r.claim.attempt) for r in self.running.values()}
        live_ids = {job_id for job_id, _ in live}
        for name in names:
            if name.startswith(TMP_PREFIX):
                job_id, attempt = parse_tmp_dir_name(name)
                if (job_id, attempt) not in live and not (attempt is None and job_id in live_ids):
                    shutil.rmtree(jobs_dir / name, ignore_errors=True)
        # a worker killed mid-publication leaves a published directory behind a job that then failed
        statuses = self._call(self.store.job_statuses, [n for n in names if not n.startswith(".")])
        for job_id, status in statuses.items():
            if status in ("failed", "cancelled"):
                shutil.rmtree(jobs_dir / job_id, ignore_errors=True)
        self.publisher.sweep_uploads()
        self._swept = True

    def shutdown(self) -> None:
        """Stop our job processes and give their jobs back to the queue, so a restart loses nothing."""
        for running in list(self.running.values()):
            running.shutdown = True
            running.signal(signal.SIGTERM)
        deadline = time.time() + min(self.settings.cancel_grace_s, 5.0)
        for running in list(self.running.values()):
            try:
                running.proc.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                running.signal(signal.SIGKILL)
                running.proc.wait()
            try:
                self._finalize(running)
            except Exception:
                log.exception("could not requeue job %s on shutdown; the reaper will", running.job_id)
                self._discard(running)
        with contextlib.suppress(Exception):
            self._call(self.store.remove_worker, self.id)
        self.store.close()

    # jobs ------------------------------------------------------------------------------------------------
    def free_gpus(self) -> list[FreeGpu]:
        """Our GPUs that no running job holds."""
        held = {uuid for running in self.running.values() for uuid in running.gpus}
        return [
            FreeGpu(gpu["uuid"], int(gpu["memory_total_bytes"]))
            for gpu in self.gpus
            if gpu["uuid"] not in held
        ]

    def claim(self) -> tuple[str, Claim, tuple[str, ...], float] | None:
        """The next queued job that fits our free GPUs, now ours under a new attempt number, the UUIDs
        of the GPUs it runs on, and the seconds it may run before its grace (`limits.time_cap_s`)."""
        claimed = self._call(self.store.claim_job, self.id, self.free_gpus(), gpu_worker=bool(self.gpus))
        if claimed is None:
            return None
        cap = time_cap_s(claimed.job.request or {}, self.settings.max_job_seconds)
        return claimed.job.id, Claim(self.id, claimed.job.attempts), claimed.gpus, cap

    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        """The job process's argv: nothing secret, since every user of the host can read it (`ps`); the
        database URL, which may hold a password, goes in its environment (`runner_env`)."""
        return [
            sys.executable,
            "-m",
            "service.worker.job_runner",
            "--job-id",
            job_id,
            "--out-dir",
            str(tmp_dir / "out"),
            "--result",
            str(tmp_dir / "result.json"),
            "--device",
            self.settings.device,
            "--worker-id",
            claim.worker_id,
            "--attempt",
            str(claim.attempt),
            "--worker-pid",
            str(os.getpid()),
            "--storage-url",  # where the job's files are and its outputs go; credentials stay in env
            self.storage.url,
            "--store-retry-window-s",
            str(self.settings.store_retry_window_s),
            "--store-busy-timeout-s",
            str(self.settings.store_busy_timeout_s),
            *self._model_options(),
        ]

    def _model_options(self) -> list[str]:
        """Where the job runner finds models on this host, and whether it may fetch missing ones."""
        options = ["--models-dir", str(self.settings.models_dir.resolve())]
        if self.settings.hf_cache_dir is not None:
            options += ["--hf-cache-dir", str(self.settings.hf_cache_dir.resolve())]
        if self.settings.allow_model_download:
            options.append("--allow-model-download")
        return options

    def runner_env(self, gpus: Sequence[str]) -> dict[str, str]:
        """The job process's environment: the worker's without the API's keys, with the store's URL (a
        process's environment is readable by its own user only, its argv by everyone)."""
        env = without_secrets(os.environ)
        env[DATABASE_URL_ENV] = self.store.url
        if self.gpus:
            # the job's own GPUs, named by UUID (CUDA's device order need not follow NVML's indices);
            # none: a CPU job on a GPU worker sees no GPU at all
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return env

    def start(
        self, job_id: str, claim: Claim, gpus: tuple[str, ...] = (), time_cap: float | None = None
    ) -> None:
        """Start the job's process; it is killed once it has run `time_cap` (default: this worker's
        FWDPRUNE_MAX_JOB_SECONDS) plus the grace, or its memory passes the bound (`limits.Watchdog`)."""
        tmp_dir = self.settings.jobs_dir / tmp_dir_name(job_id, claim.attempt)
        try:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir()  # the jobs directory is made at setup only: one that went away is an error
            log_file = (tmp_dir / "job.log").open("wb")
        except OSError:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            self._call(self.store.requeue, job_id, "the worker could not prepare the job; requeued", claim)
            raise
        # its own session, so cancel can signal the job's whole process tree (data loaders and all);
        # the parent-death signal ends it with this worker, however the worker dies
        proc = subprocess.Popen(
            self.runner_command(job_id, claim, tmp_dir),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.runner_env(gpus),
            start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGKILL),
        )
        running = Running(job_id, claim, gpus, proc, tmp_dir, log_file)
        running.time_cap_s = self.settings.max_job_seconds if time_cap is None else time_cap
        running.deadline_s = running.time_cap_s + grace_s(running.time_cap_s, self.settings.job_grace_s)
        self.running[job_id] = running
        if not self._call(self.store.set_pid, job_id, proc.pid, claim):
            self._abandon(running, "the job was taken from this worker before its process started")

    def supervise(self, running: Running) -> None:
        if running.proc.poll() is not None:
            self._finalize(running)
            return
        job = self._call(self.store.get_job, running.job_id)
        if job is None or not running.holds(job):
            self._abandon(running, "the job was taken from this worker")
            return
        if running.term_sent_at is None:
            if job.status == "cancelling":
                running.signal(signal.SIGTERM)
                running.term_sent_at = time.time()
        elif not running.killed and time.time() - running.term_sent_at >= self.settings.cancel_grace_s:
            running.signal(signal.SIGKILL)
            running.killed = True

    def _abandon(self, running: Running, reason: str) -> None:
        """Kill a job we no longer hold and throw away its outputs; its new owner (if any) runs it."""
        log.warning("job %s (attempt %d): %s; killing it", running.job_id, running.claim.attempt, reason)
        running.lost = True
        running.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.proc.wait(timeout=10)
        self._discard(running)

    def _discard(self, running: Running) -> None:
        self.running.pop(running.job_id, None)
        running.log.close()
        shutil.rmtree(running.tmp_dir, ignore_errors=True)
        self.publisher.drop_uploads(running)

    def _finalize(self, running: Running) -> None:
        """Turn an ended job process into the job's status. Raises (and keeps `running`) on store errors."""
        running.log.close()
        job = self._call(self.store.get_job, running.job_id)
        if job is None or running.lost or not running.holds(job):
            self._discard(running)  # reaped while it ran: its verdict is no longer ours to give
            return
        claim = running.claim
        if job.status == "cancelling" or running.term_sent_at is not None:
            self._call(self.store.finish_job, job.id, "cancelled", claim=claim)
        elif running.limit_hit is not None:  # the watchdog killed it: past its time or memory bound
            code, message = running.limit_hit
            self._call(
                self.store.finish_job, job.id, "failed", error_code=code, error_message=message, claim=claim
            )
        elif running.shutdown:
            self._call(self.store.requeue, job.id, "worker shut down; job requeued", claim)
        else:
            self._verdict(running, running.proc.returncode)
        # partial artifacts never outlive the job process; published ones were renamed away already
        self._discard(running)

    def _verdict(self, running: Running, rc: int) -> None:
        result: dict[str, Any] = {}
        if running.result_path.is_file():
            result = json.loads(running.result_path.read_text(encoding="utf-8"))
        if rc == 0 and result.get("ok"):
            self.publisher.publish(running, result)
            return
        if store_was_unavailable(result, rc):
            self._store_outage(running, result.get("message"))
            return
        code, message = failure(result, rc, running.log_tail())
        # the whole message for the operator; the job's owner gets it without SQL, worker id or host
        log.warning(
            "job %s (attempt %d) failed: %s: %s", running.job_id, running.claim.attempt, code, message
        )
        self._call(
            self.store.finish_job,
            running.job_id,
            "failed",
            error_code=code,
            error_message=public_message(message, hosts=(socket.gethostname(),)),
            claim=running.claim,
        )

    def _store_outage(self, running: Running, message: str | None) -> None:
        """The job process gave up on a store that failed it for the whole retry window: not the job's
        failure, so it goes back to the queue, until it has had STORE_OUTAGE_ATTEMPTS attempts (a store
        that fails only the job's process must not keep it going round for ever)."""
        attempt = running.claim.attempt
        log.warning("job %s (attempt %d): the store failed its process: %s", running.job_id, attempt, message)
        outage = f"the job store could not take the job's writes for {self.settings.store_retry_window_s:g}s"
        if attempt < STORE_OUTAGE_ATTEMPTS:
            reason = f"{outage}; requeued after attempt {attempt} of {STORE_OUTAGE_ATTEMPTS}"
            self._call(self.store.requeue, running.job_id, reason, running.claim)
            return
        self._call(
            self.store.finish_job,
            running.job_id,
            "failed",
            error_code="internal_error",
            error_message=f"{outage}, in attempt {attempt} of {STORE_OUTAGE_ATTEMPTS}",
            claim=running.claim,
        )


def run_worker(settings: Settings, slots: int | None = None, parent_pid: int | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(settings, slots)
    worker.parent_pid = parent_pid

    def stop(_signum: int, _frame: Any) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
