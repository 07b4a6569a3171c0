"""API behaviour in-process (TestClient): auth, ownership, and validation before any job runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings, SettingsError
from tests.service.conftest import ADMIN, KEY_A, KEY_B, QUICK, REPO


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A, KEY_B],
                    admin_keys=[ADMIN], max_upload_bytes=50_000, device="cpu")


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def put_file(client: TestClient, name: str, content: bytes, key: str = KEY_A) -> object:
    return client.post("/v1/files", files={"file": (name, content)}, headers=auth(key))


def test_keys_required(app_client: TestClient) -> None:
    assert app_client.get("/v1/jobs").status_code == 401
    assert app_client.get("/v1/jobs", headers=auth("not-a-key-at-all-xxxxx")).status_code == 401
    assert app_client.get("/v1/files", headers={"Authorization": f"Basic {KEY_A}"}).status_code == 401
    assert app_client.get("/v1/jobs", headers=auth()).status_code == 200
    assert app_client.get("/healthz").status_code == 200
    assert app_client.get("/readyz").status_code == 503  # no worker heartbeat in this process


def test_server_refuses_to_start_without_keys(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no API key"):
        create_app(Settings(data_dir=tmp_path))
    with pytest.raises(SettingsError, match="16 characters"):
        create_app(Settings(data_dir=tmp_path, api_keys=["short"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")}
    result = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
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


@pytest.mark.parametrize(("name", "content", "status", "needle"), [
    ("big.txt", b"x" * 60_000, 413, "limit"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": oops}\n', 422, "line 2 is not valid JSON"),
    ("bad.jsonl", b'{"text": "ok"}\n["a list"]\n', 422, "line 2 must be a JSON object"),
    ("bad.jsonl", b'{"body": "no text field"}\n', 422, "`text`"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), 422, "UTF-8"),
    ("empty.txt", b"\n \n", 422, "no text"),
    ("data.csv", b"a,b\n", 422, "unsupported file type"),
])
def test_upload_validation(app_client: TestClient, name: str, content: bytes, status: int, needle: str) -> None:
    response = put_file(app_client, name, content)
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    assert needle in response.text  # type: ignore[attr-defined]


def test_upload_keeps_only_the_base_name(app_client: TestClient, settings: Settings) -> None:
    created = put_file(app_client, "../../evil.txt", b"text\n").json()  # type: ignore[attr-defined]
    assert created["filename"] == "evil.txt"
    assert [p.parent for p in settings.files_dir.rglob("*")] == [settings.files_dir]


def _job_body(file_id: str, **extra: object) -> dict[str, object]:
    return {"model": "tiny-llama", "calibration_file": file_id, "target_sparsity": 0.3, **QUICK, **extra}


@pytest.fixture
def file_id(app_client: TestClient, calibration: Path) -> str:
    return str(put_file(app_client, "calib.jsonl", calibration.read_bytes()).json()["id"])  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "loc", "needle"), [
    ({"model": "../tiny-llama"}, "model", "no absolute paths"),
    ({"model": "/etc"}, "model", "no absolute paths"),
    ({"model": "tiny-llama/../../x"}, "model", "no absolute paths"),
    ({"model": "~root"}, "model", "no absolute paths"),
    ({"model": "no-such-model"}, "model", "neither"),
    ({"model": "nobody/not-cached"}, "model", "neither"),
    ({"model": "tiny-gpt2"}, "model", "supported model types"),
    ({"target_sparsity": 0.95}, "target_sparsity", "less than or equal"),
    ({"target_sparsity": 0}, "target_sparsity", "greater than"),
    ({"method": "magic"}, "method", "bonsai"),
    ({"options": {"rounds": 0}}, "options", "rounds"),
    ({"options": {"no_such_option": 1}}, "options", "no_such_option"),
    ({"calibration_file": "file_missing"}, "calibration_file", "does not exist"),
    ({"eval_file": "file_missing"}, "eval_file", "does not exist"),
    ({"surprise": 1}, "surprise", "Extra inputs"),
])
def test_submit_validation(app_client: TestClient, file_id: str, extra: dict[str, object], loc: str,
                           needle: str) -> None:
    response = app_client.post("/v1/jobs", json=_job_body(file_id, **extra), headers=auth())
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert loc in detail["loc"] and needle in json.dumps(detail), detail


def test_symlink_escape_refused(app_client: TestClient, file_id: str, tmp_path: Path, models_dir: Path) -> None:
    outside = tmp_path / "outside" / "model"
    outside.mkdir(parents=True)
    (outside / "config.json").write_text(json.dumps({"model_type": "llama"}))
    link = models_dir / "escape-link"
    link.symlink_to(outside.parent, target_is_directory=True)
    try:
        response = app_client.post("/v1/jobs", json=_job_body(file_id, model="escape-link/model"), headers=auth())
        assert response.status_code == 422 and "symlink" in response.text
    finally:
        link.unlink()


def test_malformed_json_and_foreign_files(app_client: TestClient, file_id: str) -> None:
    response = app_client.post("/v1/jobs", content=b"{not json", headers={**auth(), "content-type": "application/json"})
    assert response.status_code == 422
    response = app_client.post("/v1/jobs", json=_job_body(file_id), headers=auth(KEY_B))
    assert response.status_code == 422 and "does not exist" in response.text


def test_submit_get_cancel_delete(app_client: TestClient, file_id: str) -> None:
    job = app_client.post("/v1/jobs", json=_job_body(file_id), headers=auth())
    assert job.status_code == 201
    job_id = job.json()["id"]
    assert app_client.get(f"/v1/jobs/{job_id}", headers=auth(KEY_B)).status_code == 404
    assert app_client.delete(f"/v1/files/{file_id}", headers=auth()).status_code == 409  # a queued job reads it
    assert app_client.post(f"/v1/jobs/{job_id}/cancel", headers=auth()).json()["status"] == "cancelled"
    assert app_client.get(f"/v1/jobs/{job_id}/checkpoint.tar", headers=auth()).status_code == 404
    assert app_client.delete(f"/v1/jobs/{job_id}", headers=auth()).status_code == 204


def test_api_process_imports_no_torch(models_dir: Path, calibration: Path, tmp_path: Path) -> None:
    script = f"""
import sys
from fastapi.testclient import TestClient
from service.main import create_app
from service.settings import Settings
import service.cli
service.cli.build_parser()
app = create_app(Settings(data_dir={str(tmp_path)!r}, models_dir={str(models_dir)!r}, insecure_no_auth=True))
with TestClient(app) as client:
    f = client.post("/v1/files", files={{"file": ("c.jsonl", open({str(calibration)!r}, "rb").read())}}).json()
    r = client.post("/v1/jobs", json={{"model": "tiny-llama", "calibration_file": f["id"], "target_sparsity": 0.3}})
    assert r.status_code == 201, r.text
    assert client.post("/v1/jobs", json={{"model": "nobody/x", "calibration_file": f["id"],
                                          "target_sparsity": 0.3}}).status_code == 422
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
assert not heavy, heavy
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
