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
    """name/bytes/sha256 of every regular file under an output directory, sorted by name: a checkpoint's
    files by their names, and those of a job of several sizes by their path (`sparsity-0.2/config.json`).
    Symbolic links, and folders reached through one, are never published."""
    return [
        {"name": p.relative_to(directory).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(_regular_files(directory), key=lambda p: p.relative_to(directory).as_posix())
    ]


def _regular_files(directory: Path) -> Iterator[Path]:
    for path in directory.iterdir():
        if path.is_symlink():
            continue
        if path.is_dir():
            yield from _regular_files(path)
        elif path.is_file():
            yield path


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
