"""`fwdprune`: serve, worker, and the client commands (plus the engine's `prune` when available).

Nothing here imports torch at import time; only `prune` (engine) and the job runner do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from pruning.cli import add_prune_command
from pruning.cli_options import add_settings_options, settings_given
from pruning.errors import EXIT_USER_ERROR
from pruning.spec import RECOVERY_TEXT_WITHOUT_RECOVERY

SERVE_FLAGS = {
    "host": "HOST",
    "port": "PORT",
    "data_dir": "DATA_DIR",
    "models_dir": "MODELS_DIR",
    "database_url": "DATABASE_URL",
    "slots": "WORKER_SLOTS",
    "device": "DEVICE",
}


def _apply_env(args: argparse.Namespace) -> None:
    """CLI flags become FWDPRUNE_* variables, so settings have one source and child processes inherit it."""
    for attr, name in SERVE_FLAGS.items():
        value = getattr(args, attr, None)
        if value is not None:
            os.environ[f"FWDPRUNE_{name}"] = (
                str(Path(value).resolve()) if attr.endswith("_dir") else str(value)
            )
    if getattr(args, "insecure_no_auth", False):
        os.environ["FWDPRUNE_INSECURE_NO_AUTH"] = "true"


def cmd_serve(args: argparse.Namespace) -> int:
    from service.connections import serve
    from service.main import create_app
    from service.settings import Settings, SettingsError
    from service.worker.embedded import WorkerSupervisor

    _apply_env(args)
    settings = Settings()
    try:
        app = create_app(settings)  # checks auth config and migrates before the worker starts
    except SettingsError as err:
        print(f"fwdprune serve: {err}", file=sys.stderr)
        return 2
    supervisor = None
    if settings.embedded_worker and not args.no_worker:
        # --parent-pid: uvicorn re-raises SIGTERM after its shutdown, so our `finally` may never run;
        # the worker watches its parent instead and stops (requeueing its jobs) when the server is gone
        supervisor = WorkerSupervisor()
        supervisor.start()
    try:
        # bounded connections, each with a bounded time to send a request's head (service.connections)
        return serve(app, settings, args.log_level)
    finally:
        if supervisor is not None:
            supervisor.stop(settings.cancel_grace_s + 10)


def cmd_worker(args: argparse.Namespace) -> int:
    from service.settings import Settings, SettingsError
    from service.worker import run_worker

    _apply_env(args)
    try:
        run_worker(Settings(), args.slots, parent_pid=args.parent_pid)
    except SettingsError as err:  # raised at start only (the storage URL and its credentials)
        print(f"fwdprune worker: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the store's schema to the current version, then exit (run once before API and workers)."""
    from service.settings import Settings
    from service.store.engine import upgrade

    _apply_env(args)
    settings = Settings()
    settings.ensure_dirs()  # a SQLite store lives under data_dir
    upgrade(settings.db_url)
    print("fwdprune migrate: the store is at the current schema version")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from service.client import Client

    url = args.url or os.environ.get("FWDPRUNE_URL") or "http://127.0.0.1:8000"
    return Client(url, args.token or os.environ.get("FWDPRUNE_TOKEN"))


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _follow(client: Any, job_id: str) -> dict[str, Any]:
    from tqdm import tqdm

    with tqdm(
        total=100, unit="%", desc="queued", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}"
    ) as bar:

        def update(job: dict[str, Any]) -> None:
            progress = job.get("progress") or {}
            stage = progress.get("stage") or job["status"]
            if progress.get("rounds"):
                stage += f" {progress['round']}/{progress['rounds']}"
            bar.set_description_str(stage)
            fraction = progress.get("fraction")
            if fraction is not None:
                bar.n = round(100 * fraction)
            if job["status"] == "succeeded":
                bar.n = 100
            bar.refresh()

        return client.wait(job_id, update)  # type: ignore[no-any-return]


