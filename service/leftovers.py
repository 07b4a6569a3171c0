"""What interrupted uploads leave behind, removed by the API at start and then every sweep interval.

An upload streams to a temporary file in the files directory, is put to storage under its key, and only
then gets its row. A process killed midway leaves a temporary file, or a stored file no row names (and
a deleted file whose row went but whose stored copy stayed is the same). No quota counts either, so
each sweep removes those older than the grace period: an upload in flight writes its temporary file as
its bytes arrive and puts it to storage the moment they end, so it is never that old.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from service.objects.storage import Storage, StorageError
from service.objects.uploads import UPLOAD_TMP_PREFIX
from service.settings import Settings
from service.store import Store

log = logging.getLogger("fwdprune.leftovers")


def sweep_uploads(settings: Settings, store: Store, storage: Storage) -> int:
    """Remove upload leftovers older than `settings.sweep_grace_s`; how many were removed."""
    cutoff = time.time() - settings.sweep_grace_s
    return _temporary_files(settings.files_dir, cutoff) + _unnamed_files(store, storage, cutoff)


def _temporary_files(files_dir: Path, cutoff: float) -> int:
    """Temporary files of uploads on their way to disk (on the API's own disk, whatever the storage)."""
    removed = 0
    for path in files_dir.glob(f"{UPLOAD_TMP_PREFIX}*"):
        try:
            if not path.is_symlink() and path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another sweep, or the upload itself, removed it meanwhile
            continue
    return removed


def _unnamed_files(store: Store, storage: Storage, cutoff: float) -> int:
    """Stored files under `files/` that no row names. The grace keeps a file whose row is about to go
    in: its upload put it to storage a moment ago."""
    keys = storage.list_keys("files")
    named = store.file_paths()
    named_here = {path for name in named if (path := _local_path(storage, name)) is not None}
    removed = 0
    for key in keys:
        if key in named or (storage.local and _local_path(storage, key) in named_here):
            continue
        info = storage.stat(key)
        if info is None or info.modified >= cutoff:
            continue
        storage.delete(key)
        removed += 1
    return removed


def _local_path(storage: Storage, key: str) -> Path | None:
    """The file of a key on local storage (a row from before keys names it by its absolute path)."""
    try:
        return storage.local_path(key)
    except StorageError:
        return None


def sweep_quietly(settings: Settings, store: Store, storage: Storage) -> None:
    """One sweep; a store or storage that fails it is logged, and the next sweep tries again."""
    try:
        removed = sweep_uploads(settings, store, storage)
    except Exception:
        log.exception("could not sweep the leftovers of interrupted uploads; the next sweep tries again")
        return
    if removed:
        log.info("removed %d leftovers of interrupted uploads", removed)


async def sweep_every(settings: Settings, store: Store, storage: Storage) -> None:
    """Sweep every `settings.sweep_interval_s`, off the event loop, until cancelled."""
    while True:
        await asyncio.sleep(settings.sweep_interval_s)
        await run_in_threadpool(sweep_quietly, settings, store, storage)
