"""The FastAPI application factory: models load once at start, routers per concern, errors mapped once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from core.config import Settings
from core.model_config import ModelRegistry
from core.query_log import QueryLog

from api.analytics import AnalyticsCache
from api.catalogue import Catalogue
from api.errors import install_error_handlers
from api.guards import RequestGuard
from api.metrics import Metrics, MetricsMiddleware
from api.responses import RedactedJSONResponse
from api.jobs import JobManager
from api.routes import admin, analytics, explain, jobs, products, search, system

logger = logging.getLogger(__name__)

DESCRIPTION = """Visual product search over several catalogues ("models"), each with its own CLIP
embeddings and FAISS index. Scores are cosine similarity in [-1, 1]. Admin routes need header
`X-API-Key` equal to the server's `IMAGESEARCH_API_KEY`."""


def create_app(settings: Settings, *, registry: ModelRegistry | None = None, watch_interval: float = 1.0) -> FastAPI:
    """Build the app. Models, heads and indexes load in the lifespan (once, at start); a model that
    cannot load is reported by /health and answers 503 while the others serve."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalogue = Catalogue(settings, registry, watch_interval=watch_interval)
        await to_thread.run_sync(catalogue.start)
        app.state.catalogue = catalogue
        app.state.query_log.start()
        app.state.jobs = JobManager(settings)
        await to_thread.run_sync(app.state.jobs.start)
        try:
            yield
        finally:
            app.state.jobs.stop()
            await to_thread.run_sync(app.state.query_log.stop)
            await to_thread.run_sync(catalogue.stop)

    if registry is None:
        ModelRegistry.discover(settings)  # a bad model.json fails here, before the server starts
    # /docs and /redoc serve Swagger UI and ReDoc from the installed package, not a CDN: they work offline
    app = FastAPIOffline(title="Multi-model image search", description=DESCRIPTION, version="1.0", lifespan=lifespan,
                         default_response_class=RedactedJSONResponse)  # no URL credentials in any JSON body
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.query_log = QueryLog(settings)
    app.state.analytics = AnalyticsCache()
    app.add_middleware(RequestGuard, settings=settings)  # inner: metrics (outermost) counts what it refuses
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    # search first: /all/search before /{model}/search
    for module in (system, search, explain, products, admin, jobs, analytics):
        app.include_router(module.router)
    return app
