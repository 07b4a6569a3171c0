"""Prometheus text exposition, written by hand: a few gauges need no client library."""

from __future__ import annotations

import time

from service.store import Store

BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, float("inf"))


def render(store: Store, heartbeat_timeout_s: float) -> str:
    lines = ["# HELP fwdprune_jobs Jobs by status.", "# TYPE fwdprune_jobs gauge"]
    counts = store.count_by_status()
    lines += [f'fwdprune_jobs{{status="{status}"}} {n}' for status, n in counts.items()]
    lines += ["# HELP fwdprune_queue_depth Jobs waiting for a worker.", "# TYPE fwdprune_queue_depth gauge",
              f"fwdprune_queue_depth {counts['queued']}"]
    lines += ["# HELP fwdprune_job_duration_seconds Run time of finished jobs.",
              "# TYPE fwdprune_job_duration_seconds histogram"]
    durations = store.finished_durations()
    for bound in BUCKETS:
        label = "+Inf" if bound == float("inf") else f"{bound:g}"
        lines.append(f'fwdprune_job_duration_seconds_bucket{{le="{label}"}} {sum(d <= bound for _, d in durations)}')
    lines += [f"fwdprune_job_duration_seconds_sum {sum(d for _, d in durations):.3f}",
              f"fwdprune_job_duration_seconds_count {len(durations)}"]
    now = time.time()
    workers = [w for w in store.workers() if now - w.heartbeat_at <= heartbeat_timeout_s]
    lines += ["# HELP fwdprune_workers Workers with a recent heartbeat.", "# TYPE fwdprune_workers gauge",
              f"fwdprune_workers {len(workers)}",
              "# HELP fwdprune_worker_slots Job slots of live workers.", "# TYPE fwdprune_worker_slots gauge",
              f"fwdprune_worker_slots {sum(w.slots for w in workers)}",
              "# HELP fwdprune_gpu_memory_used_bytes GPU memory in use, as reported by workers.",
              "# TYPE fwdprune_gpu_memory_used_bytes gauge"]
    for worker in workers:
        for gpu in worker.info.get("gpus", []):
            lines.append(f'fwdprune_gpu_memory_used_bytes{{worker="{worker.id}",gpu="{gpu["index"]}"}} '
                         f'{gpu["memory_used_bytes"]}')
    return "\n".join(lines) + "\n"
