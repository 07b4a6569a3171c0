"""One job, one process: `python -m service.job_runner ...` runs `pruning.prune` and reports to the store.

This is the only service module that imports torch (through the engine). The worker owns the job's
status: this process writes progress and events, and its verdict to a result file the worker reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, get_args

from pruning.errors import FwdpruneError, failure_code
from pruning.spec import Device
from service.schemas.jobs import JobCreate, JobInputs
from service.store import Store

REPORT_KEYS = (
    "params",
    "sparsity",
    "perplexity",
    "embedding_cosine",
    "calibration_loss",
    "compensation",
    "budget",
    "stage_s",
    "total_s",
    "forward_tokens",
    "peak_gpu_bytes",
    "peak_host_rss_bytes",
    "method",
    "precision",
    "device",
)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The part of the engine's report kept as job metrics (the whole report is an artifact)."""
    return {key: report[key] for key in REPORT_KEYS if key in report}


class JobEvents:
    """Engine events into the store; progress is throttled so a fast engine cannot flood the event log."""

    def __init__(self, store: Store, job_id: str, min_interval_s: float = 1.0) -> None:
        self.store, self.job_id, self.min_interval_s = store, job_id, min_interval_s
        self._last_saved = 0.0
        self._last_round: object = None

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("type") != "progress":
            self.store.record_event(self.job_id, event)
            return
        now = time.monotonic()
        boundary = event.get("round") != self._last_round or event.get("fraction") == 1.0
        if boundary or now - self._last_saved >= self.min_interval_s:
            self.store.record_event(self.job_id, event)
            self._last_saved, self._last_round = now, event.get("round")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.job_runner")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--device", default="auto", choices=get_args(Device))
    args = parser.parse_args(argv)

    store = Store(args.database_url, migrate=False)
    job = store.get_job(args.job_id)
    if job is None:
        print(f"job {args.job_id} not found", file=sys.stderr)
        return 2
    try:
        spec = JobCreate.model_validate(job.request).to_spec(
            JobInputs.model_validate(job.resolved), args.out_dir, args.device
        )
        from pruning import prune

        report = prune(spec, on_event=JobEvents(store, job.id))
        result: dict[str, Any] = {"ok": True, "metrics": summarize(report)}
        code = 0
    except Exception as err:
        traceback.print_exc()
        result = {"ok": False, "code": failure_code(err), "message": f"{type(err).__name__}: {err}"}
        code = 3 if isinstance(err, FwdpruneError) else 1
    tmp = args.result.with_suffix(".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.rename(args.result)  # the worker never sees a half-written verdict
    store.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
