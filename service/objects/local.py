"""Local storage: keys as files under data_dir, renamed into place and read straight from disk."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from service.objects.storage import (
    ObjectInfo,
    ObjectMissing,
    Storage,
    StorageError,
    file_chunks,
    regular_files,
    write_verified,
)


class LocalStorage(Storage):
    """Keys as files under a root directory (data_dir): renames into place, reads straight from disk."""

    local = True

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def url(self) -> str:
        return self.root.resolve().as_uri()

    def local_path(self, key: str) -> Path:
        root = self.root.resolve()
        # an absolute key is a file row from before keys: accepted while it lies under the root
        path = (root / key).resolve()
        if path == root or not path.is_relative_to(root):
            raise StorageError("a storage key must name a file under the storage root")
        return path

    def put_file(self, source: Path, key: str, sha256: str) -> None:
        dest = self.local_path(key)
        self._make_folders(dest.parent)
        try:
            os.replace(source, dest)  # the bytes do not move, so there is nothing in transit to verify
        except OSError as err:
            if err.errno != errno.EXDEV:  # another filesystem: the bytes are copied, and checked
                raise
            write_verified(file_chunks(source), dest, sha256, key)

    def fetch(self, key: str, dest: Path, sha256: str | None = None) -> None:
        if sha256 is None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._existing(key), dest)
        else:
            write_verified(self.read(key), dest, sha256, key)

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        handle = self._existing(key).open("rb")
        handle.seek(start)
        return file_chunks(handle, None if end is None else end + 1 - start)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self.local_path(key)
        if not path.is_file():
            return None
        stat = path.stat()
        return ObjectInfo(stat.st_size, stat.st_mtime)

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.local_path(prefix), ignore_errors=True)

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.local_path(prefix)
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}/{path.relative_to(folder).as_posix()}" for path in regular_files(folder))

    def _make_folders(self, folder: Path) -> None:
        """Make `folder` and those between it and the root, one at a time. The root itself is made at
        setup only (`Settings.ensure_dirs`): one that went away (an unmounted data directory) is an
        error, never made again on whatever filesystem is left under its path."""
        root = self.root.resolve()
        missing = []
        while folder != root and not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        try:
            if not root.is_dir():
                raise FileNotFoundError(root)
            for path in reversed(missing):
                path.mkdir(exist_ok=True)  # never parents=True: that would make the root again
        except FileNotFoundError as err:
            raise StorageError("the storage directory is gone") from err

    def _existing(self, key: str) -> Path:
        path = self.local_path(key)
        if not path.is_file():
            raise ObjectMissing("no such stored object")
        return path
