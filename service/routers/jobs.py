"""/v1/jobs: submit, inspect, cancel and delete pruning jobs; download their artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse

from pruning.checkpoint_checks import check_checkpoint
from pruning.errors import FwdpruneError
from pruning.spec import RECOVERY_TEXT_WITHOUT_RECOVERY
from service.deps import PrincipalDep, SettingsDep, StorageDep, StoreDep, unprocessable
from service.errors import public_message
from service.modelref import model_name_parts, resolve_checkpoint
from service.objects.artifacts import stream_tar
from service.objects.downloads import object_head, object_response, presigned_redirect
from service.objects.storage import StorageError, artifact_key, job_prefix
from service.schemas.events import EventList, EventPublic, shown_to_owner
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
from service.store import ACTIVE, FileGone, IdempotencyConflict, QueueFull, Store
from service.store.tables import JobRow

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("fwdprune.jobs")
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such job (for this key)"}}
GIB = 1 << 30
QUEUE_FULL_RETRY_AFTER_S = 60
SIZE_FOLDER = r"^sparsity-[0-9][0-9.e-]{0,15}$"  # a size's folder, as the engine names it


def _gib_in_bytes(gib: float | None) -> int | None:
    return None if gib is None else round(gib * GIB)


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
            "error": {"code": row.error_code, "message": public_message(row.error_message)}
            if row.error_code
            else None,
        }
    )


def _check_model(body: JobCreate, settings: Settings) -> None:
    """Refuse a model name that could name a path; with `check_models_on_submit` (API and worker share
    the models), also one this host cannot resolve, whose config.json the engine cannot use or states
    sizes its weights do not have, or that it cannot write in the asked export format. The worker that
    runs the job resolves the name again, on its own disks."""
    try:
        model_name_parts(body.model)
        if settings.check_models_on_submit:
            model_dir = resolve_checkpoint(
                body.model, body.revision, settings.models_dir, settings.hf_cache_dir
            )
            check_checkpoint(model_dir, body)
    except FwdpruneError as err:
        raise unprocessable(["body", "model"], str(err), err.code) from err


def _check_limits(body: JobCreate, settings: Settings) -> None:
    """Refuse a job larger than this server takes (FWDPRUNE_MAX_JOB_SECONDS, FWDPRUNE_JOB_LIMITS): one
    422 naming every field over its limit."""
    errors = [
        {"loc": loc, "msg": message, "type": "less_than_equal"}
        for loc, message in settings.job_limits.exceeded(body)
    ]
    for field in ("max_time", "time_limit"):
        seconds = getattr(body, field)
        if seconds is not None and seconds > settings.max_job_seconds:
            message = (
                f"{field} {seconds:g} s is more than this server allows: at most "
                f"{settings.max_job_seconds:g} s (FWDPRUNE_MAX_JOB_SECONDS)"
            )
            errors.insert(0, {"loc": ["body", field], "msg": message, "type": "less_than_equal"})
    if errors:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)


def _check_room(owner: str, settings: Settings, store: Store) -> None:
    """Refuse a job while the key's files and published checkpoints fill its stored-bytes quota: the job
    would publish more."""
    limit = settings.max_stored_bytes_per_key
    if store.stored_bytes(owner) >= limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"this key's files and published checkpoints already hold the {limit} bytes it may keep "
            "(FWDPRUNE_MAX_STORED_BYTES_PER_KEY), and a job publishes more; delete files or jobs it no "
            "longer needs",
        )


def _within_the_servers_time(body: JobCreate, settings: Settings) -> JobCreate:
    """The job as it runs: the server's longest job (FWDPRUNE_MAX_JOB_SECONDS) is its max_time unless it
    asks for less, so the engine cuts the work to fit (without stretching it, as time_limit would)."""
    return body.model_copy(update={"max_time": body.max_time or settings.max_job_seconds})


def _resolve_inputs(body: JobCreate, owner: str | None, settings: Settings, store: Store) -> JobInputs:
    """The job's model by name and where its files are; the settings were validated with the body."""
    _check_model(body, settings)
    if body.recovery_file is not None and body.recover == "none":  # never read: refused, not ignored
        message = RECOVERY_TEXT_WITHOUT_RECOVERY.format(field="recovery_file")
        raise unprocessable(["body", "recovery_file"], message)
    keys: dict[str, str] = {}
    for field, file_id in body.file_ids().items():
        row = store.get_file(file_id, owner)
        if row is None:
            raise unprocessable(["body", field], f"file {file_id!r} does not exist")
        keys[JobCreate.FILE_FIELDS[field]] = row.path
    return JobInputs(model=body.model, revision=body.revision, **keys)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "the job already made with this Idempotency-Key"},
        413: {"description": "the key's files and published checkpoints fill its stored-bytes quota"},
        422: {"description": "invalid request, or one over the server's limits on a job"},
        429: {"description": "the key has as many queued jobs as it may (see Retry-After)"},
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
    # the request as sent names the idempotent retry; the one stored is as it runs
    request_hash = hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    if idempotency_key is not None:
        # a retry gets the job as it was made, its model, files and limits not checked again: a file it
        # named may have been deleted since it finished
        try:
            replayed = store.replayed_job(principal.owner, idempotency_key, request_hash)
        except IdempotencyConflict as err:
            raise _idempotency_conflict() from err
        if replayed is not None:
            response.status_code = status.HTTP_200_OK
            return to_public(replayed)
    _check_limits(body, settings)
    _check_room(principal.owner, settings, store)
    body = _within_the_servers_time(body, settings)
    request = body.model_dump(mode="json")
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
        gpus=body.gpus or 0,  # 0: one GPU where the worker has any, else the CPU
        min_gpu_memory_bytes=_gib_in_bytes(body.min_gpu_memory_gib),
    )
    file_ids = body.file_ids()
    try:
        job, created = store.create_job(
            row, list(file_ids.values()), max_queued=settings.max_queued_jobs_per_key
        )
    except QueueFull as err:  # waiting is the remedy: a queued job of the key's starts soon enough
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{err} (FWDPRUNE_MAX_QUEUED_JOBS_PER_KEY); submit again once some have started",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
        ) from err
    except FileGone as err:
        field = next(field for field, file_id in file_ids.items() if file_id == str(err))
        raise unprocessable(
            ["body", field], f"file {str(err)!r} was deleted while the job was being created"
        ) from err
    except IdempotencyConflict as err:
        raise _idempotency_conflict() from err
    if not created:
        response.status_code = status.HTTP_200_OK
    return to_public(job)


