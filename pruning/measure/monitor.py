"""Wall time and peak memory per stage: GPU (torch's allocator and the device) and host RSS.

Host RSS counts the pages of memory-mapped checkpoint files that have been read (the kernel can drop
them at will), so the anonymous part, what the process itself allocated, is sampled beside it where
the platform reports it (Linux: RssAnon in /proc/self/status).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch

STATUS = "/proc/self/status"


def anonymous_rss() -> int | None:
    """Bytes of the process's resident anonymous memory (heap, not file-backed), or None off Linux."""
    try:
        with open(STATUS, encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


class StageMonitor:
    """Times named stages and samples host RSS in a background thread (every 20 ms). GPU peaks are
    those of `device` per stage and, over the whole job, of each of `devices` (default: `device` if it
    is a GPU), the GPUs this process's model occupies."""

    def __init__(self, device: torch.device, devices: list[torch.device] | None = None) -> None:
        self.device = device
        self.devices = devices if devices is not None else [device] * (device.type == "cuda")
        self.peak_bytes_per_device = [0] * len(self.devices)
        self.other_ranks_peak_bytes: list[int] = []  # the job's other ranks' GPUs, after these (rank order)
        self.counter: Any = None  # the objective's ForwardCounter, once there is one
        self.forward_tokens: dict[str, int] = {}
        self.stage_s: dict[str, float] = {}
        self.peak_gpu_bytes: dict[str, int] = {}
        self.peak_gpu_reserved_bytes: dict[str, int] = {}
        self.peak_host_rss_bytes: dict[str, int] = {}
        self.peak_host_anon_bytes: dict[str, int] = {}
        self.host_anon_at_start_bytes: dict[str, int] = {}  # where each stage began (first time met)
        self._process = psutil.Process()
        self._peak_rss = 0
        self._peak_anon = 0
        self._lock = threading.Lock()

    def _record(self) -> int | None:
        """Raise the peaks to the current RSS and anonymous RSS; returns the latter (None off Linux)."""
        rss, anon = self._process.memory_info().rss, anonymous_rss()
        with self._lock:
            self._peak_rss, self._peak_anon = max(self._peak_rss, rss), max(self._peak_anon, anon or 0)
        return anon

    def _sample(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._record()
            stop.wait(0.02)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        for gpu in self.devices:
            torch.cuda.synchronize(gpu)
            torch.cuda.reset_peak_memory_stats(gpu)
        with self._lock:
            self._peak_rss, self._peak_anon = 0, 0
        anon = self._record()
        if anon is not None:
            self.host_anon_at_start_bytes.setdefault(name, anon)
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample, args=(stop,), daemon=True)
        sampler.start()
        start = time.perf_counter()
        tokens_before = self.counter.tokens if self.counter is not None else 0
        try:
            yield
        finally:
            if self.counter is not None:
                self.forward_tokens[name] = (
                    self.forward_tokens.get(name, 0) + self.counter.tokens - tokens_before
                )
            for gpu in self.devices:
                torch.cuda.synchronize(gpu)
            self.stage_s[name] = self.stage_s.get(name, 0.0) + time.perf_counter() - start
            stop.set()
            sampler.join()
            self._record()
            with self._lock:
                self.peak_host_rss_bytes[name] = max(self.peak_host_rss_bytes.get(name, 0), self._peak_rss)
                if anon is not None:
                    self.peak_host_anon_bytes[name] = max(
                        self.peak_host_anon_bytes.get(name, 0), self._peak_anon
                    )
            if cuda:
                self.peak_gpu_bytes[name] = max(
                    self.peak_gpu_bytes.get(name, 0), torch.cuda.max_memory_allocated(self.device)
                )
                self.peak_gpu_reserved_bytes[name] = max(
                    self.peak_gpu_reserved_bytes.get(name, 0), torch.cuda.max_memory_reserved(self.device)
                )
            self.peak_bytes_per_device = [
                max(peak, torch.cuda.max_memory_allocated(gpu))
                for peak, gpu in zip(self.peak_bytes_per_device, self.devices, strict=True)
            ]

    def summary(self) -> dict[str, Any]:
        return {
            "stage_s": {k: round(v, 3) for k, v in self.stage_s.items()},
            "forward_tokens_by_stage": dict(self.forward_tokens),
            "total_s": round(sum(self.stage_s.values()), 3),
            "peak_gpu_bytes": dict(self.peak_gpu_bytes),
            "peak_gpu_reserved_bytes": dict(self.peak_gpu_reserved_bytes),
            # every GPU of the job over its whole run (this process's, then the other ranks')
            "peak_gpu_bytes_per_device": self.peak_bytes_per_device + self.other_ranks_peak_bytes,
            "peak_host_rss_bytes": dict(self.peak_host_rss_bytes),
            "peak_host_anon_bytes": dict(self.peak_host_anon_bytes),
            "host_anon_at_start_bytes": dict(self.host_anon_at_start_bytes),
            # what each stage added to the heap at its peak: the figure that shows what a stage holds
            "host_anon_growth_bytes": {
                name: peak - self.host_anon_at_start_bytes[name]
                for name, peak in self.peak_host_anon_bytes.items()
            },
        }
