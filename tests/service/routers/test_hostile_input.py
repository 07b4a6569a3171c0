"""Requests a hostile or careless caller sends: each is a 4xx that names the field or the reason, with a
JSON body, and nothing in a message tells the caller where the server keeps its files."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from fastapi.testclient import TestClient

from service.errors import redact_paths
from service.main import create_app
from service.settings import Settings, hash_key
from service.store import FileGone, Store
from service.store.tables import FileRow, JobRow
from tests.hostile import assert_no_foreign_code, foreign_code_model, hostile_index_model, sha256, victim_file
from tests.service.conftest import KEY_A, QUICK, Server, upload, wait_for
from tests.service.conftest import submit as submit_job
from tests.tiny import make_tiny_causal_lm


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], device="cpu")
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def submit(client: TestClient, body: str) -> tuple[int, object]:
    response = client.post(
        "/v1/jobs",
        content=body,
        headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
    )
    return response.status_code, response.json()  # a body that is not JSON fails here


BASE = '"model": "tiny-llama", "calibration_file": "file_x"'


@pytest.mark.parametrize(
    ("fields", "location", "echoed"),
    [
        ('"sparsity": NaN', ["body", "sparsity"], "nan"),
        ('"sparsity": Infinity', ["body", "sparsity"], "inf"),
        ('"sparsity": -Infinity', ["body", "sparsity"], "-inf"),
        ('"sparsity": 0.2, "compensation_ridge": 1e999', ["body", "compensation_ridge"], "inf"),
    ],
)
def test_non_finite_numbers_are_a_422_naming_the_field(
    client: TestClient, fields: str, location: list[str], echoed: str
) -> None:
    code, body = submit(client, "{" + BASE + ", " + fields + "}")
    assert code == 422
    assert isinstance(body, dict)
    # the first error names the field (a union's member may follow its name) and echoes the input
    error = body["detail"][0]
    assert error["loc"][:2] == location and error["type"] == "finite_number" and error["input"] == echoed


def test_a_non_finite_method_option_or_metadata_value_is_refused_at_submit(client: TestClient) -> None:
    code, body = submit(client, "{" + BASE + ', "sparsity": 0.2, "options": {"ridge": Infinity}}')
    assert code == 422 and isinstance(body, dict)
    assert body["detail"][0]["loc"] == ["body", "options"]
    assert "ridge" in body["detail"][0]["msg"] and "finite" in body["detail"][0]["msg"]
    code, body = submit(client, "{" + BASE + ', "sparsity": 0.2, "metadata": {"run": NaN}}')
    assert code == 422 and isinstance(body, dict)
    assert {tuple(error["loc"][:3]) for error in body["detail"]} == {("body", "metadata", "run")}


def test_failure_messages_and_events_carry_no_server_paths(client: TestClient) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    leaked = "FileNotFoundError: No such file or directory: '/srv/fwdprune/data/files/file_abc.jsonl'"
    row = JobRow(
        id="job_paths",
        owner=hash_key(KEY_A),
        status="queued",
        request={"model": "tiny-llama", "calibration_file": "file_abc", "sparsity": 0.2},
        resolved={},
        request_hash="x",
        metadata_={},
        created_at=time.time(),
        progress={},
        attempts=0,
        computing=False,
    )
    store.create_job(row)
    assert store.claim_job("wrk_test") is not None
    store.record_event(row.id, {"type": "warning", "message": "could not read /srv/fwdprune/models/m/x.json"})
    store.finish_job(row.id, "failed", error_code="data_error", error_message=leaked)
    headers = {"Authorization": f"Bearer {KEY_A}"}
    job = client.get(f"/v1/jobs/{row.id}", headers=headers).json()
    assert job["error"]["message"] == "FileNotFoundError: No such file or directory: 'file_abc.jsonl'"
    events = client.get(f"/v1/jobs/{row.id}/events", headers=headers).json()["data"]
    text = str([event["data"] for event in events])
    assert "/srv" not in text and "x.json" in text and "file_abc.jsonl" in text


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("open '/var/lib/fwdprune/jobs/.tmp-job_1/out/model.safetensors'", "open 'model.safetensors'"),
        ('File "/usr/lib/python3.11/json/decoder.py", line 3', 'File "decoder.py", line 3'),
        ("see https://example.org/a/b", "see https://example.org/a/b"),  # a URL is not a server path
        ("a 1/2 ratio and ./relative/path", "a 1/2 ratio and ./relative/path"),
        (None, None),
    ],
)
def test_redact_paths(message: str | None, expected: str | None) -> None:
    assert redact_paths(message) == expected


def _file(store: Store, file_id: str) -> None:
    store.add_file(
        FileRow(
            id=file_id,
            owner="o",
            filename="c.jsonl",
            bytes=1,
            sha256="0" * 64,
            path=f"/data/{file_id}",
            created_at=time.time(),
        )
    )


def _job(job_id: str, file_id: str) -> JobRow:
    return JobRow(
        id=job_id,
        owner="o",
        status="queued",
        request={"calibration_file": file_id},
        resolved={},
        request_hash="h",
        metadata_={},
        created_at=time.time(),
        progress={},
        attempts=0,
        computing=False,
    )


def _race(store: Store, file_id: str, job_id: str) -> dict[str, bool]:
    """Submit a job naming `file_id` and delete that file, in two threads released together."""
    start = threading.Barrier(2)
    outcome: dict[str, bool] = {}

    def submit() -> None:
        start.wait(timeout=10)
        try:
            outcome["job"] = store.create_job(_job(job_id, file_id), [file_id])[1]
        except FileGone:
            outcome["job"] = False

    def remove() -> None:
        start.wait(timeout=10)
        outcome["deleted"] = store.delete_file(file_id)

    threads = [threading.Thread(target=submit), threading.Thread(target=remove)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcome


def test_a_submit_racing_the_delete_of_its_file_never_leaves_a_job_without_its_file(db_url: str) -> None:
    store = Store(db_url)
    try:
        # in order: a job after the delete is refused; a delete after the job is refused
        _file(store, "file_a")
        assert store.delete_file("file_a")
        with pytest.raises(FileGone):
            store.create_job(_job("job_a", "file_a"), ["file_a"])
        assert store.get_job("job_a") is None
        _file(store, "file_b")
        store.create_job(_job("job_b", "file_b"), ["file_b"])
        assert not store.delete_file("file_b") and store.get_file("file_b", None) is not None
        # at once, 25 times: whichever wins, no job is left naming a deleted file
        for attempt in range(25):
            file_id, job_id = f"file_r{attempt}", f"job_r{attempt}"
            _file(store, file_id)
            outcome = _race(store, file_id, job_id)
            assert outcome["job"] != outcome["deleted"], outcome  # exactly one of the two won
            assert (store.get_job(job_id) is not None) == (store.get_file(file_id, None) is not None)
    finally:
        store.close()


# -- a model folder is input too: its config.json may be anything -----------------------------------

DEEP = 200_000  # past any recursion limit
MALFORMED_CONFIGS: dict[str, bytes] = {
    "a-list": b"[1, 2]",
    "a-string": b'"llama"',
    "null": b"null",
    "a-number": b"7",
    "empty": b"",
    "not-json": b'{"model_type": "llama",',
    "not-utf8": b'{"model_type": "\xff"}',
    "type-a-list": b'{"model_type": ["llama"]}',
    "type-an-object": b'{"model_type": {"llama": 1}}',
    "type-null": b'{"model_type": null}',
    "type-a-long-string": b'{"model_type": "' + b"x" * 100_000 + b'"}',
    "deep-lists": b'{"model_type": "llama", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
    "deep-objects": b'{"a": ' * DEEP + b"1" + b"}" * DEEP,
    "huge-integer": b'{"model_type": "llama", "hidden_size": ' + b"9" * 10_000 + b"}",
}


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-models")
    for name, content in MALFORMED_CONFIGS.items():
        (root / name).mkdir()
        (root / name / "config.json").write_bytes(content)
    (root / "config-a-folder" / "config.json").mkdir(parents=True)
    return root


@pytest.fixture
def hostile_client(tmp_path: Path, hostile_models: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=hostile_models, api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("model", [*sorted(MALFORMED_CONFIGS), "config-a-folder"])
def test_a_malformed_config_is_a_422_naming_the_model(
    hostile_client: TestClient, hostile_models: Path, model: str
) -> None:
    code, body = submit(
        hostile_client, json.dumps({"model": model, "calibration_file": "f", "sparsity": 0.2})
    )
    assert code == 422, body
    assert isinstance(body, dict)
    (error,) = body["detail"]
    assert error["loc"] == ["body", "model"] and error["type"] == "unsupported_model", error
    assert "config.json" in error["msg"] or "model_type" in error["msg"]
    assert "\n" not in error["msg"] and len(error["msg"]) < 400 and str(hostile_models) not in error["msg"]


class HostileCheckpoints(NamedTuple):
    server: Server
    victim: Path
    victim_sha256: str
    foreign: Path


@pytest.fixture(scope="module")
def hostile_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileCheckpoints]:
    """A server whose models dir holds a model whose shard index names a file outside it (another
    model's shard, by absolute path) and a model shipping code of its own."""
    root = tmp_path_factory.mktemp("hostile")
    victim = victim_file(root / "elsewhere", make_tiny_causal_lm(root / "like", max_shard_size="10MB"))
    hostile_index_model(root / "models" / "evil-index", str(victim))
    foreign = foreign_code_model(root / "models" / "foreign-code")
    (root / "server").mkdir()
    old = os.umask(0o022)  # the server, its worker and its jobs inherit it
    try:
        server = Server(root / "server" / "data", root / "models").start()
    finally:
        os.umask(old)
    yield HostileCheckpoints(server, victim, sha256(victim), foreign)
    server.stop()


def test_a_shard_index_naming_a_file_outside_the_model_is_refused_at_submit_and_touches_nothing(
    hostile_checkpoints: HostileCheckpoints, calibration: Path
) -> None:
    """The weights' headers are read at submit (torch-free), the index's shard names checked first: the
    request is a 422 naming the model, no job is made, and the file the index names is untouched."""
    with hostile_checkpoints.server.client() as client:
        file_id = upload(client, calibration)
        body = {"model": "evil-index", "calibration_file": file_id, "sparsity": 0.3, **QUICK}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        message = json.dumps(response.json())
        assert "model.safetensors.index.json names" in message and "not a plain .safetensors file" in message
        assert str(hostile_checkpoints.victim.parent) not in message  # no server path
        assert client.get("/v1/jobs").json()["data"] == []
    assert sha256(hostile_checkpoints.victim) == hostile_checkpoints.victim_sha256


def test_a_models_own_code_never_reaches_the_published_checkpoint(
    hostile_checkpoints: HostileCheckpoints, calibration: Path, tmp_path: Path
) -> None:
    server = hostile_checkpoints.server
    with server.client() as client:
        job = submit_job(client, upload(client, calibration), model="foreign-code", uniform=True)
        done = wait_for(client, job["id"], ("succeeded", "failed", "cancelled"))
        assert done["status"] == "succeeded", done
        artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        names = {artifact["name"] for artifact in artifacts}
        assert not {name for name in names if name.endswith(".py")}, names
        download = tmp_path / "checkpoint"
        download.mkdir()
        for name in names:
            (download / name).write_bytes(client.get(f"/v1/jobs/{job['id']}/artifacts/{name}").content)
    assert_no_foreign_code(download, hostile_checkpoints.foreign)
    published = server.data_dir / "jobs" / job["id"]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in published.iterdir() if p.is_file()}
    assert any(name.endswith(".safetensors") for name in modes) and set(modes) >= names
    assert modes == dict.fromkeys(modes, 0o644)


