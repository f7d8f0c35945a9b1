"""Cached views for predict: the live bank manifest and whether an inference worker is alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio
import redis
import redis.asyncio as aioredis

from adapters_store.records import BankManifest
from adapters_store.registry import Registry

MANIFEST_CACHE_SIZE = 8
WORKER_CACHE_S = 1.0
# How often the API looks for a staged version to parse before it goes live.
STAGED_POLL_S = 0.1

log = logging.getLogger(__name__)


class LiveView:
    """Manifests are immutable, so caching one by version is always correct; a request costs one
    async GET of the live pointer, and a manifest is parsed again only when the pointer moves."""

    def __init__(self, registry: Registry, client: aioredis.Redis) -> None:
        self.registry = registry
        self.r = client
        self._manifests: dict[str, BankManifest] = {}
        self._worker_seen_at = float("-inf")
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Parse staged versions ahead of their publish, so the first predict after a swap
        does not wait for a large manifest to parse."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_staged(), name="staged-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch_staged(self) -> None:
        failed: set[str] = set()
        while True:
            version = None
            try:
                raw = await self.r.get(self.registry.keys.staged)
                version = raw.decode() if isinstance(raw, bytes) else raw
                if version is not None and version not in failed:
                    await self.manifest(version)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:  # predict still parses it when live
                log.debug("staged manifest not parsed ahead: %s", exc)
            except Exception:  # noqa: BLE001 - a bad staged record must not stop the watcher
                log.exception("staged manifest %s could not be parsed", version)
                failed.add(version)
            await asyncio.sleep(STAGED_POLL_S)

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
