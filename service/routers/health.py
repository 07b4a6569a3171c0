"""Liveness, readiness and Prometheus metrics.

Probes carry no keys: /healthz and the status code of /readyz are open. What they would reveal beyond
that (worker ids, job counts, the metrics themselves) is shown to admin keys only, unless the
`public_metrics` setting opens it to all.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from service.auth import authenticate
from service.datadir import DataDirs
from service.deps import SettingsDep, StoreDep, bearer
from service.metrics import CONTENT_TYPE, ServiceMetrics

router = APIRouter(tags=["health"])
log = logging.getLogger("fwdprune.health")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


class Health(BaseModel):
    status: str
    store: bool | None = None
    data_dir: bool | None = None
    workers: int | None = None
    worker_ids: list[str] | None = None
    jobs: dict[str, int] | None = None


def _may_see_details(request: Request, credentials: HTTPAuthorizationCredentials | None) -> bool:
    """Whether this caller sees the service's internals: an admin key, or everyone with public_metrics."""
    if request.app.state.settings.public_metrics:
        return True
    token = credentials.credentials if credentials is not None else None
    principal = authenticate(request.app.state.settings, request.app.state.key_hashes, token)
    return principal is not None and principal.admin


@router.get("/healthz", response_model=Health, response_model_exclude_none=True)
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health}},
)
def readyz(
    request: Request, response: Response, settings: SettingsDep, store: StoreDep, credentials: CredentialsDep
) -> Health:
    """Ready when the data directory is the one found at start and takes writes, the store answers
    (SQLite: from the file it opened), and a worker sent a heartbeat recently (by the database's clock)."""
    data_dirs: DataDirs = request.app.state.data_dirs
    problem = data_dirs.problem()
    if problem is not None:
        log.warning("not ready: %s", problem)
    reachable = store.ping()
    live = []
    if reachable:
        try:
            live = list(store.live_workers(settings.heartbeat_timeout_s))
        except Exception:  # reachable a moment ago, failing now: not ready either way
            reachable = False
    ready = problem is None and reachable and bool(live)
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    health = Health(status="ready" if ready else "unavailable")
    if _may_see_details(request, credentials):
        health.data_dir = problem is None
        health.store = reachable
        health.workers = len(live)
        health.worker_ids = sorted(w.id for w in live)
        health.jobs = store.count_by_status() if reachable else None
    return health


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, credentials: CredentialsDep) -> PlainTextResponse:
    if not _may_see_details(request, credentials):
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "an admin key is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raise HTTPException(status.HTTP_403_FORBIDDEN, "an admin key is required")
    app_metrics: ServiceMetrics = request.app.state.metrics
    return PlainTextResponse(app_metrics.render(), media_type=CONTENT_TYPE)