def test_a_recovery_file_without_a_recovery_is_refused(client: TestClient) -> None:
    body = {"model": "tiny-llama", "calibration_file": "file_x", "sparsity": 0.2, "recovery_file": "file_r"}
    code, detail = submit(client, json.dumps(body))
    assert code == 422 and isinstance(detail, dict)
    (error,) = detail["detail"]
    assert error["loc"] == ["body", "recovery_file"] and "recover is none" in error["msg"], error
    code, detail = submit(client, json.dumps({**body, "recover": "distill"}))  # asked for: read
    assert code == 422 and isinstance(detail, dict)
    assert [error["loc"] for error in detail["detail"]] == [["body", "calibration_file"]]


@pytest.fixture
def idle_client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    """The API alone: no worker takes its jobs."""
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=models_dir, api_keys=[KEY_A], embedded_worker=False
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def test_a_replayed_submit_gets_its_job_even_once_its_file_is_deleted(
    idle_client: TestClient, calibration: Path
) -> None:
    auth = {"Authorization": f"Bearer {KEY_A}"}
    uploaded = idle_client.post(
        "/v1/files", files={"file": ("c.jsonl", calibration.read_bytes())}, headers=auth
    )
    body = {"model": "tiny-llama", "calibration_file": uploaded.json()["id"], "sparsity": 0.2}
    keyed = {**auth, "Idempotency-Key": "submit-1"}
    first = idle_client.post("/v1/jobs", json=body, headers=keyed)
    assert first.status_code == 201, first.text
    job_id = first.json()["id"]
    assert idle_client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).json()["status"] == "cancelled"
    assert idle_client.delete(f"/v1/files/{body['calibration_file']}", headers=auth).status_code == 204
    again = idle_client.post("/v1/jobs", json=body, headers=keyed)
    assert again.status_code == 200 and again.json()["id"] == job_id, again.text
    other = idle_client.post("/v1/jobs", json={**body, "sparsity": 0.3}, headers=keyed)
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_a_recovery_file_deleted_while_its_job_is_created_is_refused(
    idle_client: TestClient, calibration: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = {"Authorization": f"Bearer {KEY_A}"}
    files = [
        idle_client.post("/v1/files", files={"file": ("c.jsonl", calibration.read_bytes())}, headers=auth)
        for _ in range(2)
    ]
    calibration_id, recovery_id = (str(file.json()["id"]) for file in files)
    store = idle_client.app.state.store  # type: ignore[attr-defined]
    looked_up = store.get_file

    def deleted_once_looked_up(file_id: str, owner: str | None) -> FileRow | None:
        row = looked_up(file_id, owner)
        if file_id == recovery_id:  # the delete comes between the submit's checks and its insert
            assert store.delete_file(file_id)
        return row  # type: ignore[no-any-return]

    monkeypatch.setattr(store, "get_file", deleted_once_looked_up)
    body = {"model": "tiny-llama", "calibration_file": calibration_id, "sparsity": 0.2}
    response = idle_client.post(
        "/v1/jobs", json={**body, "recover": "distill", "recovery_file": recovery_id}, headers=auth
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "recovery_file"] and "was deleted" in error["msg"], error
    assert idle_client.get("/v1/jobs", headers=auth).json()["data"] == []
