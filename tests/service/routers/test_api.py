"""API behaviour in-process (TestClient): auth, ownership, validation before any job runs, artifact
downloads (Range, If-Range, HEAD) and the metrics endpoint."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.client import Client
from service.main import create_app
from service.objects.artifacts import describe
from service.settings import Settings, SettingsError, hash_key
from service.store import Store
from service.store.tables import JobRow
from tests.service.conftest import ADMIN, KEY_A, KEY_B, QUICK, REPO


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        api_keys=[KEY_A, KEY_B],
        admin_keys=[ADMIN],
        max_upload_bytes=50_000,
        device="cpu",
    )


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def put_file(client: TestClient, name: str, content: bytes, key: str = KEY_A) -> object:
    return client.post("/v1/files", files={"file": (name, content)}, headers=auth(key))


def test_keys_required(app_client: TestClient) -> None:
    for headers in (
        {},
        auth("not-a-key-at-all-xxxxx"),
        {"Authorization": f"Basic {KEY_A}"},
        {"Authorization": "Bearer "},
        {"Authorization": KEY_A},
    ):
        response = app_client.get("/v1/jobs", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {"detail": "missing or invalid API key"}
    assert app_client.get("/v1/jobs", headers={"Authorization": f"bearer  {KEY_A} "}).status_code == 200
    assert app_client.get("/v1/jobs", headers=auth()).status_code == 200
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/readyz").status_code == 503  # no worker heartbeat in this process


def test_docs_offer_bearer_auth(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "Authorization: Bearer" in scheme["description"]
    assert spec["paths"]["/v1/jobs"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_insecure_mode_needs_no_header(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(data_dir=tmp_path, insecure_no_auth=True))) as client:
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/v1/jobs", headers=auth("whatever-key-0123456789")).status_code == 200


def test_server_refuses_to_start_without_keys(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no API key"):
        create_app(Settings(data_dir=tmp_path))
    with pytest.raises(SettingsError, match="16 characters"):
        create_app(Settings(data_dir=tmp_path, api_keys=["short"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--insecure-no-auth" in result.stderr


def test_keys_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# ops keys\nfile-key-0123456789abcdef\n")
    monkeypatch.setenv("FWDPRUNE_API_KEYS", f"{KEY_A}, {KEY_B}")
    monkeypatch.setenv("FWDPRUNE_API_KEYS_FILE", str(keys))
    settings = Settings()
    assert settings.all_user_keys() == [KEY_A, KEY_B, "file-key-0123456789abcdef"]
    assert all(len(digest) == 64 for digest in settings.key_hashes())


def test_files_belong_to_their_key(app_client: TestClient) -> None:
    created = put_file(app_client, "calib.txt", b"hello world\n").json()  # type: ignore[attr-defined]
    assert created["bytes"] == 12 and created["filename"] == "calib.txt"
    assert app_client.get(f"/v1/files/{created['id']}", headers=auth(KEY_B)).status_code == 404
    assert app_client.delete(f"/v1/files/{created['id']}", headers=auth(KEY_B)).status_code == 404
    assert app_client.get("/v1/files", headers=auth(KEY_B)).json()["data"] == []
    assert [f["id"] for f in app_client.get("/v1/files", headers=auth()).json()["data"]] == [created["id"]]
    assert len(app_client.get("/v1/files", params={"all": True}, headers=auth(ADMIN)).json()["data"]) == 1
    assert app_client.get(f"/v1/files/{created['id']}", headers=auth(ADMIN)).status_code == 200
    assert app_client.delete(f"/v1/files/{created['id']}", headers=auth()).status_code == 204
    assert app_client.get(f"/v1/files/{created['id']}", headers=auth()).status_code == 404


@pytest.mark.parametrize(
    ("name", "content", "status", "needle"),
    [
        ("big.txt", b"x" * 60_000, 413, "limit"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', 422, "line 2 is not valid JSON"),
        ("bad.jsonl", b'{"text": "ok"}\n["a list"]\n', 422, "line 2 must be a JSON object"),
        ("bad.jsonl", b'{"body": "no text field"}\n', 422, "`text`"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), 422, "UTF-8"),
        ("empty.txt", b"\n \n", 422, "no text"),
        ("data.csv", b"a,b\n", 422, "unsupported file type"),
    ],
)
def test_upload_validation(
    app_client: TestClient, name: str, content: bytes, status: int, needle: str
) -> None:
    response = put_file(app_client, name, content)
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert needle in response.text  # type: ignore[attr-defined]


def test_upload_keeps_only_the_base_name(app_client: TestClient, settings: Settings) -> None:
    created = put_file(app_client, "../../evil.txt", b"text\n").json()  # type: ignore[attr-defined]
    assert created["filename"] == "evil.txt"
    assert [p.parent for p in settings.files_dir.rglob("*")] == [settings.files_dir]


def _job_body(file_id: str, **extra: object) -> dict[str, object]:
    return {"model": "tiny-llama", "calibration_file": file_id, "sparsity": 0.3, **QUICK, **extra}


@pytest.fixture
def file_id(app_client: TestClient, calibration: Path) -> str:
    return str(put_file(app_client, "calib.jsonl", calibration.read_bytes()).json()["id"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "loc", "needle"),
    [
        ({"model": "../tiny-llama"}, "model", "no absolute paths"),
        ({"model": "/etc"}, "model", "no absolute paths"),
        ({"model": "tiny-llama/../../x"}, "model", "no absolute paths"),
        ({"model": "~root"}, "model", "no absolute paths"),
        ({"model": "no-such-model"}, "model", "neither"),
        ({"model": "nobody/not-cached"}, "model", "neither"),
        ({"model": "tiny-gpt2"}, "model", "supported model types"),
        ({"sparsity": 0.95}, "sparsity", "less than or equal"),
        ({"sparsity": 0}, "sparsity", "greater than"),
        ({"method": "magic"}, "method", "bonsai"),
        ({"options": {"rounds": 0}}, "options", "rounds"),
        ({"options": {"no_such_option": 1}}, "options", "no_such_option"),
        ({"calibration_file": "file_missing"}, "calibration_file", "does not exist"),
        ({"eval_file": "file_missing"}, "eval_file", "does not exist"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
    ],
)
def test_submit_validation(
    app_client: TestClient, file_id: str, extra: dict[str, object], loc: str, needle: str
) -> None:
    response = app_client.post("/v1/jobs", json=_job_body(file_id, **extra), headers=auth())
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert loc in detail["loc"] and needle in json.dumps(detail), detail


def test_symlink_escape_refused(
    app_client: TestClient, file_id: str, tmp_path: Path, models_dir: Path
) -> None:
    outside = tmp_path / "outside" / "model"
    outside.mkdir(parents=True)
    (outside / "config.json").write_text(json.dumps({"model_type": "llama"}))
    link = models_dir / "escape-link"
    link.symlink_to(outside.parent, target_is_directory=True)
    try:
        response = app_client.post(
            "/v1/jobs", json=_job_body(file_id, model="escape-link/model"), headers=auth()
        )
        assert response.status_code == 422 and "symlink" in response.text
    finally:
        link.unlink()


def test_malformed_json_and_foreign_files(app_client: TestClient, file_id: str) -> None:
    response = app_client.post(
        "/v1/jobs", content=b"{not json", headers={**auth(), "content-type": "application/json"}
    )
    assert response.status_code == 422
    response = app_client.post("/v1/jobs", json=_job_body(file_id), headers=auth(KEY_B))
    assert response.status_code == 422 and "does not exist" in response.text


def test_submit_get_cancel_delete(app_client: TestClient, file_id: str) -> None:
    job = app_client.post("/v1/jobs", json=_job_body(file_id), headers=auth())
    assert job.status_code == 201
    job_id = job.json()["id"]
    assert app_client.get(f"/v1/jobs/{job_id}", headers=auth(KEY_B)).status_code == 404
    assert (
        app_client.delete(f"/v1/files/{file_id}", headers=auth()).status_code == 409
    )  # a queued job reads it
    assert app_client.post(f"/v1/jobs/{job_id}/cancel", headers=auth()).json()["status"] == "cancelled"
    assert app_client.get(f"/v1/jobs/{job_id}/checkpoint.tar", headers=auth()).status_code == 404
    assert app_client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204


def test_api_process_imports_no_torch(models_dir: Path, calibration: Path, tmp_path: Path) -> None:
    script = f"""
