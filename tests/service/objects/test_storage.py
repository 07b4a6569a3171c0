"""Object storage through the S3 API, against a real S3-protocol server on loopback (moto's).

First the `Storage` operations on their own: checksummed puts and fetches (a corrupted object is caught),
ranged reads, listing and deleting by prefix, presigned URLs. Then the worker's side: what a lost commit
and the sweep leave in the bucket. Last, `fwdprune serve` with FWDPRUNE_STORAGE_URL=s3://...: an upload,
a job, downloads whole, by range, as a tar and through a presigned redirect, and nothing on a shared disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.client import Client
from service.main import create_app
from service.objects.backends import storage_from_url
from service.objects.downloads import requested_range
from service.objects.local import LocalStorage
from service.objects.s3 import S3Storage
from service.objects.storage import ChecksumMismatch, ObjectMissing, Storage, StorageError, attempt_prefix
from service.settings import Settings, SettingsError
from service.store import Claim, Store
from service.store.tables import JobRow, WorkerRow
from service.worker import Worker
from tests.service.conftest import KEY_A, REPO, S3Server, Server, submit, upload, wait_for
from tests.service.conftest import queue_job as _queue

MiB = 1024 * 1024
DATA = bytes(range(256)) * 64  # 16 KiB, every offset's value predictable


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def storage(bucket: str) -> S3Storage:
    return S3Storage(bucket, "deploy/one")


def put_bytes(storage: Storage, tmp_path: Path, key: str, data: bytes) -> None:
    source = tmp_path / "source"
    source.write_bytes(data)
    storage.put_file(source, key, sha256(data))


# --- the operations ------------------------------------------------------------------------------------


def test_put_and_fetch_are_checksummed(
    storage: S3Storage, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    put_bytes(storage, tmp_path, "files/a.jsonl", DATA)
    assert s3_server.keys(bucket) == ["deploy/one/files/a.jsonl"]  # under the URL's prefix
    head = s3_server.client().head_object(Bucket=bucket, Key="deploy/one/files/a.jsonl")
    assert head["Metadata"] == {"sha256": sha256(DATA)}
    storage.fetch("files/a.jsonl", tmp_path / "copy" / "a.jsonl")
    assert (tmp_path / "copy" / "a.jsonl").read_bytes() == DATA
    found = storage.stat("files/a.jsonl")
    assert found is not None and found.size == len(DATA) and abs(found.modified - time.time()) < 300
    assert storage.exists("files/a.jsonl") and not storage.exists("files/b.jsonl")
    with pytest.raises(ChecksumMismatch):  # bytes that are not what the caller vouched for
        storage.put_file(tmp_path / "source", "files/b.jsonl", sha256(b"something else"))
    assert not storage.exists("files/b.jsonl")


def test_corrupted_object_is_detected(
    storage: S3Storage, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    put_bytes(storage, tmp_path, "files/a.txt", DATA)
    # the object changes behind the service's back, its recorded sha256 stays
    s3_server.client().put_object(
        Bucket=bucket, Key="deploy/one/files/a.txt", Body=DATA[:-1] + b"!", Metadata={"sha256": sha256(DATA)}
    )
    dest = tmp_path / "dest" / "a.txt"
    with pytest.raises(ChecksumMismatch, match="does not match its sha256"):
        storage.fetch("files/a.txt", dest)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # nothing half-written is left
    with pytest.raises(ChecksumMismatch):  # and against a checksum the caller holds
        storage.fetch("files/a.txt", dest, sha256(DATA))


def test_large_file_goes_up_in_checked_parts(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    storage = S3Storage(bucket, "", part_bytes=5 * MiB)  # S3's smallest part
    data = os.urandom(11 * MiB)  # three parts
    source = tmp_path / "weights.bin"
    source.write_bytes(data)
    with pytest.raises(ChecksumMismatch):
        storage.put_file(source, "jobs/j/1/weights.bin", sha256(b"not these bytes"))
    assert s3_server.keys(bucket) == []  # the upload was aborted, not completed
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    storage.put_file(source, "jobs/j/1/weights.bin", sha256(data))
    storage.fetch("jobs/j/1/weights.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_range_reads(storage: S3Storage, tmp_path: Path) -> None:
    put_bytes(storage, tmp_path, "jobs/j/1/model.safetensors", DATA)
    key = "jobs/j/1/model.safetensors"
    assert b"".join(storage.read(key)) == DATA
    assert b"".join(storage.read(key, 100, 1099)) == DATA[100:1100]
    assert b"".join(storage.read(key, len(DATA) - 10)) == DATA[-10:]
    with pytest.raises(ObjectMissing):  # raised by the call, before any byte is streamed
        storage.read("jobs/j/1/nothing")
    assert storage.stat("jobs/j/1/nothing") is None
    storage.delete("jobs/j/1/nothing")  # deleting what is not there is not an error


def test_prefixes_list_and_delete_as_folders(
    storage: S3Storage, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    for key in ("jobs/j1/1/a.json", "jobs/j1/1/sparsity-0.2/b.json", "jobs/j1/2/c.json", "jobs/j10/1/d"):
        put_bytes(storage, tmp_path, key, key.encode())
    assert storage.list_keys("jobs/j1") == [
        "jobs/j1/1/a.json",
        "jobs/j1/1/sparsity-0.2/b.json",
        "jobs/j1/2/c.json",
    ]
    assert storage.list_keys("jobs/j1/2") == ["jobs/j1/2/c.json"]
    # a job runner killed mid-upload leaves an unfinished multipart upload behind
    s3_server.client().create_multipart_upload(Bucket=bucket, Key="deploy/one/jobs/j1/3/big.bin")
    storage.delete_prefix("jobs/j1")
    assert s3_server.keys(bucket) == ["deploy/one/jobs/j10/1/d"]  # j10 is not under j1
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_presigned_url_gets_the_object(storage: S3Storage, tmp_path: Path) -> None:
    put_bytes(storage, tmp_path, "jobs/j/1/config.json", DATA)
    url = storage.presigned_url("jobs/j/1/config.json", 60)
    assert "Signature" in url and "fwdprune-test-secret" not in url
    assert httpx.get(url).content == DATA  # no credential of ours: the URL is the authorisation
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == DATA[10:20]


def test_runner_url_opens_the_same_storage(storage: S3Storage, tmp_path: Path) -> None:
    put_bytes(storage, tmp_path, "files/x.txt", DATA)
    same = storage_from_url(storage.url)
    assert b"".join(same.read("files/x.txt")) == DATA


@pytest.mark.parametrize(
    ("header", "if_range", "expected"),
    [
        (None, None, None),
        ("bytes=0-9", None, (0, 9)),
        ("bytes=100-", None, (100, 999)),
        ("bytes=-10", None, (990, 999)),
        ("bytes=990-5000", None, (990, 999)),  # an end past the last byte is the last byte
        ("bytes=0-9", '"abc"', (0, 9)),  # If-Range holds the ETag: the range stands
        ("bytes=0-9", '"other"', None),  # another version: the whole object
        ("bytes=0-9,20-29", None, None),  # several ranges: the whole object, as RFC 9110 allows
        ("bytes=1000-", None, 416),
        ("bytes=9-2", None, 400),
        ("bytes=x-y", None, 400),
        ("lines=1-2", None, 400),
        ("bytes=-", None, 400),
    ],
)
def test_requested_range(header: str | None, if_range: str | None, expected: object) -> None:
    if isinstance(expected, int):
        with pytest.raises(HTTPException) as caught:
            requested_range(header, if_range, '"abc"', 1000)
        assert caught.value.status_code == expected
        if expected == 416:
            assert caught.value.headers == {"Content-Range": "bytes */1000"}
    else:
        assert requested_range(header, if_range, '"abc"', 1000) == expected


def test_local_keys_stay_under_the_root(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "data")
    (tmp_path / "data" / "files").mkdir(parents=True)
    (tmp_path / "data" / "files" / "f.txt").write_bytes(DATA)
    assert b"".join(local.read("files/f.txt", 5, 9)) == DATA[5:10]
    legacy = str((tmp_path / "data" / "files" / "f.txt").resolve())  # a file row from before keys
    assert local.local_path(legacy) == (tmp_path / "data" / "files" / "f.txt").resolve()
    for escaping in ("../outside", "files/../../outside", "/etc/passwd", ""):
        with pytest.raises(StorageError):
            local.local_path(escaping)


# --- configuration fails closed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://bucket/prefix",
        "s3://Upper_Case/x",
        "s3://ab",
        "s3://AKIAEXAMPLE:hunter2secret@bucket/x",
        "s3://bucket/a//b",
        "s3://bucket/../x",
        "s3://bucket/x?versionId=1",
        "/srv/artifacts",
    ],
)
def test_malformed_storage_url_stops_the_server(tmp_path: Path, url: str) -> None:
    settings = Settings(data_dir=tmp_path, api_keys=[KEY_A], storage_url=url)
    with pytest.raises(SettingsError, match="FWDPRUNE_STORAGE_URL must look like s3://bucket") as caught:
        create_app(settings)
    assert "hunter2secret" not in str(caught.value)


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_processes_refuse_a_malformed_storage_url(tmp_path: Path, command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")}
    env |= {"FWDPRUNE_API_KEYS": KEY_A, "FWDPRUNE_STORAGE_URL": "s3:/no-bucket"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", command, "--data-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "FWDPRUNE_STORAGE_URL must look like" in result.stderr


def test_s3_storage_without_credentials_stops_the_server(
    tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    settings = Settings(data_dir=tmp_path, api_keys=[KEY_A], storage_url=f"s3://{bucket}")
    with pytest.raises(SettingsError, match="S3 storage needs credentials"):
        create_app(settings)


def test_upload_the_store_refuses_is_a_503_without_details(
    s3_server: S3Server, tmp_path: Path, models_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], storage_url="s3://no-such-bucket"
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/files",
            files={"file": ("c.txt", b"hello\n")},
            headers={"Authorization": f"Bearer {KEY_A}"},
        )
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": "the object store refused to store an object (NoSuchBucket)"}
    for secret in (str(tmp_path), s3_server.env["AWS_ACCESS_KEY_ID"], str(s3_server.port)):
        assert secret not in response.text
    assert list(settings.files_dir.iterdir()) == []  # the temporary file went too


# --- the worker: publication by a fenced commit, and the sweep -----------------------------------------

# a stand-in job runner that writes a checkpoint naming its attempt and uploads it as the real one does
FAKE_RUNNER = """
import argparse, json, pathlib, sys
from service.worker.job_runner import stage_outputs
out, result, job_id, attempt, storage_url = sys.argv[1:]
out = pathlib.Path(out)
out.mkdir(parents=True, exist_ok=True)
(out / "weights.bin").write_text("attempt " + attempt)
artifacts = stage_outputs(argparse.Namespace(storage_url=storage_url, out_dir=out), job_id, int(attempt))
pathlib.Path(result).write_text(json.dumps({"ok": True, "metrics": {}, "artifacts": artifacts}))
"""


class UploadingWorker(Worker):
    def runner_command(self, job_id: str, claim: Claim, tmp_dir: Path) -> list[str]:
        out, result = str(tmp_dir / "out"), str(tmp_dir / "result.json")
        return [sys.executable, "-c", FAKE_RUNNER, out, result, job_id, str(claim.attempt), self.storage.url]


@pytest.fixture
def s3_workers(tmp_path: Path, bucket: str) -> Iterator[tuple[UploadingWorker, UploadingWorker, Store]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        device="cpu",
        storage_url=f"s3://{bucket}/pfx",
        heartbeat_interval_s=1000.0,  # tests call beat() themselves
        heartbeat_timeout_s=30.0,
        poll_interval_s=0.01,
        store_retry_max_wait_s=0.05,
    )
    settings.ensure_dirs()
    store = Store(settings.db_url)
    a = UploadingWorker(settings, slots=1, store=Store(settings.db_url, migrate=False))
    b = UploadingWorker(settings, slots=1, store=Store(settings.db_url, migrate=False))
    try:
        yield a, b, store
    finally:
        for worker in (a, b):
            worker.shutdown()
        store.close()


def _run_to_exit(worker: Worker, job_id: str) -> None:
    worker.tick()  # claims and starts the job
    worker.running[job_id].proc.wait(timeout=60)


def test_published_uploads_stay_and_unpublished_ones_go(
    s3_workers: tuple[UploadingWorker, UploadingWorker, Store], s3_server: S3Server, bucket: str
) -> None:
    a, b, store = s3_workers
    _queue(store, "job_kept")
    _run_to_exit(a, "job_kept")
    a.tick()  # the fenced commit publishes what the runner uploaded
    job = store.get_job("job_kept")
    assert job is not None and job.status == "succeeded" and job.artifacts is not None
    assert [(x["name"], x["key"]) for x in job.artifacts] == [("weights.bin", "jobs/job_kept/1/weights.bin")]
    assert s3_server.keys(bucket) == ["pfx/jobs/job_kept/1/weights.bin"]
    assert not list(a.settings.jobs_dir.iterdir())  # the worker's own temporary directory is gone

    _queue(store, "job_lost")
    _run_to_exit(a, "job_lost")
    assert s3_server.keys(bucket, "pfx/jobs/job_lost/") == ["pfx/jobs/job_lost/1/weights.bin"]
    with store.session() as s, s.begin():  # A pauses past the heartbeat timeout: B reaps its job
        s.execute(
            update(WorkerRow).where(WorkerRow.id == a.id).values(heartbeat_at=WorkerRow.heartbeat_at - 300)
        )
    assert b.store.reap_dead_workers(30.0) == ["job_lost"]
    a.stop_event.set()  # (so that A does not claim the job again in the same tick)
    a.tick()  # A resumes: its commit is refused, so what its runner uploaded is deleted
    job = store.get_job("job_lost")
    assert job is not None and job.status != "succeeded" and job.artifacts is None
    assert s3_server.keys(bucket) == ["pfx/jobs/job_kept/1/weights.bin"]


def test_sweep_keeps_only_what_may_still_be_published(
    s3_workers: tuple[UploadingWorker, UploadingWorker, Store],
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
) -> None:
    a, _, store = s3_workers
    states = {  # job: (status, current attempt)
        "job_ok": ("succeeded", 2),
        "job_run": ("running", 3),
        "job_fail": ("failed", 1),
        "job_cancel": ("cancelled", 1),
        "job_requeued": ("queued", 1),
    }
    for job_id, (status, attempts) in states.items():
        _queue(store, job_id)
        with store.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job_id).values(status=status, attempts=attempts))
    uploads = [("job_ok", 1), ("job_ok", 2), ("job_run", 2), ("job_run", 3), ("job_fail", 1)]
    uploads += [("job_cancel", 1), ("job_requeued", 1), ("job_deleted", 1)]
    for job_id, attempt in uploads:
        put_bytes(a.storage, tmp_path, f"{attempt_prefix(job_id, attempt)}/w.bin", b"w")
    a.sweep()
    assert s3_server.keys(bucket) == ["pfx/jobs/job_ok/2/w.bin", "pfx/jobs/job_run/3/w.bin"]


# --- end to end: `fwdprune serve` on S3 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_serve(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, s3_server: S3Server
) -> Iterator[tuple[Server, str]]:
    bucket = s3_server.new_bucket()
    server = Server(
        tmp_path_factory.mktemp("s3-serve") / "data", models_dir, FWDPRUNE_STORAGE_URL=f"s3://{bucket}/svc"
    ).start()
    yield server, bucket
    server.stop()


@pytest.fixture(scope="module")
def s3_job(s3_serve: tuple[Server, str], calibration: Path) -> dict[str, Any]:
    server, _ = s3_serve
    with server.client() as client:
        file_id = upload(client, calibration)
        done = wait_for(client, submit(client, file_id)["id"], ("succeeded", "failed", "cancelled"))
    assert done["status"] == "succeeded", done
    return {**done, "file_id": file_id}


def test_upload_goes_to_the_bucket(
    s3_serve: tuple[Server, str], s3_server: S3Server, calibration: Path
) -> None:
    server, bucket = s3_serve
    with server.client() as client:
        file_id = upload(client, calibration)
        key = f"svc/files/{file_id}.jsonl"
        assert key in s3_server.keys(bucket)
        stored = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        assert stored == calibration.read_bytes()
        store = Store(server.db_url, migrate=False)
        row = store.get_file(file_id, None)
        store.close()
        assert row is not None and row.path == f"files/{file_id}.jsonl"  # a key, not a path
        assert not [p for p in (server.data_dir / "files").iterdir()]  # nothing kept on the API's disk
        assert client.delete(f"/v1/files/{file_id}").status_code == 204
        assert key not in s3_server.keys(bucket)


def test_job_artifacts_download_from_the_bucket(
    s3_serve: tuple[Server, str], s3_job: dict[str, Any], s3_server: S3Server, tmp_path: Path
) -> None:
    server, bucket = s3_serve
    job_id = s3_job["id"]
    # the runner fetched its calibration file from the bucket, and put its outputs there
    with server.client() as client:
        artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
        assert all(set(a) == {"name", "bytes", "sha256"} for a in artifacts)  # no storage detail shown
        assert s3_server.keys(bucket, f"svc/jobs/{job_id}/") == sorted(
            f"svc/jobs/{job_id}/1/{a['name']}" for a in artifacts
        )
        bodies = {}
        for artifact in artifacts:
            response = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}")
            assert response.status_code == 200 and response.headers["etag"] == f'"{artifact["sha256"]}"'
            assert (
                len(response.content) == artifact["bytes"] and sha256(response.content) == artifact["sha256"]
            )
            bodies[artifact["name"]] = response.content

        big = max(artifacts, key=lambda a: a["bytes"])
        url, full = f"/v1/jobs/{job_id}/artifacts/{big['name']}", bodies[big["name"]]
        head = client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(big["bytes"])
        assert head.headers["x-checksum-sha256"] == big["sha256"] and head.headers["accept-ranges"] == "bytes"
        part = client.get(url, headers={"Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == full[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{big['bytes']}"
        assert client.get(url, headers={"Range": "bytes=-10"}).content == full[-10:]
        stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"0000"'})
        assert stale.status_code == 200 and stale.content == full  # another version: all of it
        past = client.get(url, headers={"Range": f"bytes={big['bytes']}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{big['bytes']}"
        assert client.get(url, headers={"Range": "lines=1-2"}).status_code == 400

        tar_bytes = client.get(f"/v1/jobs/{job_id}/checkpoint.tar").content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert {name: sha256(body) for name, body in members.items()} == {
        f"{job_id}/{a['name']}": a["sha256"] for a in artifacts
    }

    resumed = tmp_path / "resumed"  # the client resumes a partial file with Range, and checks it
    resumed.mkdir()
    (resumed / (big["name"] + ".part")).write_bytes(full[: len(full) // 2])
    with Client(server.url, KEY_A) as api:
        api.download(job_id, resumed)
    assert (resumed / big["name"]).read_bytes() == full

    # no artifact, upload or inputs copy was left on the disk the API and its worker share
    assert not [p for p in server.data_dir.joinpath("jobs").rglob("*") if p.is_file()]
    assert not list(server.data_dir.joinpath("files").iterdir())


def test_presigned_redirect_mode(
    s3_serve: tuple[Server, str],
    s3_job: dict[str, Any],
    s3_server: S3Server,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    server, bucket = s3_serve
    # a second API process (no worker of its own) on the same store and bucket, handing out presigned URLs
    presigning = Server(
        server.data_dir,
        models_dir,
        FWDPRUNE_STORAGE_URL=f"s3://{bucket}/svc",
        FWDPRUNE_STORAGE_PRESIGN="true",
        FWDPRUNE_STORAGE_PRESIGN_EXPIRY_S="120",
        FWDPRUNE_EMBEDDED_WORKER="false",
    ).start()
    try:
        job_id = s3_job["id"]
        with presigning.client() as client:
            artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
            big = max(artifacts, key=lambda a: a["bytes"])
            url = f"/v1/jobs/{job_id}/artifacts/{big['name']}"
            redirect = client.get(url)
            assert redirect.status_code == 307
            location = redirect.headers["location"]
            assert httpx.URL(location).port == s3_server.port and "Expires=" in location
            body = httpx.get(location).content  # no API key: the signature is the authorisation
            assert sha256(body) == big["sha256"]
            assert httpx.get(location, headers={"Range": "bytes=0-99"}).content == body[:100]
            head = client.head(url)  # HEAD still answers here, with the checksum
            assert head.status_code == 200 and head.headers["x-checksum-sha256"] == big["sha256"]
        with Client(presigning.url, KEY_A) as api:  # the client follows the redirect, and checks
            paths = api.download(job_id, tmp_path / "ckpt")
        assert {p.name for p in paths} == {Path(a["name"]).name for a in artifacts}
    finally:
        presigning.stop()


def test_deleting_the_job_deletes_its_objects(
    s3_serve: tuple[Server, str], s3_job: dict[str, Any], s3_server: S3Server
) -> None:
    server, bucket = s3_serve
    job_id = s3_job["id"]
    assert s3_server.keys(bucket, f"svc/jobs/{job_id}/")
    with server.client() as client:
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert client.get(f"/v1/jobs/{job_id}/artifacts").status_code == 404
    assert s3_server.keys(bucket, f"svc/jobs/{job_id}/") == []
