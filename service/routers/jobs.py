"""/v1/jobs: submit, inspect, cancel and delete pruning jobs; download their artifacts."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.responses import FileResponse, StreamingResponse

from pruning.errors import FwdpruneError
from pruning.spec import read_model_type
from service.artifacts import stream_tar
from service.db import JobRow
from service.deps import PrincipalDep, SettingsDep, StoreDep, unprocessable
from service.errors import redact_paths
from service.modelref import resolve_model
from service.schemas.events import EventList, EventPublic
from service.schemas.jobs import (
    ArtifactList,
    ArtifactPublic,
    JobCreate,
    JobInputs,
    JobList,
    JobPublic,
    JobStatus,
)
from service.settings import Settings
from service.store import ACTIVE, FileGone, IdempotencyConflict, Store

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job (for this key)"}}


def _dt(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def to_public(row: JobRow) -> JobPublic:
    return JobPublic.model_validate(
        {
            "id": row.id,
            "status": row.status,
            "created_at": _dt(row.created_at),
            "started_at": _dt(row.started_at),
            "finished_at": _dt(row.finished_at),
            "progress": row.progress or {},
            "request": row.request,
            "metrics": row.metrics,
            "metadata": row.metadata_ or {},
            "error": {"code": row.error_code, "message": redact_paths(row.error_message)}
            if row.error_code
            else None,
        }
    )


def _resolve_inputs(body: JobCreate, owner: str | None, settings: Settings, store: Store) -> JobInputs:
    """Where the job's model and files are on this server; the settings were validated with the body."""
    try:
        model_dir = resolve_model(body.model, settings.models_dir, settings.hf_cache_dir)
        read_model_type(model_dir)
    except FwdpruneError as err:
        raise unprocessable(["body", "model"], str(err), err.code) from err
    paths: dict[str, str] = {}
    for field in ("calibration_file", "eval_file"):
        file_id = getattr(body, field)
        if file_id is None:
            continue
        row = store.get_file(file_id, owner)
        if row is None:
            raise unprocessable(["body", field], f"file {file_id!r} does not exist")
        paths[field] = row.path
    return JobInputs(model=str(model_dir), data=paths["calibration_file"], eval_data=paths.get("eval_file"))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "the job already made with this Idempotency-Key"},
        422: {"description": "invalid request"},
    },
)
def create_job(
    body: JobCreate,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobPublic:
    request = body.model_dump(mode="json")
    request_hash = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    inputs = _resolve_inputs(body, principal.owner, settings, store)
    row = JobRow(
        id="job_" + secrets.token_urlsafe(16),
        owner=principal.owner,
        status="queued",
        request=request,
        resolved=inputs.model_dump(),
        request_hash=request_hash,
        idempotency_key=idempotency_key,
        metadata_=body.metadata,
        created_at=time.time(),
        progress={},
        attempts=0,
        computing=False,
    )
    file_ids = [file_id for file_id in (body.calibration_file, body.eval_file) if file_id is not None]
    try:
        job, created = store.create_job(row, file_ids)
    except FileGone as err:
        field = "calibration_file" if str(err) == body.calibration_file else "eval_file"
        raise unprocessable(
            ["body", field], f"file {str(err)!r} was deleted while the job was being created"
        ) from err
    except IdempotencyConflict as err:
        raise unprocessable(
            ["header", "idempotency-key"],
            "this Idempotency-Key was already used with a different request body",
        ) from err
    if not created:
        response.status_code = status.HTTP_200_OK
    return to_public(job)


@router.get("", response_model=JobList)
def list_jobs(
    principal: PrincipalDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    after: Annotated[
        str | None, Query(max_length=64, description="id of the previous page's last job")
    ] = None,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    all: Annotated[bool, Query(description="admins: every key's jobs")] = False,
) -> JobList:
    rows, more = store.list_jobs(principal.scope(all), status=status_, limit=limit, after=after)
    return JobList(data=[to_public(r) for r in rows], has_more=more, next_after=rows[-1].id if more else None)


def _job(store: Any, job_id: str, principal: Any) -> JobRow:
    row: JobRow | None = store.get_job(job_id, principal.scope(True))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "job not found")
    return row


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
def get_job(job_id: str, principal: PrincipalDep, store: StoreDep) -> JobPublic:
    return to_public(_job(store, job_id, principal))


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=NOT_FOUND)
def cancel_job(job_id: str, principal: PrincipalDep, store: StoreDep) -> JobPublic:
    _job(store, job_id, principal)
    store.request_cancel(job_id)  # a finished job stays as it is: cancelling is idempotent
    return to_public(_job(store, job_id, principal))


