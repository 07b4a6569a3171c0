"""GET /v1/models: the models dir's entries and the cached Hub ids, each with its family, parameters and
support, as the console and `fwdprune models` show them; every id listed is one a job can name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.service.conftest import KEY_A, QUICK, REPO, Server

MAIN_COMMIT = "a" * 40
DETACHED_COMMIT = "b" * 40


def cache_snapshot(cache: Path, repo_id: str, commit: str, model: Path, ref: str | None) -> None:
    """`model` as the Hugging Face cache holds a download: blobs, a snapshot of symlinks, a ref."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(model.iterdir()):
        blob = repo / "blobs" / f"{commit[:8]}-{file.name}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    if ref is not None:
        (repo / "refs").mkdir()
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    cache = tmp_path_factory.mktemp("hf-cache")
    cache_snapshot(cache, "acme/tiny-llama", MAIN_COMMIT, models_dir / "tiny-llama", "main")
    cache_snapshot(cache, "acme/detached", DETACHED_COMMIT, models_dir / "tiny-llama", None)
    return cache


@pytest.fixture
def client(tmp_path: Path, models_dir: Path, hf_cache: Path) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / "data", models_dir=models_dir, hf_cache_dir=hf_cache, api_keys=[KEY_A]
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {KEY_A}"}) as test_client:
        yield test_client


def tiny_llama_parameters(models_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models_dir / "tiny-llama")
    return sum(parameter.numel() for parameter in model.parameters())


def test_lists_the_models_dir_and_the_hub_cache(client: TestClient, models_dir: Path) -> None:
    listed = {model["id"]: model for model in client.get("/v1/models").json()["data"]}
    assert list(listed) == ["tiny-gpt2", "tiny-llama", "acme/detached", "acme/tiny-llama"]
    parameters = tiny_llama_parameters(models_dir)
    assert listed["tiny-llama"] == {
        "id": "tiny-llama",
        "source": "models_dir",
        "revision": None,
        "model_type": "llama",
        "family": "llama",
        "parameters": parameters,
        "supported": True,
        "reason": None,
    }
    assert listed["acme/tiny-llama"]["source"] == "hub_cache"
    assert listed["acme/tiny-llama"]["revision"] is None  # main is cached: a job names no revision
    assert listed["acme/detached"]["revision"] == DETACHED_COMMIT  # only a commit: the job names it
    assert listed["acme/tiny-llama"]["parameters"] == parameters and listed["acme/detached"]["supported"]
    unsupported = listed["tiny-gpt2"]
    assert unsupported["supported"] is False and unsupported["family"] is None
    assert unsupported["model_type"] == "gpt2" and "gpt2" in unsupported["reason"]


def test_a_config_the_weights_contradict_is_listed_unsupported(tmp_path: Path, models_dir: Path) -> None:
    broken = tmp_path / "models" / "org" / "too-deep"
    shutil.copytree(models_dir / "tiny-llama", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 9}))
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models", api_keys=[KEY_A])
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {KEY_A}"}) as test_client:
        (model,) = test_client.get("/v1/models").json()["data"]
    assert model["id"] == "org/too-deep" and model["family"] == "llama"
    assert model["supported"] is False and "num_hidden_layers 9" in model["reason"]
    assert str(tmp_path) not in model["reason"]  # no server path in what a key's holder reads


def test_needs_a_key(client: TestClient) -> None:
    assert client.get("/v1/models", headers={"Authorization": ""}).status_code == 401


def test_every_listed_id_is_one_a_job_can_name(client: TestClient, calibration: Path) -> None:
    upload = client.post("/v1/files", files={"file": ("calib.jsonl", calibration.read_bytes())})
    file_id = upload.json()["id"]
    for model in client.get("/v1/models").json()["data"]:
        body = {"model": model["id"], "calibration_file": file_id, "sparsity": 0.3, **QUICK}
        if model["revision"]:
            body["revision"] = model["revision"]
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == (201 if model["supported"] else 422), (model, response.text)


def test_fwdprune_models_prints_the_listing(tmp_path: Path, models_dir: Path, hf_cache: Path) -> None:
    server = Server(tmp_path / "data", models_dir, FWDPRUNE_HF_CACHE_DIR=str(hf_cache)).start()
    try:
        env = {**os.environ, "FWDPRUNE_URL": server.url, "FWDPRUNE_TOKEN": KEY_A}
        command = [sys.executable, "-m", "service.cli", "models"]
        lines = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
        listing = subprocess.run(
            [*command, "--json"], cwd=REPO, env=env, capture_output=True, text=True, check=True
        ).stdout
    finally:
        server.stop()
    parameters = tiny_llama_parameters(models_dir)
    assert f"tiny-llama  llama  {parameters:,} parameters  supported" in lines
    assert f"acme/detached@{DETACHED_COMMIT}  llama" in lines
    assert "tiny-gpt2  gpt2  ? parameters  unsupported: model_type 'gpt2' is not supported" in lines
    assert [model["id"] for model in json.loads(listing)] == [
        "tiny-gpt2",
        "tiny-llama",
        "acme/detached",
        "acme/tiny-llama",
    ]