def _idempotency_conflict() -> HTTPException:
    return unprocessable(
        ["header", "idempotency-key"], "this Idempotency-Key was already used with a different request body"
    )


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
                # where a job ran (hosts, pids, GPU UUIDs) is for admins; the owner sees what it used
                data=_redacted(e.data if principal.admin else shown_to_owner(e.type, e.data)),
            )
            for e in events
        ],
        next_after=events[-1].seq if events else after,
    )


def _redacted(data: dict[str, Any]) -> dict[str, Any]:
    """An event's data with what names the servers (SQL, worker ids, hosts, paths) cut from its messages
    (warnings, and a failure's error)."""
    cleaned = dict(data)
    if isinstance(cleaned.get("message"), str):
        cleaned["message"] = public_message(cleaned["message"])
    error = cleaned.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        cleaned["error"] = {**error, "message": public_message(error["message"])}
    return cleaned


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"description": "the job is running"}},
)
def delete_job(job_id: str, principal: PrincipalDep, store: StoreDep, storage: StorageDep) -> Response:
    row = _job(store, job_id, principal)
    if row.status in ACTIVE or not store.delete_job(job_id):
        raise HTTPException(status.HTTP_409_CONFLICT, "the job is running; cancel it first")
    try:
        storage.delete_prefix(job_prefix(job_id))  # every attempt's uploads, published or not
    except StorageError as err:  # the job is gone; a worker's sweep removes what is left of it
        log.warning("job %s: its stored artifacts could not be deleted: %s", job_id, err)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=NOT_FOUND)
def list_artifacts(job_id: str, principal: PrincipalDep, store: StoreDep) -> ArtifactList:
    row = _job(store, job_id, principal)
    return ArtifactList(data=[ArtifactPublic(**a) for a in row.artifacts or []])


def _published(row: JobRow) -> list[dict[str, Any]]:
    """The artifacts a succeeded job published; only those are ever served."""
    if row.status != "succeeded" or not row.artifacts:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "the job has no artifacts (yet)")
    return row.artifacts


ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    200: {"content": {"application/octet-stream": {}}},
    206: {"description": "the requested range; several ranges come as multipart/byteranges"},
    307: {"description": "FWDPRUNE_STORAGE_PRESIGN: a presigned URL of the object store to GET it from"},
    400: {"description": "a Range header that cannot be parsed"},
    416: {"description": "a range that starts past the end of the file"},
    503: {"description": "the object store could not be reached"},
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
    job_id: str,
    name: str,
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    store: StoreDep,
    storage: StorageDep,
) -> Response:
    """One artifact; Range, If-Range (against the sha256 ETag, or from local storage Last-Modified) and
    HEAD as in RFC 9110. From an object store it is streamed through (a single range is read as just that
    range), or with FWDPRUNE_STORAGE_PRESIGN a 307 sends the client to a short-lived presigned URL."""
    row = _job(store, job_id, principal)
    _published(row)
    entry = _artifact_entry(row, name)
    key = artifact_key(row.id, entry)
    headers = {"ETag": f'"{entry["sha256"]}"', "X-Checksum-Sha256": entry["sha256"]}
    path = storage.local_path(key)
    if path is not None:
        return _file_response(path, headers)
    if request.method == "HEAD":
        return object_head(storage, key, headers)
    if settings.storage_presign:
        return presigned_redirect(storage, key, settings.storage_presign_expiry_s)
    return object_response(request, storage, key, int(entry["bytes"]), headers)


def _file_response(path: Path, headers: dict[str, str]) -> FileResponse:
    try:
        stat = path.stat()
    except FileNotFoundError as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such artifact") from err
    # FileResponse keeps a given ETag (its own is an mtime/size hash) and compares If-Range against it
    return FileResponse(path, media_type="application/octet-stream", headers=headers, stat_result=stat)


@router.get(
    "/{job_id}/checkpoint.tar",
    response_class=StreamingResponse,
    responses={**NOT_FOUND, 200: {"content": {"application/x-tar": {}}}},
)
def download_checkpoint(
    job_id: str,
    principal: PrincipalDep,
    store: StoreDep,
    storage: StorageDep,
    size: Annotated[
        str | None,
        Query(
            pattern=SIZE_FOLDER,
            description="a job with several sizes: one size's folder (sparsity-0.35), its files alone",
        ),
    ] = None,
) -> Response:
    """Every artifact in one tar (or one size's, under the job's id and the size's folder), read from
    storage as it streams out."""
    row = _job(store, job_id, principal)
    published = _published(row)
    if size is not None:
        published = [a for a in published if a["name"].startswith(size + "/")]
        if not published:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "the job has no such size")
    members = [(a["name"], artifact_key(row.id, a)) for a in published]
    name = row.id if size is None else f"{row.id}-{size}"
    return StreamingResponse(
        stream_tar(storage, members, row.id),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{name}.tar"'},
    )
