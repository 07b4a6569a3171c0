"""The job process's event sink: progress throttled, every other event written."""

from __future__ import annotations

from service.worker.job_runner import JobEvents


def test_progress_events_are_throttled(db_url: str) -> None:
    import time

    from service.store import Store
    from service.store.tables import JobRow

    store = Store(db_url)
    store.create_job(
        JobRow(
            id="job_t",
            owner="o",
            status="queued",
            request={},
            resolved={},
            request_hash="h",
            metadata_={},
            created_at=time.time(),
            progress={},
            attempts=0,
            computing=False,
        )
    )
    sink = JobEvents(store, "job_t", min_interval_s=60)
    for i in range(1, 101):
        sink(
            {"type": "progress", "stage": "scoring", "round": 1, "rounds": 1, "fraction": i / 100, "eta_s": 1}
        )
    sink({"type": "metric", "name": "perplexity_after", "value": 3.0})
    kinds = [(e.type, e.data.get("fraction")) for e in store.events("job_t", 0, 1000)]
    assert kinds == [("status", None), ("progress", 0.01), ("progress", 1.0), ("metric", None)]
    store.close()
