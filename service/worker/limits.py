"""The hard limits on a job process, which its worker enforces from outside it: a time past which it is
killed, and a bound on the memory its processes hold.

The engine sizes a job's work to its time bound (`max_time`, which the API sets to at most
FWDPRUNE_MAX_JOB_SECONDS): a soft deadline that loading, evaluation and export may overrun. The worker
kills the job's whole process group once it has run its time bound plus a grace (`grace_s`), and once
the resident memory of its processes passes FWDPRUNE_MAX_JOB_MEMORY_BYTES; the job then fails with
`time_limit_exceeded` or `memory_limit_exceeded`. A watchdog thread checks both, apart from the worker's
loop, so a store call that is being retried never delays it.

Memory is counted as the resident set (RSS) of every process in the job's session (the runner starts
its own, and its helpers inherit it), read from /proc: no address-space limit, which CUDA's reservations
would break, and GPU memory is not counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.worker.process import Running

log = logging.getLogger("fwdprune.worker")

TIME_LIMIT_EXCEEDED = "time_limit_exceeded"
MEMORY_LIMIT_EXCEEDED = "memory_limit_exceeded"
GRACE_FRACTION = 0.1  # the default grace: a tenth of the job's time bound ...
MIN_GRACE_S = 60.0  # ... and at least a minute
HOST_MEMORY_FRACTION = 0.8  # the default memory bound: this much of the host's memory, shared by the slots
PROC = Path("/proc")
GIB = 1 << 30


def time_cap_s(request: Mapping[str, Any], max_job_seconds: float) -> float:
    """The seconds a job may run before its grace: its own time bound (`time_limit`, which it fills,
    else `max_time`), never more than this worker's FWDPRUNE_MAX_JOB_SECONDS."""
    bound = request.get("time_limit") or request.get("max_time")
    if isinstance(bound, int | float) and not isinstance(bound, bool) and bound > 0:
        return min(float(bound), max_job_seconds)
    return max_job_seconds


def grace_s(cap_s: float, setting: float | None) -> float:
    """How long past its time cap a job process is left to finish before it is killed: the setting, else
    a tenth of the cap and at least a minute."""
    return setting if setting is not None else max(MIN_GRACE_S, GRACE_FRACTION * cap_s)


def host_memory_bytes() -> int | None:
    """The host's physical memory; None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit_bytes(setting: int | None, slots: int) -> int | None:
    """The most resident memory one job's processes may hold: the setting, else 80 % of the host's
    memory shared evenly by the worker's slots (None where the host's memory is unknown)."""
    if setting is not None:
        return setting
    total = host_memory_bytes()
    return None if total is None else int(total * HOST_MEMORY_FRACTION / max(1, slots))


def session_rss(sessions: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    """Resident bytes of every process in each of `sessions`, summed per session, from /proc/<pid>/stat
    (shared pages count once per process that maps them: an overestimate, never an underestimate)."""
    wanted = set(sessions)
    totals = dict.fromkeys(wanted, 0)
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        entries = [entry for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        return totals
    for pid in entries:
        try:
            stat = (proc / pid / "stat").read_bytes()
        except OSError:  # it ended while we looked
            continue
        # the command name (field 2) is in parentheses and may hold anything: split after its last one
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 22:
            continue
        session, rss_pages = int(fields[3]), int(fields[21])  # fields 6 and 24 of proc(5)
        if session in wanted:
            totals[session] += rss_pages * page
    return totals


def _size(value: float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 10 else f"{value / (1 << 20):.0f} MiB"


class Watchdog:
    """Kills a job process group past its time cap and grace or its memory bound, and records why on
    its `Running` (`limit_hit`), for the worker to fail the job with that code once the process ends."""

    def __init__(
        self,
        running: Callable[[], Iterable[Running]],
        memory_limit: int | None,
        interval_s: float,
        stop: threading.Event,
        clock: Callable[[], float],
    ) -> None:
        self.running, self.memory_limit, self.interval_s = running, memory_limit, interval_s
        self.stop, self.clock = stop, clock
        self.thread = threading.Thread(target=self._run, daemon=True, name="job-limits")

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # a failed look costs one round of checks, never the watchdog
                log.exception("job limit check failed; checking again in %gs", self.interval_s)

    def check(self) -> None:
        live = [r for r in self.running() if r.proc.returncode is None and r.limit_hit is None]
        if not live:
            return
        now = self.clock()
        for running in live:
            elapsed = now - running.started
            if running.deadline_s is not None and elapsed >= running.deadline_s:
                message = (
                    f"the job ran {elapsed:.0f} s, past its time bound of {running.time_cap_s:g} s and the "
                    f"grace of {running.deadline_s - (running.time_cap_s or 0):g} s after it "
                    "(FWDPRUNE_MAX_JOB_SECONDS, FWDPRUNE_JOB_GRACE_S); its processes were killed"
                )
                self._kill(running, TIME_LIMIT_EXCEEDED, message)
        if self.memory_limit is None:
            return
        live = [r for r in live if r.limit_hit is None]
        held = session_rss(r.proc.pid for r in live)
        for running in live:
            if held.get(running.proc.pid, 0) > self.memory_limit:
                message = (
                    f"the job's processes held {_size(held[running.proc.pid])} of memory, more than the "
                    f"{_size(self.memory_limit)} a job may hold (FWDPRUNE_MAX_JOB_MEMORY_BYTES); they "
                    "were killed"
                )
                self._kill(running, MEMORY_LIMIT_EXCEEDED, message)

    @staticmethod
    def _kill(running: Running, code: str, message: str) -> None:
        if running.proc.returncode is not None:
            return
        running.limit_hit = (code, message)
        log.warning("job %s (attempt %d): %s", running.job_id, running.claim.attempt, message)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.proc.pid, signal.SIGKILL)
