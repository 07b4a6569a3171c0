"""Models resolved where the job runs: the worker looks in its models dir, then in its Hugging Face cache
at the job's revision, and a job whose model it cannot find or prune fails with a clear code. With
`check_models_on_submit` off (a cluster, where the API's host holds no models) the API checks names only."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from huggingface_hub.file_download import repo_folder_name

from pruning.errors import ModelNotFoundError, UnsupportedModelError
from service.main import create_app
from service.modelref import resolve_checkpoint
from service.settings import Settings
from tests.service.conftest import KEY_A, QUICK, Server, upload, wait_for

MAIN_COMMIT = "a" * 40
V2_COMMIT = "b" * 40


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A Hugging Face hub cache holding `org/tiny` at two revisions: `main` is a model family the engine
    does not support, tag `v2` the tiny Llama."""
    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / repo_folder_name(repo_id="org/tiny", repo_type="model")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(MAIN_COMMIT)
    (repo / "refs" / "v2").write_text(V2_COMMIT)
    unsupported = repo / "snapshots" / MAIN_COMMIT
    unsupported.mkdir(parents=True)
    (unsupported / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    shutil.copytree(models_dir / "tiny-llama", repo / "snapshots" / V2_COMMIT)
    return cache


def test_models_dir_comes_first(models_dir: Path, hf_cache: Path) -> None:
    found = resolve_checkpoint("tiny-llama", None, models_dir, hf_cache)
    assert found == (models_dir / "tiny-llama").resolve()


def test_hub_cache_at_a_revision(models_dir: Path, hf_cache: Path) -> None:
    snapshots = hf_cache / repo_folder_name(repo_id="org/tiny", repo_type="model") / "snapshots"
    assert resolve_checkpoint("org/tiny", "v2", models_dir, hf_cache) == snapshots / V2_COMMIT
    assert resolve_checkpoint("org/tiny", V2_COMMIT, models_dir, hf_cache) == snapshots / V2_COMMIT
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        resolve_checkpoint("org/tiny", None, models_dir, hf_cache)  # main
    with pytest.raises(ModelNotFoundError, match="at revision 'v3'"):
        resolve_checkpoint("org/tiny", "v3", models_dir, hf_cache)
    with pytest.raises(ModelNotFoundError, match="neither"):
        resolve_checkpoint("org/absent", None, models_dir, hf_cache)
    with pytest.raises(ModelNotFoundError, match="no absolute paths"):
        resolve_checkpoint("../tiny-llama", None, models_dir, hf_cache)


@pytest.fixture
def cluster_api(tmp_path: Path, calibration: Path) -> Iterator[tuple[TestClient, str]]:
    """The API alone, as in a cluster: no models on its host, none checked at submit."""
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "no-models",
        api_keys=[KEY_A],
        check_models_on_submit=False,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {KEY_A}"}) as client:
        response = client.post("/v1/files", files={"file": ("c.jsonl", calibration.read_bytes())})
        yield client, response.json()["id"]


def test_api_checks_only_the_names_form_when_told_to(cluster_api: tuple[TestClient, str]) -> None:
    client, file_id = cluster_api
    body = {"calibration_file": file_id, "sparsity": 0.3}
    accepted = client.post("/v1/jobs", json={**body, "model": "org/elsewhere", "revision": "refs/pr/7"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["request"]["revision"] == "refs/pr/7"
    store = client.app.state.store  # type: ignore[attr-defined]
    resolved = store.get_job(accepted.json()["id"]).resolved
    assert (resolved["model"], resolved["revision"]) == ("org/elsewhere", "refs/pr/7")
    for bad in ({"model": "../x"}, {"model": "/etc"}, {"model": "org/m", "revision": "a..b"}):
        refused = client.post("/v1/jobs", json={**body, "model": "org/m", **bad})
        assert refused.status_code == 422, (bad, refused.text)


def test_api_places_the_job_by_its_gpu_request(cluster_api: tuple[TestClient, str]) -> None:
    client, file_id = cluster_api
    body = {"calibration_file": file_id, "sparsity": 0.3, "model": "org/m"}
    job = client.post("/v1/jobs", json={**body, "gpus": 2, "min_gpu_memory_gib": 40}).json()
    store = client.app.state.store  # type: ignore[attr-defined]
    row = store.get_job(job["id"])
    assert (row.gpus, row.min_gpu_memory_bytes) == (2, 40 << 30)
    row = store.get_job(client.post("/v1/jobs", json=body).json()["id"])
    assert (row.gpus, row.min_gpu_memory_bytes) == (0, None)
    assert client.post("/v1/jobs", json={**body, "min_gpu_memory_gib": 0}).status_code == 422


def test_worker_resolves_the_model_through_the_real_server(
    tmp_path: Path, models_dir: Path, hf_cache: Path, calibration: Path
) -> None:
    server = Server(
        tmp_path / "data",
        models_dir,
        FWDPRUNE_CHECK_MODELS_ON_SUBMIT="false",
        FWDPRUNE_HF_CACHE_DIR=str(hf_cache),
    ).start()
    try:
        with server.client() as client:
            file_id = upload(client, calibration)

            def run(model: str, revision: str | None = None) -> dict[str, object]:
                body = {"model": model, "revision": revision, "calibration_file": file_id, "sparsity": 0.3}
                response = client.post("/v1/jobs", json={**body, **QUICK})
                assert response.status_code == 201, response.text  # nothing is resolved at submit
                return wait_for(client, response.json()["id"], ("succeeded", "failed", "cancelled"))

            missing = run("nobody/not-here")
            assert missing["status"] == "failed" and missing["error"]["code"] == "model_not_found"  # type: ignore[index]
            assert "nobody/not-here" in missing["error"]["message"]  # type: ignore[index]
            unsupported = run("org/tiny")  # main
            assert unsupported["error"]["code"] == "unsupported_model"  # type: ignore[index]
            pruned = run("org/tiny", "v2")
            assert pruned["status"] == "succeeded", pruned
            events = client.get(f"/v1/jobs/{pruned['id']}/events").json()["data"]
            placement = next(e["data"] for e in events if e["type"] == "placement")
            assert placement == {"gpu_count": 0}  # a CPU worker; which one is for admins to see
    finally:
        server.stop()
