"""Dependency aliases for what the lifespan builds once per process and keeps on app.state."""

# Every getter is ``async def``: FastAPI runs a plain ``def`` dependency on a worker thread, and
# predict's six cost more than its whole route (a thread hop each, measured at concurrency 1).

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from adapters_store.blobstore import Blobs
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from service.inference_client import InferenceClient
from service.live import LiveView
from service.metrics import Metrics


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


async def get_blobs(request: Request) -> Blobs:
    return request.app.state.blobs


async def get_inference(request: Request) -> InferenceClient:
    return request.app.state.inference


async def get_live(request: Request) -> LiveView:
    return request.app.state.live


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[Registry, Depends(get_registry)]
BlobsDep = Annotated[Blobs, Depends(get_blobs)]
InferenceDep = Annotated[InferenceClient, Depends(get_inference)]
LiveDep = Annotated[LiveView, Depends(get_live)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
