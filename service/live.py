"""Cached views for predict: the live bank manifest and whether an inference worker is alive."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import anyio
import redis
import redis.asyncio as aioredis

from adapters_store.collector import collector_held
from adapters_store.records import BankManifest
from adapters_store.registry import Registry, as_text
from service.background import stop_task

MANIFEST_CACHE_SIZE = 8
WORKER_CACHE_S = 1.0
# How often the API looks for a staged version to parse before it goes live, and refreshes its
# copy of the live pointer.
STAGED_POLL_S = 0.1
# A predict trusts a live pointer read this recently instead of a GET of its own (one round trip
# of the few a request makes). Stale by at most this long, it can only send a request the worker
# then answers from its own, newer live version; a task missing from it is looked up afresh.
LIVE_POINTER_MAX_AGE_S = 0.25

log = logging.getLogger(__name__)


def _yield_gil() -> None:
    time.sleep(0)


class LiveView:
    """Manifests are immutable, so caching one by version is always correct; a request costs one
    async GET of the live pointer, and a manifest is parsed again only when the pointer moves."""

    def __init__(self, registry: Registry, client: aioredis.Redis) -> None:
        self.registry = registry
        self.r = client
        self._manifests: dict[str, BankManifest] = {}
        self._worker_seen_at = float("-inf")
        self._watcher: asyncio.Task[None] | None = None
        self._live: str | None = None
        self._forgot_at = float("-inf")
        self._live_read_at = float("-inf")

    async def start(self) -> None:
        """Parse staged versions ahead of their publish, so the first predict after a swap
        does not wait for a large manifest to parse."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_staged(), name="staged-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            await stop_task(self._watcher)
            self._watcher = None

    async def _watch_staged(self) -> None:
        failed: set[str] = set()
        while True:
            version = None
            try:
                read_at = time.monotonic()
                raw, live = await self.r.mget(self.registry.keys.staged, self.registry.keys.live)
                self._remember_live(live, read_at)
                version = as_text(raw)
                if version is not None and version not in failed \
                        and version not in self._manifests:
                    with collector_held():  # a thousand-task parse must not set off a full GC
                        await self.manifest(version)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:  # predict still parses it when live
                log.debug("staged manifest not parsed ahead: %s", exc)
            except Exception:  # noqa: BLE001 - a bad staged record must not stop the watcher
                log.exception("staged manifest %s could not be parsed", version)
                failed.add(version)
            await asyncio.sleep(STAGED_POLL_S)

    async def live_version(self, fresh: bool = True) -> str | None:
        """The live pointer; with ``fresh=False`` a copy read in the last
        ``LIVE_POINTER_MAX_AGE_S`` will do."""
        if not fresh and time.monotonic() - self._live_read_at < LIVE_POINTER_MAX_AGE_S:
            return self._live
        read_at = time.monotonic()
        raw = await self.r.get(self.registry.keys.live)
        self._remember_live(raw, read_at)
        return self._live

    def forget_live(self) -> None:
        """This process just moved the pointer (rollback, delete): the next predict reads it,
        and a read begun before now is not remembered."""
        self._live_read_at = float("-inf")
        self._forgot_at = time.monotonic()

    def _remember_live(self, raw: bytes | str | None, read_at: float) -> None:
        if read_at >= self._live_read_at and read_at > self._forgot_at:
            self._live = as_text(raw)
            self._live_read_at = read_at

    async def manifest(self, version: str) -> BankManifest:
        """The manifest of ``version``; NotFound if it was never published."""
        cached = self._manifests.get(version)
        if cached is not None:
            return cached
        # Parsed on a thread that yields the GIL every few records, so the event loop keeps
        # answering while a large manifest parses.
        manifest = await anyio.to_thread.run_sync(
            functools.partial(self.registry.manifest, version, pause=_yield_gil))
        if len(self._manifests) >= MANIFEST_CACHE_SIZE:
            self._manifests.pop(next(iter(self._manifests)))
        self._manifests[version] = manifest
        return manifest

    async def is_staged(self, version: str) -> bool:
        """Read fresh (a pinned request is rare): a staged version turns published at once."""
        return as_text(await self.r.get(self.registry.keys.staged)) == version

    async def live_manifest(self, fresh: bool = True) -> BankManifest | None:
        version = await self.live_version(fresh)
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
