"""Routes of the adapter bank: modules per layer with their users, versions, and rollback."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from service.auth import AdminAuth, ReadAuth
from service.deps import LiveDep, RegistryDep
from service.schemas import (
    AdaptersView,
    ErrorResponse,
    RollbackRequest,
    VersionEntry,
    VersionsView,
)
from service.views import adapters_view

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["bank"])


@router.get("/adapters", response_model=AdaptersView, dependencies=[ReadAuth])
def get_adapters(registry: RegistryDep) -> AdaptersView:
    return adapters_view(registry.live_manifest())


@router.get("/bank/versions", response_model=VersionsView, dependencies=[ReadAuth])
def get_versions(registry: RegistryDep) -> VersionsView:
    history = [VersionEntry.model_validate(e) for e in registry.versions()]
    return VersionsView(live_version=registry.live_version(), history=history)


@router.post("/bank/rollback", response_model=VersionEntry, dependencies=[AdminAuth],
             responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
def rollback(body: RollbackRequest, registry: RegistryDep, live: LiveDep) -> VersionEntry:
    entry = registry.rollback(body.version)
    live.forget_live()
    logger.info("bank rolled back from %s to %s", entry.get("previous"), body.version)
    return VersionEntry.model_validate(entry)
