"""A small typed client for the fwdprune API (what the CLI and the demo use)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from service.objects.names import name_problem

TERMINAL = ("succeeded", "failed", "cancelled")
PARTIAL = ".part"  # a download in progress, beside where the artifact goes; resumed with Range
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


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

    def models(self) -> list[dict[str, Any]]:
        """The models the server can run jobs on (GET /v1/models)."""
        return self._json(self.http.get("/v1/models"))["data"]  # type: ignore[no-any-return]

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
        """Every artifact into `dest`, resuming partial files with Range and verifying sha256.

        The listing is the server's word, and checked before anything is written: only safe names
        (`service.objects.names`), each written only where the download itself creates files: a file
        already in `dest` is kept when it is the artifact (same sha256) and refused otherwise, never
        overwritten. A body is read up to its listed size and no further. DownloadRefused names the
        artifact refused and why.
        """
        planned = plan_download(dest, self.artifacts(job_id))
        dest.mkdir(parents=True, exist_ok=True)
        _check_space(dest, planned)
        return [self._fetch(job_id, dest, artifact, on_bytes) for artifact in planned]

    def _fetch(
        self, job_id: str, dest: Path, artifact: Planned, on_bytes: Callable[[int], None] | None
    ) -> Path:
        if _already_there(dest, artifact):
            if on_bytes:
                on_bytes(artifact.bytes)
            return artifact.path
        partial = artifact.partial
        have = _regular_size(partial, artifact)
        if have > artifact.bytes:
            partial.unlink()
            have = 0
        if on_bytes and have:
            on_bytes(have)
        if have < artifact.bytes:
            self._stream(job_id, artifact, have, on_bytes)
        else:
            os.close(_open_partial(partial, append=True))  # a file of no bytes, or one already whole
        if _sha256(partial) != artifact.sha256:
            partial.unlink()
            raise DownloadRefused(
                artifact.name, "its sha256 does not match the listing; partial file removed"
            )
        _refuse_existing(artifact)  # nothing appeared there meanwhile
        os.replace(partial, artifact.path)
        return artifact.path

    def _stream(
        self, job_id: str, artifact: Planned, have: int, on_bytes: Callable[[int], None] | None
    ) -> None:
        """GET the artifact (from byte `have` on) into its partial file, never past its listed size."""
        # If-Range: should the artifact differ from the listing, the server sends all of it (200)
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{artifact.sha256}"'} if have else {}
        # a server may redirect to a presigned URL of its object store (httpx sends the API key to no
        # other origin); the checksum holds the store to the listing all the same
        url = f"/v1/jobs/{quote(job_id, safe='')}/artifacts/{quote(artifact.name)}"
        with self.http.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code not in (200, 206):
                raise ApiError(response.status_code, response.read().decode(errors="replace"))
            resumed = response.status_code == 206
            left = artifact.bytes - (have if resumed else 0)
            with os.fdopen(_open_partial(artifact.partial, append=resumed), "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    if len(chunk) > left:
                        break  # past the listed size: nothing more is read or written
                    out.write(chunk)
                    left -= len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
                else:
                    return
        artifact.partial.unlink()
        raise DownloadRefused(
            artifact.name,
            f"the server sent more than its listed {artifact.bytes} bytes; partial file removed",
        )


class DownloadRefused(ApiError):
    """A download stopped before writing somewhere it must not: the artifact, and why."""

    def __init__(self, name: object, reason: str) -> None:
        RuntimeError.__init__(self, f"refusing artifact {name!r}: {reason}")
        self.status, self.detail, self.name = 0, reason, name


@dataclass(frozen=True)
class Planned:
    """An artifact as listed, checked, and where it goes under the destination."""

    name: str
    bytes: int
    sha256: str
    path: Path

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL)


def plan_download(dest: Path, listing: object) -> list[Planned]:
    """The listing's artifacts and their places under `dest`, or DownloadRefused for the first one that
    is not safe to write: a name `objects.names` refuses, a size or checksum that is not one, or a name
    that collides with another's file, folder or partial file."""
    if not isinstance(listing, list):
        raise DownloadRefused("*", "the server's artifact listing is not a list")
    planned = [_planned(dest, artifact) for artifact in listing]
    names: set[str] = set()
    for artifact in planned:
        if artifact.name in names:
            raise DownloadRefused(artifact.name, "it is listed twice")
        names.add(artifact.name)
    folders = {"/".join(a.name.split("/")[:i]) for a in planned for i in range(1, a.name.count("/") + 1)}
    for artifact in planned:
        if artifact.name in folders:
            raise DownloadRefused(artifact.name, "another artifact's folder has the same name")
        if artifact.name + PARTIAL in names:
            raise DownloadRefused(
                artifact.name + PARTIAL, "it is the name of another artifact's partial file"
            )
    return planned


def _planned(dest: Path, artifact: object) -> Planned:
    entry = artifact if isinstance(artifact, dict) else {}
    name, size, digest = entry.get("name"), entry.get("bytes"), entry.get("sha256")
    problem = name_problem(name)
    if problem is not None or not isinstance(name, str):
        raise DownloadRefused(name, problem or "it is not a string")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DownloadRefused(name, f"its size {size!r} is not a number of bytes")
    if not isinstance(digest, str) or not SHA256.fullmatch(digest):
        raise DownloadRefused(name, "its sha256 is not 64 hexadecimal digits")
    return Planned(name, size, digest.lower(), dest.joinpath(*name.split("/")))


def _check_space(dest: Path, planned: list[Planned]) -> None:
    """Refuse a download the destination's filesystem cannot hold, before any of it is fetched."""
    needed = sum(a.bytes for a in planned) - sum(_size(a.path) + _size(a.partial) for a in planned)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DownloadRefused("*", f"the artifacts need {needed} more bytes, and {dest} has {free} free")


def _already_there(dest: Path, artifact: Planned) -> bool:
    """Make the artifact's folders under `dest` (through no symbolic link), and say whether the artifact
    is there already, the same bytes; refused if some other file is where it goes."""
    folder = dest
    for part in artifact.name.split("/")[:-1]:
        folder = folder / part
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            folder.mkdir()
            continue
        if not stat.S_ISDIR(mode):  # a link or a file: the artifact would land elsewhere, or nowhere
            raise DownloadRefused(artifact.name, f"{folder} is not a folder this download can write in")
    if _regular_size(artifact.path, artifact) == artifact.bytes and _sha256(artifact.path) == artifact.sha256:
        return True
    _refuse_existing(artifact)
    return False


def _refuse_existing(artifact: Planned) -> None:
    if os.path.lexists(artifact.path):
        raise DownloadRefused(
            artifact.name, f"{artifact.path} exists and is not this artifact; the download never replaces it"
        )


def _regular_size(path: Path, artifact: Planned) -> int:
    """The size of `path` if it is a regular file, 0 if there is nothing there; refused otherwise."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(found.st_mode):
        raise DownloadRefused(artifact.name, f"{path} is a link or a folder, not a file this download made")
    return found.st_size


def _size(path: Path) -> int:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return 0
    return found.st_size if stat.S_ISREG(found.st_mode) else 0


def _open_partial(path: Path, append: bool) -> int:
    """The partial file for writing, never through a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    return os.open(path, flags, 0o644)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
