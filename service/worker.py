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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_attempt, wait_exponential

from pruning.procs import parent_death_signal
from service.artifacts import describe
from service.db import WorkerRow
from service.settings import Settings
from service.storage import StorageError, attempt_prefix, open_storage, stored_attempts
from service.store import ACTIVE, Claim, FreeGpu, Store

log = logging.getLogger("fwdprune.worker")

P = ParamSpec("P")
T = TypeVar("T")

# transient by nature: a lock held by another process, a dropped connection, a full disk
STORE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)
# a job runs user-chosen models and data: it gets no credential of the API
SECRET_ENV = ("FWDPRUNE_API_KEYS", "FWDPRUNE_ADMIN_KEYS", "FWDPRUNE_API_KEYS_FILE", "FWDPRUNE_TOKEN")
TMP_PREFIX = ".tmp-"
MAX_TICK_BACKOFF_S = 30.0


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
        return [device for index in range(pynvml.nvmlDeviceGetCount()) for device in _devices(pynvml, index)]
    except pynvml.NVMLError:
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _devices(nvml: Any, index: int) -> list[dict[str, Any]]:
    """A GPU, or in MIG mode its MIG instances: CUDA runs jobs on those, not on the GPU itself."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    gpu = _gpu(nvml, handle, index)
    instances = [
        {**_gpu(nvml, mig, index), "mig": slot, "parent_uuid": gpu["uuid"]}
        for slot, mig in _mig_handles(nvml, handle)
    ]
    return instances or [gpu]


def _mig_handles(nvml: Any, handle: Any) -> list[tuple[int, Any]]:
    """(slot, handle) of each MIG instance of a GPU in MIG mode; none for any other GPU."""
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        if current != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = nvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except (nvml.NVMLError, AttributeError):  # a GPU without MIG, or bindings without its calls
        return []
    found = []
    for slot in range(slots):
        with contextlib.suppress(nvml.NVMLError):  # an empty slot
            found.append((slot, nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)))
    return found


def _gpu(nvml: Any, handle: Any, index: int) -> dict[str, Any]:
    """One device: NVML's index (nvidia-smi's), memory in bytes, and the UUID that names it to CUDA."""
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


def visible_gpus(gpus: list[dict[str, Any]], cuda_visible_devices: str | None) -> list[dict[str, Any]]:
    """The devices of `gpus` (as `gpu_info` lists them) that CUDA_VISIBLE_DEVICES leaves visible, in its
    order; all of them when it is unset.

    Entries are NVML indices (nvidia-smi's), GPU UUIDs (`GPU-...`, or a prefix that names one GPU) or MIG
    instance UUIDs (`MIG-...`); a GPU in MIG mode named by index or UUID brings its MIG instances. As in
    CUDA, the list ends at the first entry that names no device, so `""` or `-1` hides every GPU.
    """
    if cuda_visible_devices is None:
        return list(gpus)
    visible: list[dict[str, Any]] = []
    for entry in cuda_visible_devices.split(","):
        named = _named_by(gpus, entry.strip())
        if not named:
            break
        visible += [gpu for gpu in named if gpu not in visible]
    return visible


def own_gpus(settings: Settings) -> list[dict[str, Any]]:
    """The GPUs a worker gives to jobs: NVML's, less those the operator's CUDA_VISIBLE_DEVICES hides;
    none for a worker told to run jobs on the CPU (it then takes only jobs that ask for no GPU)."""
    if settings.device == "cpu":
        return []
    return visible_gpus(gpu_info(), os.getenv("CUDA_VISIBLE_DEVICES"))


def _named_by(gpus: list[dict[str, Any]], entry: str) -> list[dict[str, Any]]:
    """The devices one CUDA_VISIBLE_DEVICES entry names; none for an entry CUDA would stop at."""
    if entry.isdigit():
        return [gpu for gpu in gpus if gpu["index"] == int(entry)]
    if entry.startswith("MIG-"):
        return [gpu for gpu in gpus if gpu["uuid"] == entry]
    if entry.startswith("GPU-"):
        physical = {_physical_uuid(gpu) for gpu in gpus if _physical_uuid(gpu).startswith(entry)}
        if len(physical) != 1:  # a prefix must name exactly one GPU
            return []
        return [gpu for gpu in gpus if _physical_uuid(gpu) in physical]
    return []


def _physical_uuid(gpu: dict[str, Any]) -> str:
    return str(gpu.get("parent_uuid", gpu["uuid"]))


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """`env` minus the API's keys and key files: job processes need none of them."""
    return {name: value for name, value in env.items() if name not in SECRET_ENV}


def tmp_dir_name(job_id: str, attempt: int) -> str:
    """One temporary directory per attempt: a worker that lost a job never touches its successor's."""
    return f"{TMP_PREFIX}{job_id}-a{attempt}"


def parse_tmp_dir_name(name: str) -> tuple[str, int | None]:
    """(job id, attempt) of a temporary directory's name; attempt None for an unnumbered one."""
    stem = name[len(TMP_PREFIX) :]
    job_id, sep, attempt = stem.rpartition("-a")
    if sep and attempt.isdigit():
        return job_id, int(attempt)
    return stem, None


@dataclass
class Running:
    job_id: str
    claim: Claim
    gpus: tuple[str, ...]  # UUIDs of the GPUs the job holds while it runs; none: the CPU
    proc: subprocess.Popen[bytes]
    tmp_dir: Path
    log: Any
    term_sent_at: float | None = None
    killed: bool = False
    shutdown: bool = False
    lost: bool = False  # the job was taken from this worker: its outputs are discarded
    # object storage: the commit that publishes the runner's uploads won, or its answer was lost (then
    # the store's record decides, in the sweep); either way the uploads are not the worker's to delete
    published: bool = False
    committing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def result_path(self) -> Path:
        return self.tmp_dir / "result.json"

    @property
    def out_dir(self) -> Path:
        return self.tmp_dir / "out"


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
        self._swept = False
        self.parent_pid: int | None = None  # embedded mode: stop when the server process is gone
        self._retrying = Retrying(
            retry=retry_if_exception_type(STORE_ERRORS),
            wait=wait_exponential(multiplier=0.1, max=settings.store_retry_max_wait_s),
            stop=stop_after_attempt(settings.store_retry_attempts),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A store call, retried with exponential backoff while the error looks transient."""
        return self._retrying(fn, *args, **kwargs)

    # lifecycle -------------------------------------------------------------------------------------------
    def run(self) -> None:
        failures = 0
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
            "gpus": self._gpus_now(),
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
        self._call(self.store.heartbeat, row)

    def _gpus_now(self) -> list[dict[str, Any]]:
        """Our GPUs with the memory in use now; as first seen where NVML no longer answers."""
        if not self.gpus:
            return []
        now = {gpu["uuid"]: gpu for gpu in gpu_info()}
        return [now.get(gpu["uuid"], gpu) for gpu in self.gpus]

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
        if not self.storage.local:
            self._sweep_uploads()
        self._swept = True

    def _sweep_uploads(self) -> None:
        """Object storage: delete what attempts that can never be published uploaded (those of failed,
        cancelled, requeued or deleted jobs, or superseded by a later attempt); keep the rest."""
        try:
            # listed before the store is read: an attempt that publishes meanwhile is then seen as such
            stored = stored_attempts(self.storage.list_keys("jobs"))
            keep = self._call(self.store.publishable_attempts, {job_id for job_id, _ in stored})
            for job_id, attempt in sorted(stored - keep):
                self.storage.delete_prefix(attempt_prefix(job_id, attempt))
        except StorageError as err:  # the next sweep tries again; jobs need not wait for it
            log.warning("could not sweep the object store: %s", err)

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

    def claim(self) -> tuple[str, Claim, tuple[str, ...]] | None:
        """The next queued job that fits our free GPUs, now ours under a new attempt number, and the
        UUIDs of the GPUs it runs on."""
        claimed = self._call(self.store.claim_job, self.id, self.free_gpus(), gpu_worker=bool(self.gpus))
        if claimed is None:
            return None
        return claimed.job.id, Claim(self.id, claimed.job.attempts), claimed.gpus

    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        return [
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
            "--worker-id",
            claim.worker_id,
            "--attempt",
            str(claim.attempt),
            "--worker-pid",
            str(os.getpid()),
            "--storage-url",  # where the job's files are and its outputs go; credentials stay in env
            self.storage.url,
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
        env = without_secrets(os.environ)
        if self.gpus:
            # the job's own GPUs, named by UUID (CUDA's device order need not follow NVML's indices);
            # none: a CPU job on a GPU worker sees no GPU at all
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return env

    def start(self, job_id: str, claim: Claim, gpus: tuple[str, ...] = ()) -> None:
        tmp_dir = self.settings.jobs_dir / tmp_dir_name(job_id, claim.attempt)
        try:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            tmp_dir.mkdir(parents=True)
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
        self.running[job_id] = running
        if not self._call(self.store.set_pid, job_id, proc.pid, claim):
            self._abandon(running, "the job was taken from this worker before its process started")

    def supervise(self, running: Running) -> None:
        if running.proc.poll() is not None:
            self._finalize(running)
            return
        job = self._call(self.store.get_job, running.job_id)
        if job is None or not self._holds(job, running.claim):
            self._abandon(running, "the job was taken from this worker")
            return
        if running.term_sent_at is None:
            if job.status == "cancelling":
                self._signal(running, signal.SIGTERM)
                running.term_sent_at = time.time()
        elif not running.killed and time.time() - running.term_sent_at >= self.settings.cancel_grace_s:
            self._signal(running, signal.SIGKILL)
            running.killed = True

    @staticmethod
    def _holds(job: Any, claim: Claim) -> bool:
        return bool(
            job.status in ACTIVE and job.worker_id == claim.worker_id and job.attempts == claim.attempt
        )

    def _abandon(self, running: Running, reason: str) -> None:
        """Kill a job we no longer hold and throw away its outputs; its new owner (if any) runs it."""
        log.warning("job %s (attempt %d): %s; killing it", running.job_id, running.claim.attempt, reason)
        running.lost = True
        self._signal(running, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.proc.wait(timeout=10)
        self._discard(running)

    def _discard(self, running: Running) -> None:
        self.running.pop(running.job_id, None)
        running.log.close()
        shutil.rmtree(running.tmp_dir, ignore_errors=True)
        if not (self.storage.local or running.published or running.committing):
            self._drop_uploads(running)

    def _drop_uploads(self, running: Running) -> None:
        """Delete what an unpublished attempt's runner put in the object store (its process has ended)."""
        try:
            self.storage.delete_prefix(attempt_prefix(running.job_id, running.claim.attempt))
        except StorageError as err:
            log.warning("job %s: its unpublished uploads are left for the sweep: %s", running.job_id, err)

    @staticmethod
    def _signal(running: Running, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.proc.pid, sig)

    def _finalize(self, running: Running) -> None:
        """Turn an ended job process into the job's status. Raises (and keeps `running`) on store errors."""
        running.log.close()
        job = self._call(self.store.get_job, running.job_id)
        if job is None or running.lost or not self._holds(job, running.claim):
            self._discard(running)  # reaped while it ran: its verdict is no longer ours to give
            return
        claim = running.claim
        if job.status == "cancelling" or running.term_sent_at is not None:
            self._call(self.store.finish_job, job.id, "cancelled", claim=claim)
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
            self._publish(running, result)
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
        self._call(
            self.store.finish_job,
            running.job_id,
            "failed",
            error_code=code,
            error_message=message,
            claim=running.claim,
        )

    def _publish(self, running: Running, result: dict[str, Any]) -> None:
        """Move the checkpoint into place and mark the job succeeded, both or neither.

        The move runs inside the fenced status UPDATE's transaction: only the job's owner gets that far,
        and nobody can reap the job between the move and the commit. A commit that fails moves it back.
        """
        if not self.storage.local:
            self._commit_uploads(running, result)
            return
        final = self.settings.jobs_dir / running.job_id
        # the job runner hashes the checkpoint; a result without checksums comes from an older runner
        artifacts = result.get("artifacts")
        if artifacts is None:
            artifacts = describe(running.out_dir)

        def move_into_place() -> None:
            shutil.rmtree(final, ignore_errors=True)  # left by an attempt that died mid-publication
            running.out_dir.rename(final)  # atomic publication: same filesystem, one rename

        def finish() -> bool:
            try:
                return self.store.finish_job(
                    running.job_id,
                    "succeeded",
                    metrics=result.get("metrics"),
                    artifacts=artifacts,
                    claim=running.claim,
                    on_won=move_into_place,
                )
            except Exception:
                if final.is_dir() and not running.out_dir.exists():
                    final.rename(running.out_dir)  # not committed, so not published: a retry moves it again
                raise

        published = self._call(finish)
        if not published:
            log.warning("job %s was taken from this worker; its outputs are discarded", running.job_id)

    def _commit_uploads(self, running: Running, result: dict[str, Any]) -> None:
        """Object storage: the job runner uploaded its outputs under its attempt's prefix, checksummed;
        the fenced commit that marks the job succeeded is what publishes them (the API serves only
        artifacts a succeeded job lists). Uploads no commit published are deleted (`_discard`)."""
        artifacts = result.get("artifacts") or []
        stored = set(self.storage.list_keys(attempt_prefix(running.job_id, running.claim.attempt)))
        if any(artifact.get("key") not in stored for artifact in artifacts):
            self._call(
                self.store.finish_job,
                running.job_id,
                "failed",
                error_code="internal_error",
                error_message="the job's outputs are not all in the object store",
                claim=running.claim,
            )
            return
        running.committing = True  # until the store answers, nobody knows whether the commit won
        won = self._call(
            self.store.finish_job,
            running.job_id,
            "succeeded",
            metrics=result.get("metrics"),
            artifacts=artifacts,
            claim=running.claim,
        )
        running.published = won or self._won_before(running)
        running.committing = False
        if not running.published:
            log.warning("job %s was taken from this worker; its outputs are discarded", running.job_id)

    def _won_before(self, running: Running) -> bool:
        """Whether a commit whose answer was lost (and so was retried) went through: the job succeeded
        under this worker's claim."""
        job = self._call(self.store.get_job, running.job_id)
        return bool(
            job is not None
            and job.status == "succeeded"
            and (job.worker_id, job.attempts) == (running.claim.worker_id, running.claim.attempt)
        )

    @staticmethod
    def _log_tail(running: Running, limit: int = 2000) -> str:
        try:
            return (running.tmp_dir / "job.log").read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""


def run_worker(settings: Settings, slots: int | None = None, parent_pid: int | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    worker = Worker(settings, slots)
    worker.parent_pid = parent_pid

    def stop(_signum: int, _frame: Any) -> None:
        worker.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.run()
