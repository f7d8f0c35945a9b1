"""Liveness, readiness and the Prometheus scrape endpoint (no auth: probes and scrapers)."""

from __future__ import annotations

import logging
from typing import Annotated

import redis
from fastapi import APIRouter, Query, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import MetricsDep, RegistryDep
from service.errors import NotReady
from service.schemas import ErrorResponse, Health, Ready

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": ErrorResponse}})
def readyz(registry: RegistryDep, need_worker: Annotated[bool, Query(
        description="false: ready once Redis answers (an orchestrator's probe, so that the "
        "API takes traffic while workers scale from zero)")] = True) -> Ready:
    # Not cached: a probe must see a worker the moment it beats, and go unready when it stops.
    try:
        registry.r.ping()
        workers = sum(1 for hb in registry.heartbeats() if hb.kind == "inference")
        live = registry.live_version()
    except redis.RedisError as exc:
        logger.warning("readiness: Redis unreachable: %s", exc)
        raise NotReady("Redis is unreachable", {"missing": ["redis"], "redis": "unreachable",
                                                "inference_workers": None}) from exc
    if workers == 0 and need_worker:
        raise NotReady("no inference worker is alive",
                       {"missing": ["inference_worker"], "redis": "ok", "inference_workers": 0})
    return Ready(status="ready", redis="ok", inference_workers=workers, live_version=live)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
