"""The app factory, wiring only: `fwdprune serve` runs it (or uvicorn --factory service.main:app_from_env)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from service.datadir import DataDirs
from service.errors import storage_unavailable, validation_error
from service.guard import CONSOLE_ASSETS, DOCS_ASSETS, RequestGuard
from service.leftovers import sweep_every, sweep_quietly
from service.metrics import RequestMetrics, ServiceMetrics
from service.objects.backends import open_storage
from service.objects.storage import StorageError
from service.routers import console, docs, files, health, jobs, models
from service.settings import Settings
from service.store import Store


def create_app(settings: Settings, store: Store | None = None) -> FastAPI:
    settings.check_serve()  # fail closed before anything listens
    storage = open_storage(settings)
    settings.ensure_dirs()  # the only place the API makes its directories
    data_dirs = DataDirs.at_start((settings.data_dir, settings.files_dir, settings.jobs_dir))
    owned = store is None
    store = store or Store(settings.db_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # what interrupted uploads left: swept before the first request, then every interval
        await run_in_threadpool(sweep_quietly, settings, store, storage)
        sweeps = asyncio.create_task(sweep_every(settings, store, storage))
        try:
            yield
        finally:
            sweeps.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeps
            if owned:
                store.close()

    app = FastAPI(
        title="fwdprune",
        version="0.1.0",
        lifespan=lifespan,
        description="Forward-only structured pruning of Hugging Face models, as a service.",
        docs_url=None,  # service.routers.docs serves /docs from local assets; FastAPI's loads a CDN's
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.storage = storage
    app.state.data_dirs = data_dirs
    app.state.key_hashes = settings.key_hashes()
    app.state.metrics = ServiceMetrics(store, settings.heartbeat_timeout_s)
    # the last added runs first: metrics see every answer, the guard's 401 and 413 refusals included
    app.add_middleware(RequestGuard)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StorageError, storage_unavailable)
    for router in (health.router, files.router, jobs.router, models.router, docs.router, console.router):
        app.include_router(router)
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs.ASSETS_DIR), name=docs.ASSETS_ROUTE)
    app.mount(CONSOLE_ASSETS, console.AssetFiles(directory=console.ASSETS_DIR), name=console.ASSETS_ROUTE)
    return app


def app_from_env() -> FastAPI:
    return create_app(Settings())
