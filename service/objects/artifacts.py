"""Artifact files: checksums at publication, uploads to an object store, and a streamed tar of a checkpoint
read back from storage."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.objects.names import is_safe
from service.objects.storage import CHUNK, Storage, regular_files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(directory: Path) -> list[dict[str, Any]]:
    """name/bytes/sha256 of every regular file under an output directory, sorted by name: a checkpoint's
    files by their names, and those of a job of several sizes by their path (`sparsity-0.2/config.json`).
    Symbolic links, folders reached through one, and files whose path `names` refuses (hidden
    files and folders: `.gitattributes`, `.cache/...`) are never published."""
    named = {path.relative_to(directory).as_posix(): path for path in regular_files(directory)}
    return [
        {"name": name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for name, path in sorted(named.items())
        if is_safe(name)
    ]


def upload_outputs(storage: Storage, directory: Path, prefix: str) -> list[dict[str, Any]]:
    """Describe an output directory and put each of its files under `prefix`, checked against the sha256
    just taken; each artifact records its key. Nothing is served from there before a commit names it."""
    artifacts = describe(directory)
    for artifact in artifacts:
        artifact["key"] = f"{prefix}/{artifact['name']}"
        storage.put_file(directory / artifact["name"], artifact["key"], artifact["sha256"])
    return artifacts


def exactly(chunks: Iterator[bytes], size: int, name: str) -> Iterator[bytes]:
    """The first `size` bytes of `chunks`: a tar member must fill its header's size, and never outgrow it.
    (`chunks` is read to its end, which closes the file or connection behind it.)"""
    left = size
    for chunk in chunks:
        piece = chunk[:left]
        left -= len(piece)
        if piece:
            yield piece
    if left:
        raise OSError(f"{name} ended {left} bytes short of its size")


def stream_tar(storage: Storage, members: list[tuple[str, str]], prefix: str) -> Iterator[bytes]:
    """A ustar/pax archive of (name, storage key) members, produced block by block as they are read from
    storage, so a multi-GB checkpoint never sits in memory."""
    for name, key in members:
        found = storage.stat(key)
        if found is None:
            raise FileNotFoundError(f"{name} is missing from storage")
        info = tarfile.TarInfo(f"{prefix}/{name}")
        info.size, info.mtime, info.mode = found.size, int(found.modified), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        if found.size:
            yield from exactly(storage.read(key, 0, found.size - 1), found.size, name)
        if found.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - found.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # end-of-archive marker
