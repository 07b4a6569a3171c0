"""One job, one process: `python -m service.worker.job_runner ...` runs `pruning.prune` and reports to
the store.

This is the only service module that imports torch (through the engine). The worker owns the job's
status: this process writes progress and events, and its verdict (with the artifacts' checksums, so the
worker never hashes a checkpoint itself) to a result file the worker reads.

The process lives only as long as its claim: it dies with its worker (the parent-death signal, and a
watchdog for the moment before that was set), and it stops itself as soon as the store says the job is no
longer held by its worker and attempt (reaped, and maybe handed to another worker).

A store that fails its writes (locked, full, unreachable) is retried for the store retry window; past
it, the process ends with a verdict (and exit status EX_TEMPFAIL) that asks its worker to requeue the
job: the infrastructure failed, not the job. No verdict carries a store error's SQL.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path, PurePosixPath
from typing import Any, get_args, overload

from sqlalchemy.exc import SQLAlchemyError

from pruning.errors import FwdpruneError, failure_code
from pruning.events import Event
from pruning.runtime.procs import parent_death_signal
from pruning.spec import Device
from service.modelref import resolve_checkpoint
from service.objects.artifacts import describe, upload_outputs
from service.objects.backends import storage_from_url
from service.objects.storage import Storage, attempt_prefix
from service.schemas.jobs import JobCreate, JobInputs
from service.store import Claim, Store
from service.store.engine import DATABASE_URL_ENV
from service.store.retry import STORE_ERRORS, StoreUnavailable, retry_store, store_failure

EXIT_NOT_OWNER = 4  # the job was taken from this process's worker; it stopped without a verdict
# the store outlasted the retry window: the job ended for the infrastructure, and goes back to the queue
EXIT_STORE_UNAVAILABLE = os.EX_TEMPFAIL
STORE_RETRY_WINDOW_S = 120.0
WATCH_PARENT_S = 0.5
WATCH_CLAIM_S = 5.0


def stop_self(reason: str) -> None:
    """End this job process and everything it started (data loaders share its process group)."""
    print(f"job runner stopping: {reason}", file=sys.stderr, flush=True)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(EXIT_NOT_OWNER)


def die_with_worker(worker_pid: int) -> None:
    """Never outlive the worker `worker_pid`: the parent-death signal, then a watchdog thread.

    The signal only covers a parent that dies after it was set; the check right after it, and the
    watchdog (for platforms without the signal), cover the rest.
    """
    parent_death_signal(signal.SIGKILL)()
    if os.getppid() != worker_pid:
        stop_self(f"worker {worker_pid} is gone")
    threading.Thread(target=_watch_parent, args=(worker_pid,), daemon=True, name="watch-worker").start()


def _watch_parent(worker_pid: int) -> None:
    while os.getppid() == worker_pid:
        time.sleep(WATCH_PARENT_S)
    stop_self(f"worker {worker_pid} is gone")  # re-parented: the worker died


def watch_claim(store: Store, job_id: str, claim: Claim, interval_s: float = WATCH_CLAIM_S) -> None:
    """Stop this process once its worker no longer holds the job, even while the engine is silent."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                owned = store.owns(job_id, claim)
            except Exception:  # the store is unreachable for now: not a reason to stop the job
                continue
            if not owned:
                stop_self(f"job {job_id} is no longer held by {claim.worker_id} (attempt {claim.attempt})")

    threading.Thread(target=watch, daemon=True, name="watch-claim").start()


class JobEvents:
    """Engine events into the store; progress is throttled so a fast engine cannot flood the event log.

    With a claim, every write is fenced by it, and a write the store refuses means the job was taken
    from this process's worker: the process stops.

    A store that fails (locked by another process, its disk full, its connection lost) is waited out:
    every event but progress is retried with backoff for `retry_window_s`, then StoreUnavailable ends
    the job, for its worker to give back to the queue. A progress update is tried once and dropped if
    the store fails it: the next one says more.
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        min_interval_s: float = 1.0,
        claim: Claim | None = None,
        retry_window_s: float = STORE_RETRY_WINDOW_S,
    ) -> None:
        self.store, self.job_id, self.min_interval_s, self.claim = store, job_id, min_interval_s, claim
        self.retry_window_s = retry_window_s
        self.unavailable: StoreUnavailable | None = None  # set when the store outlasted the window
        self._last_saved = 0.0
        self._last_round: object = None

    def __call__(self, event: Event) -> None:
        if event["type"] != "progress":
            self._record(event)
            return
        now = time.monotonic()
        boundary = event.get("round") != self._last_round or event.get("fraction") == 1.0
        if boundary or now - self._last_saved >= self.min_interval_s:
            try:
                self._owned(self.store.record_event(self.job_id, event, claim=self.claim))
            except STORE_ERRORS:
                return  # dropped; not marked saved, so the next one is written even inside the interval
            self._last_saved, self._last_round = now, event.get("round")

    def _record(self, event: Event) -> None:
        try:
            written = retry_store(
                self.retry_window_s, self.store.record_event, self.job_id, event, claim=self.claim
            )
        except StoreUnavailable as err:
            self.unavailable = err  # the engine may wrap what its sink raised: the runner asks here
            raise
        self._owned(written)

    def _owned(self, written: bool) -> None:
        if not written and self.claim is not None:
            stop_self(f"job {self.job_id} is no longer held by this worker")


@functools.cache
def job_storage(url: str) -> Storage:
    return storage_from_url(url)


@overload
def local_input(args: argparse.Namespace, key: str) -> Path: ...
@overload
def local_input(args: argparse.Namespace, key: None) -> None: ...
def local_input(args: argparse.Namespace, key: str | None) -> Path | None:
    """An uploaded file the job reads, as a file on this worker: where storage is this host's disk, the
    file itself; else a copy in the job's temporary directory, checked against its stored sha256 (the
    copy keeps the key's name, and so the suffix the engine picks its parser by)."""
    if key is None:
        return None
    storage = job_storage(args.storage_url)
    path = storage.local_path(key)
    if path is None:
        path = args.out_dir.parent / "inputs" / PurePosixPath(key).name
        storage.fetch(key, path)
    return path


