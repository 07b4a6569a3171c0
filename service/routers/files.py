"""/v1/files: calibration and evaluation text, validated on upload."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from service.deps import PrincipalDep, SettingsDep, StorageDep, StoreDep, unprocessable
from service.objects.storage import Storage, StorageError, file_key
from service.objects.uploads import (
    UPLOAD_TMP_PREFIX,
    MultipartUpload,
    UploadInvalid,
    UploadSink,
    UploadTooLarge,
)
from service.schemas.files import FileList, FilePublic
from service.settings import Settings
from service.store import StoredBytesExceeded
from service.store.tables import FileRow

router = APIRouter(prefix="/v1/files", tags=["files"])
log = logging.getLogger("fwdprune.files")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such file (for this key)"}}


def to_public(row: FileRow) -> FilePublic:
    return FilePublic(
        id=row.id,
        filename=row.filename,
        bytes=row.bytes,
        sha256=row.sha256,
        created_at=datetime.fromtimestamp(row.created_at, timezone.utc),
    )


# the body is parsed as a stream (see upload_file), so its schema is declared here rather than inferred
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ".jsonl or .txt"}
                    },
                }
            }
        },
    }
}
# request pieces handed to the parser in one worker-thread call: few thread hops, little held in memory
BATCH_BYTES = 256 * 1024
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FilePublic,
    responses={
        413: {"description": "upload too large, or past the key's stored-bytes quota"},
        422: {"description": "invalid content or file name"},
        503: {"description": "the object store refused the file or could not be reached"},
        507: {"description": "the server has no space left for the upload"},
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_file(
    request: Request, principal: PrincipalDep, settings: SettingsDep, store: StoreDep, storage: StorageDep
) -> FilePublic:
    """Upload a .jsonl (a `text` field per line) or .txt file, as the `file` field of a multipart form.

    The file is written to disk as it arrives and validated on the way; it is stored only whole and valid.
    """
    file_id = "file_" + secrets.token_urlsafe(16)
    # an upload never passes the key's byte quota: refused before its body is read when the key's files
    # already fill it, cut off at the room left while it streams, and counted again as its row goes in
    room = settings.max_stored_bytes_per_key - await run_in_threadpool(store.stored_bytes, principal.owner)
    if room <= 0:
        raise over_quota(settings)
    with upload_refusals(), quota_refusal(settings, room):
        sink, key = await store_upload(request, settings, storage, file_id, room)
    row = FileRow(
        id=file_id,
        owner=principal.owner,
        filename=sink.filename,
        bytes=sink.size,
        sha256=sink.sha256,
        path=key,
        created_at=time.time(),
    )
    try:
        added = await run_in_threadpool(
            store.add_file, row, max_stored_bytes=settings.max_stored_bytes_per_key
        )
        return to_public(added)
    except StoredBytesExceeded as err:  # another upload of the key's took the room meanwhile
        await delete_stored(storage, key)
        raise over_quota(settings) from err
    except Exception:
        await delete_stored(storage, key)
        raise


async def delete_stored(storage: Storage, key: str) -> None:
    with contextlib.suppress(StorageError, OSError):  # a file no row names must not stay stored
        await run_in_threadpool(storage.delete, key)


def over_quota(settings: Settings) -> HTTPException:
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"this key's files and published checkpoints would hold more than the "
        f"{settings.max_stored_bytes_per_key} bytes it may keep (FWDPRUNE_MAX_STORED_BYTES_PER_KEY); "
        "delete files or jobs it no longer needs",
    )


@contextmanager
def quota_refusal(settings: Settings, room: int) -> Iterator[None]:
    """An upload cut off at the key's room left is refused for the quota, not the upload size limit."""
    try:
        yield
    except UploadTooLarge as err:
        if room >= settings.max_upload_bytes:
            raise
        raise over_quota(settings) from err


async def store_upload(
    request: Request, settings: Settings, storage: Storage, file_id: str, room: int
) -> tuple[UploadSink, str]:
    """Stream the form's file to a temporary file in the files directory, then put it to storage; only a
    whole, valid file of at most `room` bytes gets a key there. Its key is returned."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=settings.files_dir, prefix=UPLOAD_TMP_PREFIX)
    except FileNotFoundError as err:  # made at setup, gone since (an unmounted data directory): never remade
        raise StorageError("the server's upload directory is gone") from err
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            upload = MultipartUpload(
                request.headers.get("content-type"),
                out,
                min(settings.max_upload_bytes, room),
                settings.max_line_bytes,
            )
            sink = await receive_upload(request, upload)
        # the engine picks the parser by suffix, so the stored name keeps the upload's
        key = file_key(file_id, Path(sink.filename).suffix.lower())
        await run_in_threadpool(storage.put_file, tmp, key, sink.sha256)
    finally:
        tmp.unlink(missing_ok=True)
    return sink, key


@contextmanager
def upload_refusals() -> Iterator[None]:
    """The HTTP answer to each way an upload can fail; none of them names a server path."""
    try:
        yield
    except UploadTooLarge as err:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(err)) from err
    except UploadInvalid as err:
        raise unprocessable(["body", "file"], str(err)) from err
    except ClientDisconnect as err:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "the client left before the upload was whole"
        ) from err
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        # str(err) holds the file's path: the client is told only why
        raise HTTPException(
            status.HTTP_507_INSUFFICIENT_STORAGE, "the server has no space left to store the upload"
        ) from err


async def receive_upload(request: Request, upload: MultipartUpload) -> UploadSink:
    """Feed the request body to `upload` as it arrives; parsing, validation and disk writes run off the
    event loop, a batch at a time."""
    batch: list[bytes] = []
    batched = 0
    async for piece in request.stream():
        batch.append(piece)
        batched += len(piece)
        if batched >= BATCH_BYTES:
            await run_in_threadpool(upload.feed, batch)
            batch, batched = [], 0
    await run_in_threadpool(upload.feed, batch)
    return await run_in_threadpool(upload.finish)


@router.get("", response_model=FileList)
def list_files(
    principal: PrincipalDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[
        str | None, Query(max_length=64, description="id of the previous page's last file")
    ] = None,
    all: Annotated[bool, Query(description="admins: every key's files")] = False,
) -> FileList:
    """The key's files, newest first, a page at a time (as jobs are listed)."""
    rows, more = store.list_files(principal.scope(all), limit=limit, after=after)
    return FileList(
        data=[to_public(r) for r in rows], has_more=more, next_after=rows[-1].id if more else None
    )


@router.get("/{file_id}", response_model=FilePublic, responses=NOT_FOUND)
def get_file(file_id: str, principal: PrincipalDep, store: StoreDep) -> FilePublic:
    row = store.get_file(file_id, principal.scope(True))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "file not found")
    return to_public(row)


@router.delete(
    "/{file_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "an unfinished job uses the file"}},
)
def delete_file(file_id: str, principal: PrincipalDep, store: StoreDep, storage: StorageDep) -> Response:
    row = store.get_file(file_id, principal.scope(True))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "file not found")
    if not store.delete_file(file_id):  # checked in the same transaction as the delete: no job races it
        raise HTTPException(status.HTTP_409_CONFLICT, "an unfinished job uses this file")
    try:
        storage.delete(row.path)
    except StorageError as err:  # the row is gone, so the file is too as far as anyone can tell
        log.warning("file %s: its stored copy could not be deleted: %s", file_id, err)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
