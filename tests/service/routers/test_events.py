"""A job's events as its owner and as an admin see them: where the job ran (worker ids, which hold a host
name and a pid, and GPU UUIDs) is shown to admins only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.main import create_app
from service.settings import Settings, hash_key
from service.store import FreeGpu, Store
from service.store.tables import WorkerRow
from tests.service.conftest import ADMIN, KEY_A
from tests.service.conftest import queue_job as _queue

WORKER = "wrk_gpuhost-17_4242_a1b2c3"  # as a worker names itself: wrk_<host>_<pid>_<suffix>
GPU = FreeGpu("GPU-5f1c2d3e-0000-4000-8000-123456789abc", 80 << 30)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[TestClient, Store]]:
    settings = Settings(data_dir=tmp_path / "data", api_keys=[KEY_A], admin_keys=[ADMIN])
    with TestClient(create_app(settings)) as client:
        yield client, client.app.state.store  # type: ignore[attr-defined]


def _lose_worker(store: Store) -> None:
    """The worker that holds the job stops heartbeating, and the reaper finds its job."""
    store.heartbeat(
        WorkerRow(id=WORKER, hostname="gpuhost-17", pid=4242, slots=1, started_at=0, heartbeat_at=0, info={})
    )
    with store.session() as s, s.begin():
        s.execute(update(WorkerRow).values(heartbeat_at=WorkerRow.heartbeat_at - 100))
    store.reap_dead_workers(timeout_s=10)


def _events(client: TestClient, job_id: str, key: str) -> list[dict[str, object]]:
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    return [{"type": e["type"], **e["data"]} for e in response.json()["data"]]


def test_the_owner_sees_no_host_pid_or_gpu(app: tuple[TestClient, Store]) -> None:
    client, store = app
    job_id = _queue(store, owner=hash_key(KEY_A), gpus=1)
    for _ in range(2):  # a worker takes it and is lost, twice: requeued once, then failed
        assert store.claim_job(WORKER, [GPU]) is not None
        _lose_worker(store)
    owner = _events(client, job_id, KEY_A)
    assert owner == [
        {"type": "status", "status": "queued"},
        {"type": "status", "status": "running"},
        {"type": "placement", "gpu_count": 1},
        {"type": "status", "status": "queued"},
        {
            "type": "warning",
            "message": "its worker stopped sending heartbeats for over 10s; requeued after attempt 1 of 2",
        },
        {"type": "status", "status": "running"},
        {"type": "placement", "gpu_count": 1},
        {
            "type": "status",
            "status": "failed",
            "error": {
                "code": "worker_lost",
                "message": "its worker stopped sending heartbeats for over 10s, in attempt 2 of 2",
            },
        },
    ]
    job = store.get_job(job_id)
    assert job is not None and job.error_message == owner[-1]["error"]["message"]  # type: ignore[index]
    for detail in ("gpuhost", "4242", "GPU-", "wrk_"):
        assert detail not in json.dumps(owner)


def test_admins_see_where_the_job_ran(app: tuple[TestClient, Store]) -> None:
    client, store = app
    job_id = _queue(store, owner=hash_key(KEY_A), gpus=1)
    assert store.claim_job(WORKER, [GPU]) is not None
    _lose_worker(store)
    admin = _events(client, job_id, ADMIN)
    assert admin[2] == {"type": "placement", "worker": WORKER, "gpus": [GPU.uuid]}
    assert admin[4] == {
        "type": "warning",
        "message": "its worker stopped sending heartbeats for over 10s; requeued after attempt 1 of 2",
        "worker": WORKER,
    }
