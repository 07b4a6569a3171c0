"""End to end: a real server, real SQLite, a real worker and real job processes on a tiny model."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest

from service.client import Client
from service.store import Store
from tests.service.conftest import ADMIN, KEY_A, KEY_B, LONG, QUICK, REPO, Server, submit, upload, wait_for


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes (its parent has not reaped it yet)
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_running(server: Server, job_id: str, timeout: float = 60) -> int:
    """Wait until the job process computes (its first stage event); return its pid from the store."""
    store = Store(server.db_url, migrate=False)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = store.get_job(job_id)
            assert job is not None
            if job.status == "running" and job.pid and job.computing:
                return job.pid
            time.sleep(0.2)
    finally:
        store.close()
    raise AssertionError(f"job {job_id} never started computing")


def test_upload_submit_poll_download(server: Server, calibration: Path, tmp_path: Path) -> None:
    with server.client() as client:
        file_id = upload(client, calibration)
        meta = client.get(f"/v1/files/{file_id}").json()
        assert meta["sha256"] == hashlib.sha256(calibration.read_bytes()).hexdigest()
        job = submit(client, file_id, metadata={"team": "infra"})
        assert job["id"].startswith("job_") and job["status"] == "queued"
        done = wait_for(client, job["id"], ("succeeded", "failed", "cancelled"))
        assert done["status"] == "succeeded", done
        assert done["metrics"]["params"]["total_after"] < done["metrics"]["params"]["total_before"]
        assert set(done["metrics"]["perplexity"]) >= {"before", "after"}
        assert done["metadata"] == {"team": "infra"} and done["finished_at"] >= done["started_at"]

        events = client.get(f"/v1/jobs/{job['id']}/events").json()
        kinds = [e["type"] for e in events["data"]]
        stages = [e["data"]["stage"] for e in events["data"] if e["type"] == "stage"]
        assert kinds[0] == "status" and {"load", "scoring", "export"} <= set(stages)
        assert [e["data"]["status"] for e in events["data"] if e["type"] == "status"][-1] == "succeeded"
        later = client.get(f"/v1/jobs/{job['id']}/events", params={"after": events["data"][1]["seq"]}).json()
        assert later["data"] == events["data"][2:]

        artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        names = {a["name"] for a in artifacts}
        assert {"config.json", "pruning_report.json", "model.safetensors.index.json"} <= names
        whole = tmp_path / "whole"
        whole.mkdir()
        for artifact in artifacts:
            body = client.get(f"/v1/jobs/{job['id']}/artifacts/{artifact['name']}").content
            assert len(body) == artifact["bytes"] and hashlib.sha256(body).hexdigest() == artifact["sha256"]
            (whole / artifact["name"]).write_bytes(body)

        # Range: a middle slice, a suffix, and one past the end
        big = max(artifacts, key=lambda a: a["bytes"])
        url = f"/v1/jobs/{job['id']}/artifacts/{big['name']}"
        full = (whole / big["name"]).read_bytes()
        part = client.get(url, headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == full[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{big['bytes']}"
        assert client.get(url, headers={"Range": "bytes=-10"}).content == full[-10:]
        past = client.get(url, headers={"Range": f"bytes={big['bytes']}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{big['bytes']}"

        tar_bytes = client.get(f"/v1/jobs/{job['id']}/checkpoint.tar").content
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            tar.extractall(tmp_path / "tar", filter="data")
        unpacked = tmp_path / "tar" / job["id"]
        for artifact in artifacts:
            assert (
                hashlib.sha256((unpacked / artifact["name"]).read_bytes()).hexdigest() == artifact["sha256"]
            )

        # the client resumes a partial file with Range and verifies the checksum
        resumed = tmp_path / "resumed"
        resumed.mkdir()
        (resumed / (big["name"] + ".part")).write_bytes(full[: len(full) // 2])
        with Client(server.url, KEY_A) as api:
            paths = api.download(job["id"], resumed)
        assert (resumed / big["name"]).read_bytes() == full and len(paths) == len(artifacts)

    from transformers import AutoModelForCausalLM

    from pruning import load_pruned

    model = load_pruned(unpacked)
    assert sum(p.numel() for p in model.parameters()) == done["metrics"]["params"]["total_after"]
    plain = AutoModelForCausalLM.from_pretrained(whole, trust_remote_code=True)
    assert sum(p.numel() for p in plain.parameters()) == done["metrics"]["params"]["total_after"]

    with server.client() as client:
        # artifact names are looked up, never joined: traversal finds nothing
        for name in ("..%2F..%2Ffwdprune.db", "%2Fetc%2Fpasswd", "..%2Fjob.log", "job.log"):
            assert client.get(f"/v1/jobs/{job['id']}/artifacts/{name}").status_code == 404
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert not (server.data_dir / "jobs" / job["id"]).exists()


def test_cancel_running_job(server: Server, calibration: Path) -> None:
    with server.client() as client:
        job = submit(client, upload(client, calibration), LONG)
        pid = _wait_running(server, job["id"])
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409  # running: cancel first
        assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] in ("cancelling", "cancelled")
        done = wait_for(client, job["id"], ("cancelled", "failed", "succeeded"), timeout=30)
        assert done["status"] == "cancelled"
        assert not _pid_alive(pid)
        assert not list((server.data_dir / "jobs").glob(f".tmp-{job['id']}*"))  # one per attempt
        assert not (server.data_dir / "jobs" / job["id"]).exists()
        assert client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"] == []


def test_killed_job_process_fails_with_reason(server: Server, calibration: Path) -> None:
    with server.client() as client:
        job = submit(client, upload(client, calibration), LONG)
        pid = _wait_running(server, job["id"])
        os.kill(pid, signal.SIGKILL)
        done = wait_for(client, job["id"], ("failed", "succeeded", "cancelled"), timeout=30)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "worker_lost" and "SIGKILL" in done["error"]["message"]


def test_queued_cancel_idempotency_and_listing(server: Server, calibration: Path) -> None:
    with server.client() as client:
        file_id = upload(client, calibration)
        body = {"model": "tiny-llama", "calibration_file": file_id, "sparsity": 0.5, **LONG}
        first = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201 and again.status_code == 200
        assert first.json()["id"] == again.json()["id"]
        other = client.post("/v1/jobs", json={**body, "sparsity": 0.4}, headers={"Idempotency-Key": "k1"})
        assert other.status_code == 422 and "Idempotency-Key" in other.text
        second = client.post("/v1/jobs", json=body).json()
        for job_id in (second["id"], first.json()["id"]):
            client.post(f"/v1/jobs/{job_id}/cancel")
            wait_for(client, job_id, ("cancelled",), timeout=30)

        page = client.get("/v1/jobs", params={"limit": 1}).json()
        assert page["data"][0]["id"] == second["id"] and page["has_more"]
        rest = client.get("/v1/jobs", params={"limit": 1, "after": page["next_after"]}).json()
        assert rest["data"][0]["id"] == first.json()["id"]
        cancelled = client.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]
        assert {j["status"] for j in cancelled} == {"cancelled"}
        assert client.delete(f"/v1/files/{file_id}").status_code == 204

    with server.client(KEY_B) as other_client:
        assert other_client.get("/v1/jobs").json()["data"] == []
        assert other_client.get(f"/v1/jobs/{second['id']}").status_code == 404
        assert other_client.post(f"/v1/jobs/{second['id']}/cancel").status_code == 404
    with server.client(ADMIN) as admin:
        assert any(
            j["id"] == second["id"] for j in admin.get("/v1/jobs", params={"all": True}).json()["data"]
        )

    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'fwdprune_jobs{status="cancelled"}' in metrics and "fwdprune_queue_depth" in metrics


def test_cli_client_commands(server: Server, calibration: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FWDPRUNE_URL": server.url, "FWDPRUNE_TOKEN": KEY_A}

    def cli(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    import json

    out = cli(
        "submit",
        "--model",
        "tiny-llama",
        "--data",
        str(calibration),
        "--sparsity",
        "0.3",
        "--seq-len",
        str(QUICK["seq_len"]),
        "--num-samples",
        str(QUICK["num_samples"]),
        "--eval-samples",
        str(QUICK["eval_samples"]),
        "--precision",
        "fp32",
        "--options",
        json.dumps(QUICK["options"]),
        "--download",
        str(tmp_path / "ckpt"),
    )
    job_id = out.splitlines()[0]
    assert (tmp_path / "ckpt" / "config.json").is_file()
    assert json.loads(cli("status", job_id))["status"] == "succeeded"
    assert job_id in cli("jobs")
    cli("download", job_id, str(tmp_path / "again"))
    assert sorted(os.listdir(tmp_path / "again")) == sorted(os.listdir(tmp_path / "ckpt"))
    assert cli("cancel", job_id).strip() == "succeeded"


@pytest.mark.parametrize("budget", [QUICK])
def test_restart_loses_nothing(tmp_path: Path, models_dir: Path, calibration: Path, budget: dict) -> None:
    data_dir = tmp_path / "data"
    srv = Server(data_dir, models_dir).start()
    try:
        with srv.client() as client:
            file_id = upload(client, calibration)
            jobs = [submit(client, file_id, budget)["id"] for _ in range(3)]
    finally:
        srv.stop()  # mid-queue: the first job is starting, the others are queued
    srv = Server(data_dir, models_dir).start()
    try:
        with srv.client() as client:
            assert client.get(f"/v1/files/{file_id}").status_code == 200
            listed = {j["id"] for j in client.get("/v1/jobs").json()["data"]}
            assert set(jobs) <= listed
            for job_id in jobs:
                assert wait_for(client, job_id, ("succeeded", "failed"))["status"] == "succeeded"
    finally:
        srv.stop()
