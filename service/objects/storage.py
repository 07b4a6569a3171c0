"""Where uploaded files and job artifacts live: a directory under data_dir, or an S3-compatible bucket.

`FWDPRUNE_STORAGE_URL` picks one. Unset, everything is a file under data_dir, as with one host (or a
shared disk): uploads and checkpoints are renamed into place and served straight from disk. `s3://bucket/
prefix` keeps them in an object store instead, so the API and the workers need no disk in common; boto3
reads the endpoint and credentials from the standard AWS_* variables (never from the URL).

Keys are relative, `/`-separated names, laid out as:
    files/<file_id><suffix>              an uploaded calibration or evaluation file
    jobs/<job_id>/<name>                 a published artifact, local storage (the worker renames it there)
    jobs/<job_id>/<attempt>/<name>       an artifact in the object store, uploaded by the attempt's job
                                         runner; only the attempt whose fenced commit won is ever served

Every object carries the sha256 it was published with: a put refuses bytes that do not hash to it, and a
fetch refuses an object that no longer does. Errors name the failed action and the store's reason (an S3
error code), never a path, an endpoint or a credential, so the API can pass them on.

This module is the contract and the key layout; the backends are `local` and `s3`, and `backends`
opens the one a URL or the settings name.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20


class StorageError(Exception):
    """The store refused an operation or could not be reached; the message is safe to show a client."""


class ObjectMissing(StorageError):
    """No object under that key."""


class ChecksumMismatch(StorageError):
    """Bytes that do not hash to the sha256 they were published with."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    modified: float  # epoch seconds


def file_key(file_id: str, suffix: str) -> str:
    return f"files/{file_id}{suffix}"


def job_prefix(job_id: str) -> str:
    """Every stored artifact of a job, whatever attempt published it."""
    return f"jobs/{job_id}"


def attempt_prefix(job_id: str, attempt: int) -> str:
    """One attempt's uploads to the object store; published only if its fenced commit wins."""
    return f"{job_prefix(job_id)}/{attempt}"


def artifact_key(job_id: str, artifact: dict[str, Any]) -> str:
    """Where a published artifact is stored: its recorded key, or the local layout's (a job published by
    a rename records none)."""
    return str(artifact.get("key") or f"{job_prefix(job_id)}/{artifact['name']}")


def stored_attempts(keys: Iterable[str]) -> set[tuple[str, int]]:
    """(job id, attempt) of every `jobs/<job_id>/<attempt>/...` key."""
    found = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) > 3 and parts[0] == "jobs" and parts[2].isdigit():
            found.add((parts[1], int(parts[2])))
    return found


def write_verified(chunks: Iterable[bytes], dest: Path, sha256: str, what: str) -> None:
    """Write `chunks` to `dest` only if they hash to `sha256`; nothing is left behind if they do not."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ChecksumMismatch(f"{what} does not match its sha256")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


class Storage(ABC):
    """Keyed objects: put, fetch, ranged reads, listing and deletion, the same for disk and bucket."""

    local = False  # True where keys are files on this host's disk

    @property
    @abstractmethod
    def url(self) -> str:
        """How another process on this host opens the same storage (a job runner's --storage-url)."""

    def local_path(self, key: str) -> Path | None:
        """The file that holds `key`, where storage is this host's disk; None for an object store."""
        return None

    @abstractmethod
    def put_file(self, source: Path, key: str, sha256: str) -> None:
        """Store `source` under `key`, refusing it unless it hashes to `sha256`. The source is moved
        (local) or copied (object store): callers remove whatever is left of it."""

    @abstractmethod
    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> None:
        """Copy `key` to `dest`, verified against `sha256` (default: the one stored with the object)."""

    @abstractmethod
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes `start` to `end` (inclusive; None: to the end) of `key`, a chunk at a time. The object
        is opened before this returns, so a missing one raises ObjectMissing here, not mid-stream."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and modification time of `key`; None if there is no such object."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; a missing one is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under the folder `prefix` (`jobs/j1` removes `jobs/j1/...`, not `jobs/j10`)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under the folder `prefix`, sorted."""

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A URL that GETs `key` without an API key until it expires; None where storage has none."""
        return None


def file_chunks(source: Path | IO[bytes], size: int | None = None) -> Iterator[bytes]:
    """At most `size` bytes (None: all) of a file, from where it stands, a chunk at a time."""
    with source.open("rb") if isinstance(source, Path) else source as handle:
        while size is None or size > 0:
            chunk = handle.read(CHUNK if size is None else min(CHUNK, size))
            if not chunk:
                return
            if size is not None:
                size -= len(chunk)
            yield chunk


def regular_files(directory: Path) -> Iterator[Path]:
    """Regular files under `directory`; symbolic links, and folders reached through one, are skipped."""
    for path in directory.iterdir():
        if path.is_symlink():
            continue
        if path.is_dir():
            yield from regular_files(path)
        elif path.is_file():
            yield path