def _download(client: Any, job_id: str, dest: Path) -> None:
    from tqdm import tqdm

    total = sum(a["bytes"] for a in client.artifacts(job_id))
    with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
        paths = client.download(job_id, dest, bar.update)
    print(f"{len(paths)} files verified (sha256) in {dest}")


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The job settings a `submit` command line sets, validated and as JSON (raises ValidationError)."""
    from pruning.spec import PruneSettings

    given = settings_given(args.settings_source, args)
    return PruneSettings.model_validate(given).model_dump(mode="json", exclude_unset=True)


def cmd_submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:  # checked here first, so a typo costs no upload
        settings = settings_from_args(args)
    except ValidationError as err:
        print(f"error: invalid settings\n{err}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.recovery_data and settings.get("recover", "none") == "none":
        print(f"error: {RECOVERY_TEXT_WITHOUT_RECOVERY.format(field='--recovery-data')}", file=sys.stderr)
        return EXIT_USER_ERROR
    with _client(args) as client:
        data = client.upload(args.data)
        request: dict[str, Any] = {"model": args.model, "calibration_file": data["id"], **settings}
        for name in ("revision", "min_gpu_memory_gib"):
            if getattr(args, name) is not None:
                request[name] = getattr(args, name)
        if args.eval_data:
            request["eval_file"] = client.upload(args.eval_data)["id"]
        if args.recovery_data:
            request["recovery_file"] = client.upload(args.recovery_data)["id"]
        job = client.submit(idempotency_key=args.idempotency_key or str(uuid.uuid4()), **request)
        print(job["id"])
        if not (args.wait or args.download):
            return 0
        job = _follow(client, job["id"])
        if job["status"] != "succeeded":
            _print(job.get("error"))
            return 1
        _print(job.get("metrics"))
        if args.download:
            _download(client, job["id"], args.download)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(client.job(args.job_id))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for job in client.jobs(args.status, args.limit):
            progress = job.get("progress") or {}
            print(
                f"{job['id']}  {job['status']:<10}  {job['request']['model']}  "
                f"sparsity={job['request']['sparsity']}  {progress.get('stage') or ''}"
            )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The server's models: one line each (its name, family, parameters, and whether jobs can use it)."""
    with _client(args) as client:
        models = client.models()
    if args.json:
        _print(models)
        return 0
    for model in models:
        name = model["id"] + (f"@{model['revision']}" if model.get("revision") else "")
        parameters = f"{model['parameters']:,}" if model.get("parameters") is not None else "?"
        verdict = "supported" if model["supported"] else f"unsupported: {model.get('reason') or ''}"
        family = model.get("family") or model.get("model_type") or "?"
        print(f"{name}  {family}  {parameters} parameters  {verdict}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(client.cancel(args.job_id)["status"])
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _download(client, args.job_id, args.dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fwdprune", description="forward-only structured pruning")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API (and an embedded worker)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir")
    serve.add_argument("--models-dir")
    serve.add_argument("--database-url")
    serve.add_argument("--slots", type=int)
    serve.add_argument("--device", choices=["auto", "cuda", "cpu"])
    serve.add_argument("--insecure-no-auth", action="store_true", help="accept requests without an API key")
    serve.add_argument("--no-worker", action="store_true", help="do not start the embedded worker")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser("worker", help="run jobs from the store")
    worker.add_argument("--data-dir")
    worker.add_argument("--models-dir")
    worker.add_argument("--database-url")
    worker.add_argument("--slots", type=int, help="concurrent jobs (default: GPU count or 1)")
    worker.add_argument("--device", choices=["auto", "cuda", "cpu"])
    worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    worker.set_defaults(handler=cmd_worker)

    migrate = sub.add_parser("migrate", help="bring the store's schema up to date, then exit")
    migrate.add_argument("--data-dir")
    migrate.add_argument("--database-url")
    migrate.set_defaults(handler=cmd_migrate)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", help="server URL (FWDPRUNE_URL)")
        p.add_argument("--token", help="API key (FWDPRUNE_TOKEN)")
        return p

    submit = client_parser("submit", "upload data and submit a pruning job")
    submit.add_argument(
        "--model", required=True, help="a model name on the server (its models dir or HF cache)"
    )
    submit.add_argument("--revision", help="a Hub model's git revision: branch, tag or commit")
    submit.add_argument(
        "--min-gpu-memory-gib", type=float, help="memory each of the job's GPUs must have, in GiB"
    )
    submit.add_argument("--data", required=True, type=Path, help="calibration .jsonl (text field) or .txt")
    submit.add_argument("--eval-data", type=Path, help="held-out text for perplexity")
    submit.add_argument("--recovery-data", type=Path, help="text the recovery trains on")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument(
        "--download", type=Path, metavar="DIR", help="wait, then download the checkpoint here"
    )
    submit.set_defaults(handler=cmd_submit, settings_source=add_settings_options(submit))

    status = client_parser("status", "show a job")
    status.add_argument("job_id")
    status.set_defaults(handler=cmd_status)
    jobs = client_parser("jobs", "list jobs")
    jobs.add_argument("--status")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.set_defaults(handler=cmd_jobs)
    models = client_parser("models", "list the models the server can prune (its models dir and HF cache)")
    models.add_argument("--json", action="store_true", help="the API's listing, as JSON")
    models.set_defaults(handler=cmd_models)
    cancel = client_parser("cancel", "cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=cmd_cancel)
    download = client_parser("download", "download a job's checkpoint (resumable, verified)")
    download.add_argument("job_id")
    download.add_argument("dir", type=Path)
    download.set_defaults(handler=cmd_download)

    add_prune_command(sub)  # torch-free until a prune actually runs
    return parser


def main(argv: list[str] | None = None) -> int:
    from service.client import ApiError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ApiError as err:
        print(f"fwdprune: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
