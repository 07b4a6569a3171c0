"""The data directory as a process found it at start, and whether it still is that directory.

A data directory on its own filesystem can go away under a running process (a lazy unmount, a volume
detached): the path then names the empty folder it was mounted on, and every write through the path
would land on the root filesystem. The process records each directory's device and inode when it starts,
and readiness asks that each is still there, still the same directory, and takes writes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDirs:
    """Directories and their (device, inode), as found when the process started."""

    found: tuple[tuple[Path, tuple[int, int]], ...]

    @classmethod
    def at_start(cls, paths: Iterable[Path]) -> DataDirs:
        found = []
        for path in paths:
            stat = path.stat()
            found.append((path, (stat.st_dev, stat.st_ino)))
        return cls(tuple(found))

    def problem(self) -> str | None:
        """None while every directory is the one found at start and takes writes; else what is wrong
        (its name, not its path)."""
        for path, identity in self.found:
            try:
                stat = path.stat()
            except OSError:
                return f"the data directory's {path.name} is gone"
            if (stat.st_dev, stat.st_ino) != identity:
                return f"the data directory's {path.name} is not the one found at start (unmounted?)"
            try:
                probe_write(path)
            except OSError:
                return f"the data directory's {path.name} takes no writes"
        return None


def probe_write(path: Path) -> None:
    """Create a file in `path` and remove it again; OSError if the directory takes no writes."""
    fd, name = tempfile.mkstemp(dir=path, prefix=".probe-")
    os.close(fd)
    os.unlink(name)
