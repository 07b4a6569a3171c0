"""What one API key may hold at once, through the API: queued jobs (429 with Retry-After), stored bytes,
its published checkpoints' included (413), and its files and jobs listed a page at a time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import ADMIN, KEY_A, KEY_B, QUICK

LINE = b'{"text": "a line of calibration text"}\n'  # 38 bytes


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        api_keys=[KEY_A, KEY_B],
        admin_keys=[ADMIN],
        device="cpu",
        max_queued_jobs_per_key=2,
        max_stored_bytes_per_key=10 * len(LINE),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: TestClient, lines: int, key: str = KEY_A, name: str = "calib.jsonl") -> Any:
    return client.post("/v1/files", files={"file": (name, LINE * lines)}, headers=auth(key))


def test_a_key_past_its_queued_jobs_gets_429_and_retry_after(client: TestClient) -> None:
    def submit(key: str) -> Any:
        file_id = upload(client, 1, key).json()["id"]
        body = {"model": "tiny-llama", "calibration_file": file_id, "sparsity": 0.3, **QUICK}
        return client.post("/v1/jobs", json=body, headers=auth(key))

    assert [submit(KEY_A).status_code for _ in range(2)] == [201, 201]
    refused = submit(KEY_A)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
    assert refused.json()["detail"] == (
        "this key already has 2 queued jobs, the most it may have waiting "
        "(FWDPRUNE_MAX_QUEUED_JOBS_PER_KEY); submit again once some have started"
    )
    assert submit(KEY_B).status_code == 201  # another key's queue
    listed = client.get("/v1/jobs", headers=auth()).json()["data"]
    assert len(listed) == 2


def test_a_key_past_its_stored_bytes_gets_413(client: TestClient) -> None:
    assert upload(client, 6).status_code == 201
    cut_off = upload(client, 5)  # 5 lines where 4 fit: stopped as it streams, nothing kept
    assert cut_off.status_code == 413
    assert "FWDPRUNE_MAX_STORED_BYTES_PER_KEY" in cut_off.json()["detail"]
    assert upload(client, 4).status_code == 201  # exactly full
    full = upload(client, 1)  # refused before its body is read
    assert full.status_code == 413
    assert full.json()["detail"] == (
        f"this key's files and published checkpoints would hold more than the {10 * len(LINE)} bytes it "
        "may keep (FWDPRUNE_MAX_STORED_BYTES_PER_KEY); delete files or jobs it no longer needs"
    )
    assert upload(client, 1, KEY_B).status_code == 201
    files = client.get("/v1/files", headers=auth()).json()["data"]
    assert sorted(f["bytes"] for f in files) == [4 * len(LINE), 6 * len(LINE)]
    assert client.delete(f"/v1/files/{files[0]['id']}", headers=auth()).status_code == 204
    assert upload(client, 1).status_code == 201  # room again


def test_files_are_listed_a_page_at_a_time(client: TestClient) -> None:
    ids = [upload(client, 1, name=f"part-{i}.jsonl").json()["id"] for i in range(5)]
    pages, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/files", params=params, headers=auth()).json()
        pages.append([f["id"] for f in page["data"]])
        if not page["has_more"]:
            assert page["next_after"] is None
            break
        after = page["next_after"]
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    assert client.get("/v1/files", params={"limit": 201}, headers=auth()).status_code == 422
    assert client.get("/v1/files", headers=auth(KEY_B)).json() == {
        "data": [],
        "has_more": False,
        "next_after": None,
    }


def _publish(client: TestClient, job_id: str, sizes: list[int]) -> None:
    """The job succeeded and published artifacts of these sizes (as a worker's fenced commit records)."""
    store = client.app.state.store  # type: ignore[attr-defined]
    artifacts = [{"name": f"part-{i}.bin", "bytes": n, "sha256": "0" * 64} for i, n in enumerate(sizes)]
    assert store.finish_job(job_id, "succeeded", artifacts=artifacts, from_statuses=("queued",))


def test_published_checkpoints_count_toward_the_stored_bytes(client: TestClient) -> None:
    file_id = upload(client, 1).json()["id"]
    body = {"model": "tiny-llama", "calibration_file": file_id, "sparsity": 0.3, **QUICK}
    job = client.post("/v1/jobs", json=body, headers=auth()).json()
    _publish(client, job["id"], [5 * len(LINE), 4 * len(LINE)])  # with the upload: the whole quota
    full = upload(client, 1)
    assert full.status_code == 413, full.text
    assert full.json()["detail"] == (
        f"this key's files and published checkpoints would hold more than the {10 * len(LINE)} bytes it "
        "may keep (FWDPRUNE_MAX_STORED_BYTES_PER_KEY); delete files or jobs it no longer needs"
    )
    refused = client.post("/v1/jobs", json=body, headers=auth())  # a job would publish more
    assert refused.status_code == 413, refused.text
    assert "FWDPRUNE_MAX_STORED_BYTES_PER_KEY" in refused.json()["detail"]
    assert upload(client, 1, KEY_B).status_code == 201  # another key's quota
    assert client.delete(f"/v1/jobs/{job['id']}", headers=auth()).status_code == 204
    assert upload(client, 1).status_code == 201  # the checkpoint's bytes are free again
    assert client.post("/v1/jobs", json=body, headers=auth()).status_code == 201


def test_another_keys_id_as_a_cursor_is_an_unknown_one(client: TestClient) -> None:
    """`after` naming another key's job or file answers as an id that names nothing: no existence oracle."""
    b_file = upload(client, 1, KEY_B).json()["id"]
    body = {"model": "tiny-llama", "calibration_file": b_file, "sparsity": 0.3, **QUICK}
    assert client.post("/v1/jobs", json=body, headers=auth(KEY_B)).status_code == 201
    a_file = upload(client, 1).json()["id"]  # newer than all of B's
    a_job = client.post("/v1/jobs", json={**body, "calibration_file": a_file}, headers=auth()).json()["id"]
    for path, a_id in (("/v1/jobs", a_job), ("/v1/files", a_file)):
        unknown = client.get(path, params={"after": "job_nothing"}, headers=auth(KEY_B))
        others = client.get(path, params={"after": a_id}, headers=auth(KEY_B))
        assert (others.status_code, others.json()) == (unknown.status_code, unknown.json()), path
        assert others.json() == {"data": [], "has_more": False, "next_after": None}
        assert len(client.get(path, headers=auth(KEY_B)).json()["data"]) == 1  # B's own, listed
