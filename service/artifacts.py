"""Artifact files: checksums at publication, HTTP Range parsing, and a streamed tar of a checkpoint."""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(directory: Path) -> list[dict[str, Any]]:
    """name/bytes/sha256 of every regular file in a (flat) checkpoint directory, sorted by name."""
    return [{"name": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(directory.iterdir()) if p.is_file() and not p.is_symlink()]


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as inclusive (start, end); None means "send everything" (unparseable or multi)."""
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # RFC 9110: a server may ignore a Range it does not understand
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable
    return start, end


def read_span(path: Path, start: int, end: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


def stream_tar(directory: Path, names: list[str], prefix: str) -> Iterator[bytes]:
    """A ustar/pax archive produced block by block, so a multi-GB checkpoint never sits in memory."""
    for name in names:
        path = directory / name
        info = tarfile.TarInfo(f"{prefix}/{name}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        yield from read_span(path, 0, stat.st_size - 1) if stat.st_size else iter(())
        if stat.st_size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - stat.st_size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)  # end-of-archive marker
