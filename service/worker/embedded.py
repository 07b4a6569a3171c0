"""The worker `fwdprune serve` embeds: a `fwdprune worker` child, restarted with backoff if it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from pruning.runtime.procs import parent_death_signal
from service.worker.process import without_secrets


class WorkerSupervisor:
    """Keeps the embedded `fwdprune worker` running beside the server: restarted, with backoff, if it dies.

    The worker gets SIGTERM when this process dies (parent-death signal), and watches `--parent-pid` as
    well, so it stops (requeueing its jobs) with the server however the server ends.
    """

    def __init__(
        self, first_backoff_s: float = 1.0, max_backoff_s: float = 30.0, healthy_after_s: float = 60.0
    ):
        self.first_backoff_s, self.max_backoff_s, self.healthy_after_s = (
            first_backoff_s,
            max_backoff_s,
            healthy_after_s,
        )
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # no new worker once stop() has begun
        self._thread = threading.Thread(target=self._supervise, daemon=True, name="worker-supervisor")

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self.stopping.is_set():
                return None
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--parent-pid", str(os.getpid())],
                env=without_secrets(os.environ),  # the worker serves no requests: it needs no API key
                preexec_fn=parent_death_signal(signal.SIGTERM),
            )
            return self.proc

    def _supervise(self) -> None:
        backoff = self.first_backoff_s
        while (proc := self._spawn()) is not None:
            started = time.monotonic()
            rc = proc.wait()
            if self.stopping.is_set():
                return
            if time.monotonic() - started >= self.healthy_after_s:
                backoff = self.first_backoff_s  # it ran fine for a while: this is a new failure
            print(
                f"fwdprune serve: worker exited with status {rc}; restarting in {backoff:g}s", file=sys.stderr
            )
            if self.stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)

    def stop(self, timeout_s: float) -> None:
        with self._lock:
            self.stopping.set()
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # the worker requeues what it was running, then exits
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
