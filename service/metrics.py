"""Prometheus metrics for one app: store-derived gauges, job run times and HTTP requests.

Each app owns a `CollectorRegistry` (tests build several apps in one process, and the global registry
would mix them). Gauges are read from the store at scrape time by a custom collector; the job-duration
histogram is fed incrementally, so a scrape reads only the jobs finished since the previous one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.store import Store

# what generate_latest writes, in every prometheus-client version (newer ones also name it differently)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, float("inf"))
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))
UNMATCHED = "unmatched"  # the route label of requests no route answered (404s on random paths)


class StoreCollector(Collector):
    """Jobs by status, queue depth, live workers, their slots and GPU memory, read from the store."""

    def __init__(self, store: Store, heartbeat_timeout_s: float) -> None:
        self.store = store
        self.heartbeat_timeout_s = heartbeat_timeout_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self.store.count_by_status()
        jobs = GaugeMetricFamily("fwdprune_jobs", "Jobs by status.", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("fwdprune_queue_depth", "Jobs waiting for a worker.", value=counts["queued"])
        yield from self._workers()

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        live = self.store.live_workers(self.heartbeat_timeout_s)  # by the database's clock
        yield GaugeMetricFamily("fwdprune_workers", "Workers with a recent heartbeat.", value=len(live))
        yield GaugeMetricFamily(
            "fwdprune_worker_slots", "Job slots of live workers.", value=sum(w.slots for w in live)
        )
        memory = GaugeMetricFamily(
            "fwdprune_gpu_memory_used_bytes",
            "GPU memory in use, as reported by workers.",
            labels=["worker", "gpu"],
        )
        for worker in live:
            for gpu in worker.info.get("gpus", []):
                # a MIG instance is named by its GPU's index and its slot on it
                name = f"{gpu['index']}/{gpu['mig']}" if "mig" in gpu else str(gpu["index"])
                memory.add_metric([worker.id, name], gpu["memory_used_bytes"])
        yield memory


class DurationFeed:
    """Observes each finished job's run time once, reading only jobs finished since the last scrape.

    `finished_at` is stamped by the finishing process before its commit, so a job can become visible
    after a later-stamped one was already read (commit order, clocks of other worker hosts). Each read
    therefore reaches back `overlap_s` before the cursor and skips the ids already observed there.
    """

    def __init__(self, histogram: Histogram, overlap_s: float = 300.0) -> None:
        self.histogram = histogram
        self.overlap_s = overlap_s
        self.cursor: float | None = None  # newest finished_at observed; None: read the whole history
        self.seen: dict[str, float] = {}  # id -> finished_at of the jobs observed within the overlap
        self._lock = threading.Lock()  # concurrent scrapes must not observe a job twice

    def feed(self, store: Store) -> None:
        with self._lock:
            since = None if self.cursor is None else self.cursor - self.overlap_s
            for job_id, finished_at, seconds in store.finished_since(since):
                if job_id not in self.seen:
                    self.histogram.observe(seconds)
                    self.seen[job_id] = finished_at
            self._advance()

    def _advance(self) -> None:
        if not self.seen:
            return
        # a clock far ahead on some host must not push the cursor past jobs that are still to come
        self.cursor = min(max(self.seen.values()), time.time())
        floor = self.cursor - self.overlap_s
        self.seen = {job_id: at for job_id, at in self.seen.items() if at >= floor}


class ServiceMetrics:
    """The registry of one app and the metrics in it."""

    def __init__(self, store: Store, heartbeat_timeout_s: float) -> None:
        self.store = store
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(store, heartbeat_timeout_s))
        durations = Histogram(
            "fwdprune_job_duration_seconds",
            "Run time of finished jobs.",
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.durations = DurationFeed(durations)
        self.requests = Counter(
            "fwdprune_http_requests",
            "HTTP requests by method, route and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fwdprune_http_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["method", "route", "status"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        self.durations.feed(self.store)
        return generate_latest(self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)


class RequestMetrics:
    """ASGI middleware counting requests and timing them, labelled by route template, not raw path."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app raises before it answers

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe_request(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The path template of the route the router chose (e.g. /v1/jobs/{job_id}), set in the shared scope."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED
