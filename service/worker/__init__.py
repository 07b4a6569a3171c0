"""The worker, by concern: `inventory` (the GPUs it gives to jobs, from NVML), `supervision` (claiming,
starting, watching and ending job processes), `process` (one job process: its directory, argv and
environment, and how it ended), `publication` (a succeeded job's outputs and status, both or neither)
and `retry` (store calls retried while the error looks transient)."""

from __future__ import annotations

from service.worker.inventory import gpu_info, own_gpus, visible_gpus
from service.worker.process import without_secrets
from service.worker.supervision import Worker, run_worker

__all__ = ["Worker", "gpu_info", "own_gpus", "run_worker", "visible_gpus", "without_secrets"]
