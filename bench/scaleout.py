"""Scale-out benchmark: one API, one PostgreSQL database, one S3 server, N worker processes, no shared disk.

    python -m bench.scaleout                       # 1 worker then 4, 40 jobs, a worker killed mid-job
    python -m bench.scaleout --workers 4 --jobs 40 --single-jobs 12

Every process gets its own data directory: the API keeps uploads only until they are in the object store,
and each worker scores in its own scratch directory and publishes to the store. The S3 server is moto's
standalone server on loopback; PostgreSQL is a fresh database on 127.0.0.1:5432, dropped at the end. Jobs
prune a tiny Llama on the CPU. The run checks that every job ran exactly once (one claim each, two for the
job of the killed worker), that every artifact downloads through the API with the checksum it was
published with, and measures throughput (jobs per minute, submit to last finish) against one worker's.

Prints a table and writes bench/results/scaleout-cpu.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
FWDPRUNE = [sys.executable, "-m", "service.cli"]
KEY = "bench-key-0123456789abcdef"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
# a job that ends in seconds on the CPU (the service tests' QUICK job)
JOB: dict[str, Any] = {
    "sparsity": 0.3,
    "seq_len": 32,
    "num_samples": 4,
    "eval_samples": 2,
    "precision": "fp32",
    "options": {"rounds": 1, "samples_per_round": 8, "masks_per_forward": 8, "scoring_sequences": 2},
}
WORKER_ENV = {
    "FWDPRUNE_DEVICE": "cpu",
    "FWDPRUNE_HEARTBEAT_INTERVAL_S": "0.5",
    "FWDPRUNE_HEARTBEAT_TIMEOUT_S": "5",
    "FWDPRUNE_POLL_INTERVAL_S": "0.2",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {timeout_s:g}s")


@contextmanager
def s3_server(bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with `bucket` created; yields the AWS_* environment for it."""
    import boto3

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
    }
    try:
        wait_for(env["AWS_ENDPOINT_URL"])
        os.environ.update(env)
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one run, dropped at the end."""
    import psycopg

    name = f"fwdprune_scaleout_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Cluster:
    """The API and the workers as separate processes, each with its own directory under `root`."""

    def __init__(self, root: Path, env: dict[str, str], models_dir: Path) -> None:
        self.root, self.models_dir = root, models_dir
        self.env = {**os.environ, **env, **WORKER_ENV, "PYTHONPATH": str(REPO)}
        self.port = free_port()
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_api(self) -> None:
        subprocess.run([*FWDPRUNE, "migrate", "--data-dir", str(self.root / "api")], env=self.env, check=True)
        command = [*FWDPRUNE, "serve", "--no-worker", "--port", str(self.port)]
        command += ["--data-dir", str(self.root / "api"), "--models-dir", str(self.models_dir)]
        self.api = self._spawn(command, "api")
        wait_for(self.url + "/healthz")

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            name = f"worker-{len(self.workers)}"
            command = [*FWDPRUNE, "worker", "--slots", "1", "--device", "cpu"]
            command += ["--data-dir", str(self.root / name), "--models-dir", str(self.models_dir)]
            self.workers.append(self._spawn(command, name))

    def _spawn(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, *([self.api] if self.api else [])]:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
        self.workers = []


def submit(client: httpx.Client, file_id: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        body = {"model": "tiny-llama", "calibration_file": file_id, "seed": i, **JOB}
        answer = client.post("/v1/jobs", json=body)
        answer.raise_for_status()
        ids.append(answer.json()["id"])
    return ids


def statuses(client: httpx.Client, ids: list[str]) -> dict[str, str]:
    return {job_id: client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in ids}


def running_worker_pids(database_url: str) -> dict[int, str]:
    """Worker pid -> the job it is computing, read from the store (the API does not show workers)."""
    from service.store import Store

    store = Store(database_url, migrate=False)
    try:
        with store.session() as s:
            from sqlalchemy import select

            from service.store.tables import JobRow, WorkerRow

            rows = s.execute(
                select(WorkerRow.pid, JobRow.id)
                .join(JobRow, JobRow.worker_id == WorkerRow.id)
                .where(JobRow.status == "running", JobRow.computing.is_(True))
            ).all()
        return {int(pid): job_id for pid, job_id in rows}
    finally:
        store.close()


def run_jobs(
    cluster: Cluster, client: httpx.Client, file_id: str, count: int, kill_after: int | None
) -> dict[str, Any]:
    """Submit `count` jobs and wait for all of them; with `kill_after`, kill -9 a worker computing a job
    once that many jobs have succeeded."""
    start = time.monotonic()
    ids = submit(client, file_id, count)
    killed: dict[str, Any] | None = None
    while True:
        current = statuses(client, ids)
        done = [s for s in current.values() if s in ("succeeded", "failed", "cancelled")]
        if len(done) == count:
            break
        succeeded = sum(s == "succeeded" for s in current.values())
        if kill_after is not None and killed is None and succeeded >= kill_after:
            killed = kill_a_worker(cluster)
        time.sleep(0.5)
    wall = time.monotonic() - start
    return {"ids": ids, "wall_s": wall, "statuses": current, "killed": killed}


def kill_a_worker(cluster: Cluster) -> dict[str, Any] | None:
    by_pid = {proc.pid: proc for proc in cluster.workers if proc.poll() is None}
    computing = {pid: job for pid, job in running_worker_pids(cluster.env["FWDPRUNE_DATABASE_URL"]).items()}
    candidates = [pid for pid in computing if pid in by_pid]
    if not candidates:
        return None
    pid = random.Random(0).choice(sorted(candidates))
    os.kill(pid, signal.SIGKILL)
    by_pid[pid].wait()
    print(f"  killed worker pid {pid} while it computed {computing[pid]}", flush=True)
    worker = f"worker-{[proc.pid for proc in cluster.workers].index(pid)}"
    return {"pid": pid, "worker": worker, "job": computing[pid], "at_s": time.monotonic()}


def claims_per_job(client: httpx.Client, job_id: str) -> int:
    """How many times the job was handed to a worker: its `running` status events."""
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    return sum(1 for e in events if e["type"] == "status" and e["data"].get("status") == "running")


def check_artifacts(client: httpx.Client, job_id: str) -> tuple[int, int]:
    """(artifacts, bytes) of a job, each downloaded through the API and checked against its sha256."""
    listed = client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]
    total = 0
    for artifact in listed:
        answer = client.get(f"/v1/jobs/{job_id}/artifacts/{artifact['name']}", follow_redirects=True)
        answer.raise_for_status()
        if hashlib.sha256(answer.content).hexdigest() != artifact["sha256"]:
            raise SystemExit(f"{job_id}/{artifact['name']}: checksum mismatch")
        total += len(answer.content)
    return len(listed), total


def phase(root: Path, env: dict[str, str], workers: int, jobs: int, kill: bool) -> dict[str, Any]:
    from tests.tiny import make_tiny_causal_lm, write_calibration_jsonl

    models_dir = root / "models"
    if not (models_dir / "tiny-llama").is_dir():
        make_tiny_causal_lm(models_dir / "tiny-llama")
    calibration = write_calibration_jsonl(root / "calib.jsonl")
    cpu_before = children_cpu_s()
    cluster = Cluster(root / f"run-{workers}", env, models_dir)
    cluster.root.mkdir()
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        cluster.start_api()
        cluster.start_workers(workers)
        with httpx.Client(base_url=cluster.url, headers=headers, timeout=60) as client:
            with calibration.open("rb") as handle:
                upload = client.post("/v1/files", files={"file": ("calib.jsonl", handle)})
            upload.raise_for_status()
            result = run_jobs(cluster, client, upload.json()["id"], jobs, jobs // 5 if kill else None)
            claims = {job_id: claims_per_job(client, job_id) for job_id in result["ids"]}
            downloads = [check_artifacts(client, job_id) for job_id in result["ids"]]
    finally:
        cluster.stop()
    killed_job = result["killed"]["job"] if result["killed"] else None
    cpu_s = children_cpu_s() - cpu_before
    return {
        # CPU seconds of every process the run started (API, workers, their job processes) per job
        "cpu_s_per_job": cpu_s / jobs,
        "workers": workers,
        "jobs": jobs,
        "wall_s": result["wall_s"],
        "jobs_per_min": 60 * jobs / result["wall_s"],
        "succeeded": sum(s == "succeeded" for s in result["statuses"].values()),
        "claims_other_jobs": sorted({n for j, n in claims.items() if j != killed_job}),
        "claims_killed_job": claims.get(killed_job) if killed_job else None,
        "killed": result["killed"],
        "artifacts_checked": sum(n for n, _ in downloads),
        "artifact_bytes": sum(b for _, b in downloads),
        "artifact_files_on_worker_disks": published_files_on_disk(cluster.root),
    }


def children_cpu_s() -> float:
    """User and system CPU seconds of every child process ended and waited for so far (job processes
    count through the worker that waited for them)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def published_files_on_disk(root: Path) -> dict[str, int]:
    """Checkpoint files left in each process's data directory once the run ended: none in the API's or a
    live worker's (artifacts live in the store); a killed worker's scratch stays until a worker starts
    on that directory again and sweeps it."""
    return {
        directory.name: sum(1 for path in directory.rglob("*.safetensors") if path.is_file())
        for directory in sorted(root.iterdir())
        if directory.is_dir()
    }


