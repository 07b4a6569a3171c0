"""Wall time of a call on a device: synchronised around the call, after a warm-up, best of a few repeats.

    seconds = min(timed(lambda: model(ids), device, repeats=5))

Used by every measuring step of `bench.gpu`; CUDA work is asynchronous, so a time read without
synchronising would measure the kernel launches, not the kernels.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def synchronize(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any, repeats: int = 1, warmup: bool = True) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after one untimed warm-up call (the first call in a process
    pays for kernel selection and allocation)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times
