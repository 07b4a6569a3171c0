"""Fixtures for the service tests: tiny real checkpoints, and a real server in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.tiny import make_tiny_causal_lm, write_calibration_jsonl

REPO = Path(__file__).resolve().parents[2]
KEY_A = "key-alice-0123456789abcdef"
KEY_B = "key-bob-0123456789abcdefgh"
ADMIN = "key-admin-0123456789abcdef"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# a job that ends in seconds, and one that scores for twelve rounds of the most sub-models the service
# takes a round: long enough on a fast idle CPU for a list refreshed every 2 s to see it scoring, and to be
# cancelled or interrupted while it scores
QUICK: dict[str, Any] = {
    "seq_len": 32,
    "num_samples": 4,
    "eval_samples": 2,
    "precision": "fp32",
    "options": {"rounds": 1, "samples_per_round": 8, "masks_per_forward": 8, "scoring_sequences": 2},
}
LONG = {**QUICK, "options": {**QUICK["options"], "rounds": 12, "samples_per_round": 4096}}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_tiny_causal_lm(root / "tiny-llama")
    unsupported = root / "tiny-gpt2"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    return root


@pytest.fixture(scope="session")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_calibration_jsonl(tmp_path_factory.mktemp("data") / "calib.jsonl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def queue_job(
    store: Any, job_id: str = "job_1", *, gpus: int = 0, min_gib: float | None = None, owner: str = "alice"
) -> str:
    """A queued job straight in the store (no API in between), asking for `gpus` of `min_gib` each."""
    from service.store.tables import JobRow

    store.create_job(
        JobRow(
            id=job_id,
            owner=owner,
            status="queued",
            request={},
            resolved={},
            request_hash="h",
            metadata_={},
            created_at=time.time(),
            progress={},
            attempts=0,
            computing=False,
            gpus=gpus,
            min_gpu_memory_bytes=None if min_gib is None else int(min_gib * (1 << 30)),
        )
    )
    return job_id


class Server:
    """`fwdprune serve` with its embedded worker, as a user would run it."""

    log_level = "warning"  # the server's; "info" logs every request's line too

    def __init__(self, data_dir: Path, models_dir: Path, **env: str) -> None:
        self.data_dir, self.models_dir = data_dir, models_dir
        self.env = {
            "FWDPRUNE_API_KEYS": f"{KEY_A},{KEY_B}",
            "FWDPRUNE_ADMIN_KEYS": ADMIN,
            "FWDPRUNE_DEVICE": "cpu",
            "FWDPRUNE_HEARTBEAT_INTERVAL_S": "0.5",
            "FWDPRUNE_HEARTBEAT_TIMEOUT_S": "5",
            "FWDPRUNE_CANCEL_GRACE_S": "3",
            "FWDPRUNE_POLL_INTERVAL_S": "0.2",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.data_dir / 'fwdprune.db').resolve()}"

    def start(self) -> Server:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")} | self.env
        self.log = (self.data_dir.parent / f"server-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--models-dir",
                str(self.models_dir),
                "--log-level",
                self.log_level,
            ],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.read_log()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready: {self.read_log()}")

    def read_log(self) -> str:
        return (self.data_dir.parent / f"server-{self.port}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def client(self, key: str = KEY_A) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server") / "data", models_dir).start()
    yield srv
    srv.stop()


def upload(client: httpx.Client, path: Path) -> str:
    response = client.post("/v1/files", files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def submit(
    client: httpx.Client, file_id: str, budget: dict[str, Any] = QUICK, **extra: Any
) -> dict[str, Any]:
    body = {"model": "tiny-llama", "calibration_file": file_id, "sparsity": 0.3, **budget, **extra}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def wait_for(
    client: httpx.Client, job_id: str, statuses: tuple[str, ...], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return dict(job)
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} never reached {statuses}: {job}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    import psycopg

    try:
        conn = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3, autocommit=True
        )
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 does not answer ({err}); SQLite half still runs")
    schema = "t_" + uuid.uuid4().hex[:12]
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


class S3Server:
    """moto's standalone S3 server on loopback: a real process speaking the S3 protocol over HTTP."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.port, self.proc = port, proc
        self.env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "fwdprune-test-key",
            "AWS_SECRET_ACCESS_KEY": "fwdprune-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no credential lookups off this machine
        }

    def client(self) -> Any:
        import boto3

        return boto3.client("s3")

    def new_bucket(self) -> str:
        name = "fwdprune-" + uuid.uuid4().hex[:12]
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server for the session, its endpoint and credentials in this process's AWS_* variables (so
    boto3 here, and every server and job process started from here, find it as they would a real one)."""
    try:
        import moto.server  # noqa: F401
    except ImportError as err:
        pytest.skip(f"the object-storage tests need moto's S3 server (pip install 'moto[server]'): {err}")
    port = free_port()
    log = (tmp_path_factory.mktemp("s3") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = S3Server(port, proc)
    try:
        _wait_listening(server)
        with pytest.MonkeyPatch.context() as env:
            for name, value in server.env.items():
                env.setenv(name, value)
            yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _wait_listening(server: S3Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, "moto's S3 server exited at start"
        try:
            httpx.get(f"http://127.0.0.1:{server.port}/", timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("moto's S3 server never answered")
