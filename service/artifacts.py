"""Artifact files: checksums at publication, and a streamed tar of a checkpoint."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(directory: Path) -> list[dict[str, Any]]:
    """name/bytes/sha256 of every regular file in a (flat) checkpoint directory, sorted by name."""
    return [
        {"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.is_symlink()
    ]


def read_chunks(path: Path, size: int) -> Iterator[bytes]:
    """At most `size` bytes of `path`, a chunk at a time: a tar member must not outgrow its header."""
    with path.open("rb") as handle:
        while size > 0 and (chunk := handle.read(min(CHUNK, size))):
            size -= len(chunk)
            yield chunk


def stream_tar(directory: Path, names: list[str], prefix: str) -> Iterator[bytes]:
    """A ustar/pax archive produced block by block, so a multi-GB checkpoint never sits in memory."""
    for name in names:
        path = directory / name
        info = tarfile.TarInfo(f"{prefix}/{name}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        yield from read_chunks(path, stat.st_size)
        if stat.st_size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - stat.st_size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # end-of-archive marker