@router.get("/{job_id}/events", response_model=EventList, responses=NOT_FOUND)
def job_events(
    job_id: str,
    principal: PrincipalDep,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, le=2**62, description="last event seq already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> EventList:
    _job(store, job_id, principal)
    events = store.events(job_id, after, limit)
    return EventList(
        data=[
            EventPublic(
                seq=e.seq,
                created_at=datetime.fromtimestamp(e.created_at, timezone.utc),
                type=e.type,
                data=_redacted(e.data),
            )
            for e in events
        ],
        next_after=events[-1].seq if events else after,
    )


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with server paths cut from its messages (warnings, and a failure's error)."""
    cleaned = dict(data)
    if isinstance(cleaned.get("message"), str):
        cleaned["message"] = redact_paths(cleaned["message"])
    error = cleaned.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        cleaned["error"] = {**error, "message": redact_paths(error["message"])}
    return cleaned


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "the job is running"}},
)
def delete_job(job_id: str, principal: PrincipalDep, settings: SettingsDep, store: StoreDep) -> Response:
    row = _job(store, job_id, principal)
    if row.status in ACTIVE or not store.delete_job(job_id):
        raise HTTPException(status.HTTP_409_CONFLICT, "the job is running; cancel it first")
    shutil.rmtree(settings.jobs_dir / job_id, ignore_errors=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=NOT_FOUND)
def list_artifacts(job_id: str, principal: PrincipalDep, store: StoreDep) -> ArtifactList:
    row = _job(store, job_id, principal)
    return ArtifactList(data=[ArtifactPublic(**a) for a in row.artifacts or []])


def _artifact_dir(settings: Any, row: JobRow) -> Path:
    if row.status != "succeeded" or not row.artifacts:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the job has no artifacts (yet)")
    return Path(settings.jobs_dir) / row.id


ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "the requested range; several ranges come as multipart/byteranges"},
    400: {"description": "a Range header that cannot be parsed"},
    416: {"description": "a range that starts past the end of the file"},
}


def _artifact_entry(row: JobRow, name: str) -> dict[str, Any]:
    # only names recorded at publication are served, so `name` can never address another path
    entry = next((a for a in row.artifacts or [] if a["name"] == name), None)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact")
    return dict(entry)


@router.get("/{job_id}/artifacts/{name:path}", response_class=FileResponse, responses=ARTIFACT_RESPONSES)
@router.head(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses=ARTIFACT_RESPONSES,
    summary="Artifact headers (size, checksum) without the body",
)
def download_artifact(
    job_id: str, name: str, principal: PrincipalDep, settings: SettingsDep, store: StoreDep
) -> FileResponse:
    """One artifact; Range, If-Range (against the sha256 ETag or Last-Modified) and HEAD as in RFC 9110."""
    row = _job(store, job_id, principal)
    directory = _artifact_dir(settings, row)
    entry = _artifact_entry(row, name)
    path = directory / entry["name"]
    try:
        stat = path.stat()
    except FileNotFoundError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact") from err
    # FileResponse keeps a given ETag (its own is an mtime/size hash) and compares If-Range against it
    headers = {"ETag": f'"{entry["sha256"]}"', "X-Checksum-Sha256": entry["sha256"]}
    return FileResponse(path, media_type="application/octet-stream", headers=headers, stat_result=stat)


@router.get(
    "/{job_id}/checkpoint.tar",
    response_class=StreamingResponse,
    responses={**NOT_FOUND, 200: {"content": {"application/x-tar": {}}}},
)
def download_checkpoint(
    job_id: str, principal: PrincipalDep, settings: SettingsDep, store: StoreDep
) -> Response:
    row = _job(store, job_id, principal)
    directory = _artifact_dir(settings, row)
    names = [a["name"] for a in row.artifacts or []]
    return StreamingResponse(
        stream_tar(directory, names, row.id),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.tar"'},
    )
