"""Cached views for predict: the live bank manifest and whether an inference worker is alive."""

from __future__ import annotations

import time

import anyio
import redis.asyncio as aioredis

from adapters_store.records import BankManifest
from adapters_store.registry import Registry

MANIFEST_CACHE_SIZE = 8
WORKER_CACHE_S = 1.0


class LiveView:
    """Manifests are immutable, so caching one by version is always correct; a request costs one
    async GET of the live pointer, and a manifest is parsed again only when the pointer moves."""

    def __init__(self, registry: Registry, client: aioredis.Redis) -> None:
        self.registry = registry
        self.r = client
        self._manifests: dict[str, BankManifest] = {}
        self._worker_seen_at = float("-inf")

    async def live_version(self) -> str | None:
        raw = await self.r.get(self.registry.keys.live)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def manifest(self, version: str) -> BankManifest:
        """The manifest of ``version``; NotFound if it was never published."""
        cached = self._manifests.get(version)
        if cached is not None:
            return cached
        manifest = await anyio.to_thread.run_sync(self.registry.manifest, version)
        if len(self._manifests) >= MANIFEST_CACHE_SIZE:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[version] = manifest
        return manifest

    async def live_manifest(self) -> BankManifest | None:
        version = await self.live_version()
        return await self.manifest(version) if version else None

    async def inference_worker_alive(self) -> bool:
        # Only a positive answer is cached: a worker that just started is seen at once, while a
        # busy API still reads heartbeats at most once a second.
        if time.monotonic() - self._worker_seen_at < WORKER_CACHE_S:
            return True
        beats = await anyio.to_thread.run_sync(self.registry.heartbeats)
        if any(hb.kind == "inference" for hb in beats):
            self._worker_seen_at = time.monotonic()
            return True
        return False