import sys
import tarfile
from fastapi.testclient import TestClient
from service.main import create_app
from service.settings import Settings
import service.cli
service.cli.build_parser()
app = create_app(Settings(data_dir={str(tmp_path)!r}, models_dir={str(models_dir)!r}, insecure_no_auth=True))
with TestClient(app) as client:
    text = open({str(calibration)!r}, "rb").read()
    f = client.post("/v1/files", files={{"file": ("c.jsonl", text)}}).json()
    r = client.post("/v1/jobs", json={{"model": "tiny-llama", "calibration_file": f["id"], "sparsity": 0.3}})
    assert r.status_code == 201, r.text
    assert client.post("/v1/jobs", json={{"model": "nobody/x", "calibration_file": f["id"],
                                          "sparsity": 0.3}}).status_code == 422
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


BLOB = bytes(range(256)) * 40  # 10240 bytes, every offset's value predictable


@pytest.fixture
def artifact_url(app_client: TestClient, settings: Settings) -> str:
    """A succeeded job of KEY_A's with two published artifacts; the URL of the larger one."""
    job_id = "job_artifacts"
    directory = settings.jobs_dir / job_id
    directory.mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(BLOB)
    (directory / "config.json").write_text("{}")
    now = time.time()
    store = app_client.app.state.store  # type: ignore[attr-defined]
    store.create_job(
        JobRow(
            id=job_id,
            owner=hash_key(KEY_A),
            status="succeeded",
            request={},
            resolved={},
            request_hash="h",
            metadata_={},
            created_at=now,
            started_at=now,
            finished_at=now,
            progress={},
            artifacts=describe(directory),
            attempts=1,
            computing=False,
        )
    )
    return f"/v1/jobs/{job_id}/artifacts/model.safetensors"


