"""The job-duration feed: each finished job observed once, late commits inside the overlap counted."""

from __future__ import annotations

import pytest


class _FinishedJobs:
    """A store stand-in answering `finished_since` from a list of (id, finished_at, seconds)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, float, float]] = []
        self.asked: list[float | None] = []

    def finished_since(self, after: float | None) -> list[tuple[str, float, float]]:
        self.asked.append(after)
        return [job for job in self.jobs if after is None or job[1] > after]


def test_duration_feed_observes_each_job_once() -> None:
    import time

    from prometheus_client import CollectorRegistry, Histogram

    from service.metrics import DurationFeed

    registry = CollectorRegistry()
    feed = DurationFeed(Histogram("d", "d", buckets=(10.0, float("inf")), registry=registry), overlap_s=60)
    store = _FinishedJobs()
    now = time.time()
    store.jobs = [("a", now - 500, 2.0), ("b", now - 100, 20.0)]
    feed.feed(store)  # type: ignore[arg-type]
    feed.feed(store)  # type: ignore[arg-type]
    # committed late, stamped before the newest job already seen: still inside the overlap, so counted
    store.jobs.append(("c", now - 130, 5.0))
    feed.feed(store)  # type: ignore[arg-type]
    assert store.asked == [None, pytest.approx(now - 160), pytest.approx(now - 160)]
    assert registry.get_sample_value("d_count") == 3 and registry.get_sample_value("d_sum") == 27.0
    assert registry.get_sample_value("d_bucket", {"le": "10.0"}) == 2
    assert set(feed.seen) == {"b", "c"}  # ids older than the overlap are forgotten
