"""A small typed client for the fwdprune API (what the CLI and the demo use)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(RuntimeError):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response.json() if response.content else None

    def upload(self, path: Path) -> dict[str, Any]:
        with path.open("rb") as handle:
            return self._json(self.http.post("/v1/files", files={"file": (path.name, handle)}))  # type: ignore[no-any-return]

    def submit(self, idempotency_key: str | None = None, **request: Any) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/v1/jobs", json=request, headers=headers))  # type: ignore[no-any-return]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))  # type: ignore[no-any-return]

    def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        return self._json(self.http.get("/v1/jobs", params=params))["data"]  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.post(f"/v1/jobs/{job_id}/cancel"))  # type: ignore[no-any-return]

    def events(self, job_id: str, after: int = 0) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}/events", params={"after": after}))  # type: ignore[no-any-return]

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}/artifacts"))["data"]  # type: ignore[no-any-return]

    def wait(
        self,
        job_id: str,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
            time.sleep(poll_s)

    def download(self, job_id: str, dest: Path, on_bytes: Callable[[int], None] | None = None) -> list[Path]:
        """Every artifact into `dest`, resuming partial files with Range and verifying sha256."""
        dest.mkdir(parents=True, exist_ok=True)
        paths = []
        for artifact in self.artifacts(job_id):
            path = _local_path(dest, artifact["name"])
            partial = path.with_name(path.name + ".part")
            if path.is_file() and _sha256(path) == artifact["sha256"]:
                if on_bytes:
                    on_bytes(artifact["bytes"])
                paths.append(path)
                continue
            have = partial.stat().st_size if partial.exists() else 0
            if have > artifact["bytes"]:
                partial.unlink()
                have = 0
            if on_bytes and have:
                on_bytes(have)
            if have < artifact["bytes"]:
                # If-Range: should the artifact differ from the listing, the server sends all of it (200)
                headers = {"Range": f"bytes={have}-", "If-Range": f'"{artifact["sha256"]}"'} if have else {}
                # a server may redirect to a presigned URL of its object store (httpx sends the API key
                # to no other origin); the checksum below holds the store to the listing all the same
                with self.http.stream(
                    "GET",
                    f"/v1/jobs/{job_id}/artifacts/{artifact['name']}",
                    headers=headers,
                    follow_redirects=True,
                ) as response:
                    if response.status_code not in (200, 206):
                        raise ApiError(response.status_code, response.read().decode(errors="replace"))
                    mode = "ab" if response.status_code == 206 else "wb"
                    with partial.open(mode) as out:
                        for chunk in response.iter_bytes(1 << 20):
                            out.write(chunk)
                            if on_bytes:
                                on_bytes(len(chunk))
            elif not partial.exists():
                partial.touch()
            if _sha256(partial) != artifact["sha256"]:
                partial.unlink()
                raise ApiError(0, f"checksum mismatch for {artifact['name']}; partial download removed")
            partial.replace(path)
            paths.append(path)
        return paths


def _local_path(dest: Path, name: str) -> Path:
    """Where an artifact goes under `dest`: a job of several sizes names its files by their folder
    (`sparsity-0.2/config.json`), kept as such; a name with any other part (absolute, `..`, a backslash)
    keeps only its last part: the server names files, it never picks a directory outside `dest`."""
    parts = PurePosixPath(name).parts
    plain = not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)
    path = dest.joinpath(*parts) if plain and parts else dest / Path(name).name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
