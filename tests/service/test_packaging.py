"""`pip install fwdprune` is the API, the client and the CLI's client commands, without the engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import REPO

ENGINE = {
    "torch",
    "transformers",
    "bitsandbytes",
    "accelerate",
    "safetensors",
    "tokenizers",
    "numpy",
    "psutil",
    "gguf",
}

# Run in a fresh interpreter: a meta-path finder makes every engine package look uninstalled.
BLOCKED_IMPORTS = """
import importlib.abc, sys

BLOCKED = {"torch", "transformers", "bitsandbytes", "accelerate", "safetensors", "numpy", "psutil"}


class EngineBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: no engine)", name=name)
        return None


sys.meta_path.insert(0, EngineBlocker())
"""

WITHOUT_ENGINE = (
    BLOCKED_IMPORTS
    + """
import contextlib, io, runpy
from fastapi.testclient import TestClient
from service.client import Client
from service.main import create_app
from service.settings import Settings

app = create_app(Settings(data_dir=DATA_DIR, models_dir=MODELS_DIR, insecure_no_auth=True))
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    f = client.post("/v1/files", files={"file": ("c.jsonl", open(CALIBRATION, "rb").read())}).json()
    job = client.post("/v1/jobs", json={"model": "tiny-llama", "calibration_file": f["id"], "sparsity": 0.3})
    assert job.status_code == 201, job.text
Client("http://127.0.0.1:9").close()

sys.argv = ["fwdprune", "submit", "--help"]
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    runpy.run_module("service.cli", run_name="__main__", alter_sys=True)
assert "--model" in out.getvalue() and "--data" in out.getvalue(), out.getvalue()
import service.cli
argv = ["submit", "--model", "m", "--data", "d.jsonl", "--sparsity", "0.3"]
args = service.cli.build_parser().parse_args(argv)
assert args.command == "submit" and args.model == "m"
loaded = sorted(name for name in sys.modules if name.partition(".")[0] in BLOCKED)
assert not loaded, loaded
"""
)


def _python(script: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_api_client_and_cli_without_engine(models_dir: Path, calibration: Path, tmp_path: Path) -> None:
    script = (
        WITHOUT_ENGINE.replace("DATA_DIR", repr(str(tmp_path / "data")))
        .replace("MODELS_DIR", repr(str(models_dir)))
        .replace("CALIBRATION", repr(str(calibration)))
    )
    result = _python(script, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_blocker_blocks() -> None:
    """The finder above really makes the engine unimportable (else the test before proves nothing)."""
    script = BLOCKED_IMPORTS + "import torch\n"
    result = _python(script, timeout=60)
    assert result.returncode == 1 and "blocked: no engine" in result.stderr


def _names(requirements: list[str]) -> set[str]:
    """Normalized distribution names of PEP 508 requirements; `fwdprune[...]` keeps its extras."""
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9._-]+(\[[a-z,]+\])?", requirement)
        assert match is not None, requirement
        names.add(re.sub(r"[-_.]+", "-", match.group()).lower())
    return names


def test_core_dependencies_leave_out_the_engine() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core, extras = _names(project["dependencies"]), project["optional-dependencies"]
    assert not core & ENGINE, core & ENGINE
    assert {"fastapi", "uvicorn", "httpx", "prometheus-client", "huggingface-hub"} <= core
    assert _names(extras["engine"]) == ENGINE
    assert _names(extras["worker"]) == {"fwdprune[engine]", "nvidia-ml-py"}
    test = _names(extras["test"])
    assert any(name.startswith("fwdprune[") and "engine" in name or "worker" in name for name in test), test