def claims(row: dict[str, Any]) -> str:
    """Claims per job: `1` when every job ran once; `1/2` when the killed worker's job ran twice."""
    others = "/".join(str(n) for n in row["claims_other_jobs"])
    return others + (f"/{row['claims_killed_job']}" if row["claims_killed_job"] else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--single-jobs", type=int, default=12, help="jobs of the one-worker run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scaleout-cpu.json")
    args = parser.parse_args()
    bucket = f"fwdprune-bench-{uuid.uuid4().hex[:8]}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp, s3_server(bucket) as aws:
        for workers, jobs, kill in ((1, args.single_jobs, False), (args.workers, args.jobs, True)):
            with pg_database() as database_url:
                env = {
                    **aws,
                    "FWDPRUNE_DATABASE_URL": database_url,
                    "FWDPRUNE_STORAGE_URL": f"s3://{bucket}/run-{workers}",
                    "FWDPRUNE_API_KEYS": KEY,
                    "FWDPRUNE_CHECK_MODELS_ON_SUBMIT": "false",
                }
                rows.append(phase(Path(tmp), env, workers, jobs, kill))
                print(json.dumps(rows[-1], indent=1), flush=True)
    speedup = rows[1]["jobs_per_min"] / rows[0]["jobs_per_min"]
    # what the cores allow: every core busy with the one-worker run's CPU seconds per job
    cores = os.cpu_count() or 1
    core_bound = cores * 60 / rows[0]["cpu_s_per_job"] / rows[0]["jobs_per_min"]
    print(
        f"\n{'workers':>7} {'jobs':>5} {'wall s':>8} {'jobs/min':>9} {'CPU s/job':>9} {'succeeded':>9} "
        f"{'claims':>6} {'artifacts':>9}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['jobs']:>5} {r['wall_s']:>8.1f} {r['jobs_per_min']:>9.2f} "
            f"{r['cpu_s_per_job']:>9.1f} {r['succeeded']:>9} {claims(r):>6} {r['artifacts_checked']:>9}"
        )
    print(
        f"throughput {args.workers} workers / 1 worker: {speedup:.2f}x on {cores} CPU cores "
        f"(the cores allow at most {core_bound:.2f}x at {rows[0]['cpu_s_per_job']:.1f} CPU s per job)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"cpu_count": cores, "rows": rows, "speedup": speedup, "core_bound": core_bound}, indent=2)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
