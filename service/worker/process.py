"""One job process as its worker sees it: where it works, what it was started with, and how it ended."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from service.store import ACTIVE, Claim
from service.store.tables import JobRow

# a job runs user-chosen models and data: it gets no credential of the API
SECRET_ENV = ("FWDPRUNE_API_KEYS", "FWDPRUNE_ADMIN_KEYS", "FWDPRUNE_API_KEYS_FILE", "FWDPRUNE_TOKEN")
TMP_PREFIX = ".tmp-"


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
    log: IO[bytes]
    term_sent_at: float | None = None
    killed: bool = False
    shutdown: bool = False
    lost: bool = False  # the job was taken from this worker: its outputs are discarded
    # object storage: the commit that publishes the runner's uploads won, or its answer was lost (then
    # the store's record decides, in the sweep); either way the uploads are not the worker's to delete
    published: bool = False
    committing: bool = False
    # the hard limits (`service.worker.limits`): when the process started (monotonic), the job's time
    # bound, the seconds after which it is killed (the bound plus the grace), and, once the watchdog
    # killed it, the failure it ends with (code, message)
    started: float = field(default_factory=time.monotonic)
    time_cap_s: float | None = None
    deadline_s: float | None = None
    limit_hit: tuple[str, str] | None = None

    @property
    def result_path(self) -> Path:
        return self.tmp_dir / "result.json"

    @property
    def out_dir(self) -> Path:
        return self.tmp_dir / "out"

    def signal(self, sig: signal.Signals) -> None:
        """Signal the job's whole process group (the runner started its own session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return (self.tmp_dir / "job.log").read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def holds(self, job: JobRow | None, statuses: Iterable[str] = ACTIVE) -> bool:
        """Whether the store's `job` row is this process's claim, in one of `statuses` (by default:
        still active under its worker and attempt)."""
        return bool(
            job is not None
            and job.status in tuple(statuses)
            and (job.worker_id, job.attempts) == (self.claim.worker_id, self.claim.attempt)
        )


# the job runner's exit status when the store outlasted its retry window (sysexits' EX_TEMPFAIL)
EXIT_STORE_UNAVAILABLE = os.EX_TEMPFAIL


def store_was_unavailable(result: Mapping[str, Any], rc: int) -> bool:
    """Whether a job process ended because the store failed it for its whole retry window (its verdict
    says so, or, where it could not even write one, its exit status): the infrastructure's failure."""
    return bool(result.get("store_unavailable")) or (not result and rc == EXIT_STORE_UNAVAILABLE)


def failure(result: Mapping[str, Any], rc: int, log_tail: str) -> tuple[str, str | None]:
    """(error code, message) of a job process that did not succeed: its own verdict if it wrote one,
    else what its exit status says."""
    if result:
        return str(result.get("code", "internal_error")), result.get("message")
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        message = f"job process was killed by signal {name}"
        if -rc == signal.SIGKILL:
            message += " (by an operator or the kernel's out-of-memory killer)"
        return "worker_lost", message
    return "internal_error", f"job process exited with status {rc}: {log_tail}"