def test_artifact_whole_and_head(app_client: TestClient, artifact_url: str) -> None:
    sha = hashlib.sha256(BLOB).hexdigest()
    whole = app_client.get(artifact_url, headers=auth())
    assert whole.status_code == 200 and whole.content == BLOB
    assert whole.headers["etag"] == f'"{sha}"' and whole.headers["x-checksum-sha256"] == sha
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-length"] == str(len(BLOB))
    head = app_client.head(artifact_url, headers=auth())
    assert head.status_code == 200 and head.content == b""
    assert {k: head.headers[k] for k in ("etag", "x-checksum-sha256", "content-length", "accept-ranges")} == {
        k: whole.headers[k] for k in ("etag", "x-checksum-sha256", "content-length", "accept-ranges")
    }
    assert app_client.head(artifact_url).status_code == 401
    assert app_client.head(artifact_url, headers=auth(KEY_B)).status_code == 404
    missing = artifact_url.replace("model.safetensors", "job.log")
    assert app_client.get(missing, headers=auth()).status_code == 404


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=100-1099", 100, 1099),  # a middle slice
        ("bytes=-10", len(BLOB) - 10, len(BLOB) - 1),  # suffix: the last 10 bytes
        ("bytes=4000-", 4000, len(BLOB) - 1),  # open-ended
        ("bytes=10000-99999", 10000, len(BLOB) - 1),  # an end past the file is cut to it
    ],
)
def test_artifact_single_range(
    app_client: TestClient, artifact_url: str, header: str, start: int, end: int
) -> None:
    part = app_client.get(artifact_url, headers={**auth(), "Range": header})
    assert part.status_code == 206 and part.content == BLOB[start : end + 1]
    assert part.headers["content-range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert part.headers["etag"] == f'"{hashlib.sha256(BLOB).hexdigest()}"'
    head = app_client.head(artifact_url, headers={**auth(), "Range": header})
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-range"] == part.headers["content-range"]


def test_artifact_bad_ranges(app_client: TestClient, artifact_url: str) -> None:
    past = app_client.get(artifact_url, headers={**auth(), "Range": f"bytes={len(BLOB)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(BLOB)}"
    for header in ("items=0-1", "bytes=abc", "bytes=50-10"):  # unparseable: refused, not ignored
        assert app_client.get(artifact_url, headers={**auth(), "Range": header}).status_code == 400, header


def test_artifact_multiple_ranges(app_client: TestClient, artifact_url: str) -> None:
    response = app_client.get(artifact_url, headers={**auth(), "Range": "bytes=0-9, 5000-5099, -5"})
    assert response.status_code == 206
    kind, _, boundary = response.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges" and int(response.headers["content-length"]) == len(response.content)
    parts = response.content.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--"
    spans = [(0, 9), (5000, 5099), (len(BLOB) - 5, len(BLOB) - 1)]
    for part, (start, end) in zip(parts[1:-1], spans, strict=True):
        head, _, body = part.partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {start}-{end}/{len(BLOB)}".encode() in head
        assert body == BLOB[start : end + 1] + b"\r\n"


def test_artifact_if_range(app_client: TestClient, artifact_url: str) -> None:
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    same = app_client.get(artifact_url, headers={**auth(), "Range": "bytes=10-19", "If-Range": etag})
    assert same.status_code == 206 and same.content == BLOB[10:20]
    for stale in ('"0000"', f"W/{etag}"):  # another version, or a weak tag: the whole file instead
        changed = app_client.get(artifact_url, headers={**auth(), "Range": "bytes=10-19", "If-Range": stale})
        assert changed.status_code == 200 and changed.content == BLOB


def _finished(store: Store, job_id: str, seconds: float) -> None:
    now = time.time()
    store.create_job(
        JobRow(
            id=job_id,
            owner="o",
            status="failed",
            request={},
            resolved={},
            request_hash="h",
            metadata_={},
            created_at=now,
            started_at=now - seconds,
            finished_at=now,
            progress={},
            attempts=1,
            computing=False,
        )
    )


def _sample(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics(app_client: TestClient) -> None:
    store = app_client.app.state.store  # type: ignore[attr-defined]
    _finished(store, "job_old", 3.0)
    app_client.get("/v1/jobs/job_nope", headers=auth())
    app_client.get("/no/such/path")
    first = app_client.get("/metrics", headers=auth(ADMIN))  # admins only, unless public_metrics
    assert first.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = first.text
    assert 'fwdprune_jobs{status="failed"} 1.0' in text and "fwdprune_queue_depth 0.0" in text
    assert "fwdprune_workers 0.0" in text and "fwdprune_worker_slots 0.0" in text
    assert "# TYPE fwdprune_gpu_memory_used_bytes gauge" in text
    assert _sample(text, "fwdprune_job_duration_seconds_count") == 1  # the history, observed once
    assert _sample(text, 'fwdprune_job_duration_seconds_bucket{le="5.0"}') == 1
    # requests are labelled by route template, never by raw path
    assert 'route="/v1/jobs/{job_id}",status="404"' in text and "job_nope" not in text
    assert 'fwdprune_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    _finished(store, "job_new", 100.0)
    for _ in range(2):  # a job finished since the last scrape is observed once, however often scraped
        text = app_client.get("/metrics", headers=auth(ADMIN)).text
        assert _sample(text, "fwdprune_job_duration_seconds_count") == 2
        assert _sample(text, "fwdprune_job_duration_seconds_sum") == pytest.approx(103.0, abs=0.01)
    assert 'fwdprune_http_requests_total{method="GET",route="/metrics",status="200"}' in text


def test_size_folders_published(app_client: TestClient, settings: Settings, tmp_path: Path) -> None:
    """A job of several sizes: files in its size folders are listed and served by their path, and the
    checkpoint archive holds them there; a symbolic link inside is never published."""
    job_id = "job_sizes"
    directory = settings.jobs_dir / job_id
    (directory / "sparsity-0.2").mkdir(parents=True)
    (directory / "sparsity-0.2" / "config.json").write_text('{"size": 0.2}')
    (directory / "summary.json").write_text("{}")
    (directory / "sparsity-0.2" / "elsewhere").symlink_to(settings.jobs_dir, target_is_directory=True)
    now = time.time()
    store = app_client.app.state.store  # type: ignore[attr-defined]
    store.create_job(
        JobRow(
            id=job_id,
            owner=hash_key(KEY_A),
            status="succeeded",
            request={},
            resolved={},
            request_hash="h",
            metadata_={},
            created_at=now,
            started_at=now,
            finished_at=now,
            progress={},
            artifacts=describe(directory),
            attempts=1,
            computing=False,
        )
    )
    listed = app_client.get(f"/v1/jobs/{job_id}/artifacts", headers=auth()).json()["data"]
    assert [a["name"] for a in listed] == ["sparsity-0.2/config.json", "summary.json"]
    nested = app_client.get(f"/v1/jobs/{job_id}/artifacts/sparsity-0.2/config.json", headers=auth())
    assert nested.status_code == 200 and nested.content == b'{"size": 0.2}'
    linked = app_client.get(f"/v1/jobs/{job_id}/artifacts/sparsity-0.2/elsewhere", headers=auth())
    assert linked.status_code == 404
    archive = app_client.get(f"/v1/jobs/{job_id}/checkpoint.tar", headers=auth()).content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == [f"{job_id}/sparsity-0.2/config.json", f"{job_id}/summary.json"]
    api = Client("http://testserver")
    api.http = app_client  # type: ignore[assignment]  # the client's requests, served in process
    app_client.headers = auth()
    paths = api.download(job_id, tmp_path / "got")
    assert [p.relative_to(tmp_path / "got").as_posix() for p in paths] == [a["name"] for a in listed]
    assert (tmp_path / "got" / "sparsity-0.2" / "config.json").read_text() == '{"size": 0.2}'
