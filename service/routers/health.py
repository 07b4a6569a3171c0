"""Liveness, readiness and Prometheus metrics (no auth: probes and scrapers carry no keys)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel

from service.deps import SettingsDep, StoreDep
from service.metrics import CONTENT_TYPE, ServiceMetrics

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    store: bool | None = None
    workers: int | None = None


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(response: Response, settings: SettingsDep, store: StoreDep) -> Health:
    reachable = store.ping()
    live = 0
    if reachable:
        now = time.time()
        live = sum(now - w.heartbeat_at <= settings.heartbeat_timeout_s for w in store.workers())
    ready = reachable and live > 0
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ready" if ready else "unavailable", store=reachable, workers=live)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    app_metrics: ServiceMetrics = request.app.state.metrics
    return PlainTextResponse(app_metrics.render(), media_type=CONTENT_TYPE)
