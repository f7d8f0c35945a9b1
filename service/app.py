"""The FastAPI app factory and its lifespan: Redis clients, registry, blobs, inference client."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from adapters_store.blobstore import open_blob_store
from adapters_store.keys import Keys
from adapters_store.logs import configure_logging
from adapters_store.redis_client import async_client, sync_client
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from service.docs_pages import install_docs
from service.errors import install_error_handlers
from service.inference_client import InferenceClient
from service.limits import BodyLimitMiddleware
from service.live import LiveView
from service.metrics import HttpMetricsMiddleware, Metrics
from service.request_ids import RequestIdMiddleware
from service.routes import adapters, health, jobs, merges, models, tasks
from service.routes.page import install_page

logger = logging.getLogger(__name__)
CLOSE_TIMEOUT_S = 2.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    keys = Keys(settings.key_prefix)
    client = sync_client(settings.redis_url)
    aclient = async_client(settings.redis_url)
    registry = Registry(client, keys)
    inference = InferenceClient(aclient, keys, settings)
    try:
        registry.ensure_groups()
        app.state.registry = registry
        app.state.blobs = open_blob_store(settings)
        app.state.live = LiveView(registry, aclient)
        app.state.inference = inference
        app.state.metrics = Metrics(registry)
        await inference.start()
        await app.state.live.start()
        logger.info("api %s up (prefix %s, strategy %s)", inference.api_id, settings.key_prefix,
                    settings.strategy)
        yield
    finally:
        if getattr(app.state, "live", None) is not None:
            await app.state.live.stop()
        await inference.stop()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await aclient.aclose()
        except TimeoutError:  # closing sockets must not keep the process from exiting
            logger.warning("api %s: closing redis connections took over %.0fs; leaving them",
                           inference.api_id, CLOSE_TIMEOUT_S)
        client.close()
        logger.info("api %s stopped", inference.api_id)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``uvicorn service.app:create_app --factory`` reads settings from the env
    (that call is the API process's entry point, so it also sets up logging)."""
    if settings is None:
        settings = Settings()
        configure_logging(settings)
    # Docs pages are installed below with local assets: FastAPI's defaults load them from a CDN.
    app = FastAPI(title="adapterd", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="Serving continually learned, shared adapters over one base model.")
    app.state.settings = settings
    install_error_handlers(app)
    # Added last = outermost: metrics also see the 413s the limit middleware answers itself,
    # and every response of ours, those 413s included, carries the request id.
    app.add_middleware(BodyLimitMiddleware, settings=app.state.settings)
    app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    for module in (tasks, jobs, merges, adapters, models, health):
        app.include_router(module.router)
    install_docs(app)
    install_page(app)
    return app
