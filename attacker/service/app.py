"""``create_app(settings)``: the audit service as a FastAPI application.

The lifespan opens the job store, gives back jobs a previous run left
"running" (interrupted, or queued again), then starts the worker pool; on
shutdown it stops the workers, which hand their running jobs back the same way.
Every route but ``/healthz`` and the console requires the bearer token, the
OpenAPI schema (``/openapi.json``) and the Prometheus metrics (``/metrics``)
included; the metrics registry is this app's own, read from its job store. The
console (``/console``, a browser's view of the same service) logs in with the
token once and then holds a session cookie (``attacker.service.console``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from attacker.service.api.deps import require_token
from attacker.service.api.routes import audits, catalog, health, metrics
from attacker.service.api.schemas import ErrorBody, OpenApiResponses
from attacker.service.config import ServiceSettings
from attacker.service.console.router import router as console_router
from attacker.service.console.session import SessionKeys
from attacker.service.errors import install_error_handlers
from attacker.service.guard import RequestGuard
from attacker.service.jobs import JobStore
from attacker.service.metrics import create_registry
from attacker.service.supervisor import WorkerPool

logger = logging.getLogger(__name__)

UNAUTHORIZED: OpenApiResponses = {401: {"model": ErrorBody, "description": "missing or invalid bearer token"}}


def create_app(settings: ServiceSettings, *, start_workers: bool = True, log_level: str = "INFO") -> FastAPI:
    """The application; with ``start_workers=False`` jobs queue up but never run (schema export, tests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = JobStore(settings.db_path)
        recovered = store.recover_running(settings.on_restart)
        if recovered:
            logger.warning(
                "%d audit(s) were running when the service last stopped: %s", len(recovered), settings.on_restart
            )
        settings.resolved_results_dir.mkdir(parents=True, exist_ok=True)
        pool = WorkerPool(settings, store, log_level=log_level) if start_workers else None
        app.state.settings, app.state.store, app.state.pool = settings, store, pool
        app.state.metrics = create_registry(store)
        if pool is not None:
            pool.start()
        logger.info(
            "audit service ready: bundles %s, captures %s, db %s, %d worker(s), auth %s",
            settings.bundles_dir, settings.captures_dir, settings.db_path, settings.max_jobs,
            "on" if settings.auth_required else "OFF (--insecure-no-auth)",
        )
        try:
            yield
        finally:
            if pool is not None:
                pool.stop()

    app = FastAPI(
        title="CEM audit service",
        version="1.0.0",
        summary="Run model-inversion audits against split-inference bundles and captured traffic.",
        lifespan=lifespan,
        openapi_url=None,  # served below behind the token; the Swagger/ReDoc pages would need a CDN anyway
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestGuard, token=settings.token)  # before any body is read (attacker.service.guard)
    install_error_handlers(app)  # after the middleware: its catch-all wraps them too

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_token)])
    def get_openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.include_router(health.router)
    protected = [Depends(require_token)]
    app.include_router(catalog.router, dependencies=protected, responses=UNAUTHORIZED)
    app.include_router(audits.router, dependencies=protected, responses=UNAUTHORIZED)
    app.include_router(metrics.router, dependencies=protected)
    app.state.console_keys = SessionKeys.from_token(settings.token)
    app.include_router(console_router)
    return app