def stage_outputs(args: argparse.Namespace, job_id: str, attempt: int) -> list[dict[str, Any]]:
    """The outputs' names, sizes and checksums; with an object store, each output is uploaded under
    this attempt's prefix too (the worker's fenced commit publishes them, or deletes them)."""
    storage = job_storage(args.storage_url)
    if storage.local:
        return describe(args.out_dir)  # the worker renames the directory into place
    return upload_outputs(storage, args.out_dir, attempt_prefix(job_id, attempt))


def database_url() -> str:
    """The store's URL, from the environment the worker gave this process (never from argv, which every
    user of the host can read); removed from it, so the engine and its helper processes never hold it."""
    url = os.environ.pop(DATABASE_URL_ENV, None)
    if not url:
        raise SystemExit(
            f"{DATABASE_URL_ENV} is not set: the worker passes the store's URL in the environment"
        )
    return url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.worker.job_runner")
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument(
        "--storage-url", required=True, help="where the job's files are and its outputs go (file: or s3:)"
    )
    parser.add_argument("--device", default="auto", choices=get_args(Device))
    parser.add_argument("--worker-id", help="the claim this process runs under (fences its writes)")
    parser.add_argument("--attempt", type=int)
    parser.add_argument("--worker-pid", type=int, help="the worker process; this one dies with it")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="the worker's models dir")
    parser.add_argument("--hf-cache-dir", type=Path, help="the worker's Hugging Face cache")
    parser.add_argument(
        "--allow-model-download", action="store_true", help="fetch a Hub model missing from the cache"
    )
    parser.add_argument(
        "--store-retry-window-s",
        type=float,
        default=STORE_RETRY_WINDOW_S,
        help="how long a failing store is retried before the job goes back to the queue",
    )
    parser.add_argument(
        "--store-busy-timeout-s", type=float, default=30.0, help="SQLite: one statement's wait for a lock"
    )
    args = parser.parse_args(argv)

    die_with_worker(args.worker_pid or os.getppid())
    claim = Claim(args.worker_id, args.attempt) if args.worker_id and args.attempt else None
    store = Store(database_url(), migrate=False, busy_timeout_s=args.store_busy_timeout_s)
    try:
        job = retry_store(args.store_retry_window_s, store.get_job, args.job_id)
    except StoreUnavailable as err:
        traceback.print_exc()
        write_result(args.result, unavailable_result(err))
        return EXIT_STORE_UNAVAILABLE
    if job is None:
        print(f"job {args.job_id} not found", file=sys.stderr)
        return 2
    if claim is not None:
        watch_claim(store, job.id, claim)
    events = JobEvents(store, job.id, claim=claim, retry_window_s=args.store_retry_window_s)
    try:
        inputs = JobInputs.model_validate(job.resolved)
        model_dir = resolve_checkpoint(  # the model, as a directory on this worker
            inputs.model, inputs.revision, args.models_dir, args.hf_cache_dir, args.allow_model_download
        )
        data = local_input(args, inputs.data)  # the calibration file, on this worker
        eval_data = local_input(args, inputs.eval_data)  # held-out file
        recovery_data = local_input(args, inputs.recovery_data)  # what the recovery trains on
        spec = JobCreate.model_validate(job.request).to_spec(
            model_dir, data, eval_data, args.out_dir, args.device, recovery_data
        )
        from pruning import prune

        report = prune(spec, on_event=events)
        # checksums and uploads here, not in the worker: a large checkpoint must not stall its heartbeats
        result: dict[str, Any] = {
            "ok": True,
            "metrics": report.metrics(),  # the report's headline figures; the whole report is an artifact
            "artifacts": stage_outputs(args, job.id, args.attempt or job.attempts),
        }
        code = 0
    except Exception as err:
        traceback.print_exc()
        result, code = failure_result(err, events.unavailable)
    write_result(args.result, result)
    store.close()
    return code


def failure_result(err: Exception, unavailable: StoreUnavailable | None = None) -> tuple[dict[str, Any], int]:
    """The verdict and exit status of a job that raised `err`. A store that outlasted the retry window
    (`unavailable`, or `err` itself) is the infrastructure's failure: a verdict that asks the worker to
    requeue the job. Any other store error fails the job without its SQL (which names the worker);
    the job's own errors fail it with their message."""
    if isinstance(err, StoreUnavailable) or unavailable is not None:
        return unavailable_result(unavailable or err), EXIT_STORE_UNAVAILABLE
    if isinstance(err, SQLAlchemyError):
        message = f"the job store failed a request: {store_failure(err)}"
        return {"ok": False, "code": "internal_error", "message": message}, 1
    result = {"ok": False, "code": failure_code(err), "message": f"{type(err).__name__}: {err}"}
    return result, 3 if isinstance(err, FwdpruneError) else 1


def unavailable_result(err: Exception) -> dict[str, Any]:
    return {"ok": False, "store_unavailable": True, "code": "internal_error", "message": str(err)}


def write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.rename(path)  # the worker never sees a half-written verdict


if __name__ == "__main__":
    sys.exit(main())
