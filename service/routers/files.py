"""/v1/files: calibration and evaluation text, validated on upload."""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Query, Request, Response, UploadFile, status

from service.db import FileRow
from service.deps import PrincipalDep, SettingsDep, StoreDep, unprocessable
from service.schemas.files import FileList, FilePublic
from service.uploads import UploadInvalid, UploadTooLarge, check_filename, save_upload, validate_text_file

router = APIRouter(prefix="/v1/files", tags=["files"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such file (for this key)"}}


def to_public(row: FileRow) -> FilePublic:
    return FilePublic(
        id=row.id,
        filename=row.filename,
        bytes=row.bytes,
        sha256=row.sha256,
        created_at=datetime.fromtimestamp(row.created_at, timezone.utc),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=FilePublic,
    responses={413: {"description": "upload too large"}, 422: {"description": "invalid content"}},
)
def upload_file(
    request: Request,
    file: Annotated[UploadFile, File(description=".jsonl or .txt")],
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
) -> FilePublic:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"upload exceeds the limit of {settings.max_upload_bytes} bytes",
        )
    try:
        filename = check_filename(file.filename or "")
    except UploadInvalid as err:
        raise unprocessable(["body", "file"], str(err)) from err
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    file_id = "file_" + secrets.token_urlsafe(16)
    # write under a temporary name, publish by rename only once it is whole and valid
    fd, tmp_name = tempfile.mkstemp(dir=settings.files_dir, prefix=".upload-")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        size, sha256 = save_upload(file.file, tmp, settings.max_upload_bytes)
        validate_text_file(tmp, filename)
        # the engine picks the parser by suffix, so the stored name keeps the upload's
        final = settings.files_dir / (file_id + Path(filename).suffix.lower())
        tmp.rename(final)
    except UploadTooLarge as err:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(err)) from err
    except UploadInvalid as err:
        raise unprocessable(["body", "file"], str(err)) from err
    finally:
        tmp.unlink(missing_ok=True)
    row = store.add_file(
        FileRow(
            id=file_id,
            owner=principal.owner,
            filename=filename,
            bytes=size,
            sha256=sha256,
            path=str(final.resolve()),
            created_at=time.time(),
        )
    )
    return to_public(row)


@router.get("", response_model=FileList)
def list_files(
    principal: PrincipalDep,
    store: StoreDep,
    all: Annotated[bool, Query(description="admins: every key's files")] = False,
) -> FileList:
    return FileList(data=[to_public(row) for row in store.list_files(principal.scope(all))])


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
def delete_file(file_id: str, principal: PrincipalDep, store: StoreDep) -> Response:
    row = store.get_file(file_id, principal.scope(True))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "file not found")
    if store.file_in_use(file_id):
        raise HTTPException(status.HTTP_409_CONFLICT, "an unfinished job uses this file")
    store.delete_file(file_id)
    Path(row.path).unlink(missing_ok=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
