"""The API's side of the inference stream: enqueue requests, await replies on a private stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import redis
import redis.asyncio as aioredis

from adapters_store.errors import (
    AdapterdError,
    InvalidInput,
    NotFound,
    NoWorker,
    Overloaded,
    Timeout,
)
from adapters_store.keys import Keys
from adapters_store.settings import Settings
from adapters_store.streams import FIELD, InferenceReply, InferenceRequest, InputItem
from service.background import stop_task
from service.errors import UpstreamError

logger = logging.getLogger(__name__)

_REPLY_ERRORS: dict[str, type[AdapterdError]] = {
    "not_found": NotFound,
    "invalid_input": InvalidInput,
    "overloaded": Overloaded,
    "timeout": Timeout,
    "no_worker": NoWorker,
}
READ_BLOCK_MS = 1000
READ_COUNT = 256
# Read replies are trimmed at most this often (one round trip per interval, not one per batch:
# at concurrency 1 that was one of the few round trips each request paid).
FORGET_EVERY_S = 0.5
STOP_REDIS_TIMEOUT_S = 2.0


# XADD unless the stream already holds ARGV[1] entries: returns -1 when queued, else the depth.
_ENQUEUE = f"""
local depth = redis.call('XLEN', KEYS[1])
if depth >= tonumber(ARGV[1]) then return depth end
redis.call('XADD', KEYS[1], '*', '{FIELD}', ARGV[2])
return -1
"""


def reply_error(reply: InferenceReply) -> AdapterdError:
    assert reply.error is not None
    cls = _REPLY_ERRORS.get(reply.error.code, UpstreamError)
    details = {"worker_id": reply.worker_id, "version": reply.version,
               "worker_code": reply.error.code}
    return cls(reply.error.message, details)


class InferenceClient:
    """One per API process. Replies come back on ``reply:<api_id>``; one reader task resolves the
    futures of all in-flight requests, so a request costs one XADD and no extra connection."""

    def __init__(self, client: aioredis.Redis, keys: Keys, settings: Settings) -> None:
        self.r = client
        self.keys = keys
        self.settings = settings
        self.api_id = "api-" + uuid.uuid4().hex[:12]
        self.reply_stream = keys.reply_stream(self.api_id)
        # If this API dies, its reply stream expires instead of lingering forever.
        self.reply_ttl_ms = int(max(60.0, 4 * settings.request_timeout_s) * 1000)
        self._pending: dict[str, asyncio.Future[InferenceReply]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._enqueue = client.register_script(_ENQUEUE)

    async def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_replies(), name=self.api_id)

    async def stop(self) -> None:
        if self._reader is not None:
            await stop_task(self._reader)
            self._reader = None
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        # Bounded: a shutdown must not wait on a Redis that stopped answering.
        with contextlib.suppress(redis.RedisError, TimeoutError):
            async with asyncio.timeout(STOP_REDIS_TIMEOUT_S):
                await self.r.delete(self.reply_stream)

    async def predict(self, task_id: str, inputs: list[InputItem], version: str | None = None,
                      http_request_id: str | None = None) -> InferenceReply:
        timeout = self.settings.request_timeout_s
        now = time.time()
        request = InferenceRequest(
            request_id=uuid.uuid4().hex, task_id=task_id, inputs=inputs,
            reply_to=self.reply_stream, version=version, enqueued_at=now, deadline=now + timeout,
            http_request_id=http_request_id,
        )
        future: asyncio.Future[InferenceReply] = asyncio.get_running_loop().create_future()
        # Register before XADD: a fast worker can answer before XADD's own reply reaches us.
        self._pending[request.request_id] = future
        try:
            # The depth check and the enqueue in one round trip, atomically (a script).
            depth = await self._enqueue(keys=[self.keys.infer_stream],
                                        args=[self.settings.max_queue_depth,
                                              request.model_dump_json()])
            if depth >= 0:
                limit = self.settings.max_queue_depth
                raise Overloaded("the inference queue is full, retry later",
                                 {"queue_depth": depth, "max_queue_depth": limit})
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError as exc:
            logger.warning("request %s for task %s timed out after %.1fs", request.request_id,
                           task_id, timeout)
            raise Timeout(f"no inference reply within {timeout:g}s",
                          {"request_id": request.request_id, "timeout_s": timeout}) from exc
        finally:
            self._pending.pop(request.request_id, None)
        if reply.error is not None:
            raise reply_error(reply)
        return reply

    async def _read_replies(self) -> None:
        last_id = "0-0"
        forgotten_at, unforgotten = time.monotonic(), False
        backoff = 0.1
        while True:
            try:
                batches = await self.r.xread({self.reply_stream: last_id}, count=READ_COUNT,
                                             block=READ_BLOCK_MS)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                # Keep going: in-flight requests time out on their own; new ones may succeed.
                logger.warning("reply reader %s: %s; retrying in %.1fs", self.api_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for _stream, entries in batches or []:
                if not entries:
                    continue
                last_id = entries[-1][0]
                try:
                    self._dispatch(entries)
                except Exception:
                    # A reader that dies would turn every later predict into a timeout.
                    logger.exception("reply reader %s failed on a batch", self.api_id)
            unforgotten = unforgotten or bool(batches)
            if unforgotten and time.monotonic() - forgotten_at >= FORGET_EVERY_S:
                await self._forget(last_id)
                forgotten_at, unforgotten = time.monotonic(), False

    def _dispatch(self, entries: list) -> None:
        for entry_id, fields in entries:
            try:
                reply = InferenceReply.from_fields(fields)
            except ValueError as exc:
                logger.warning("bad reply entry %s on %s: %s", entry_id, self.reply_stream, exc)
                continue
            future = self._pending.get(reply.request_id)
            if future is None or future.done():
                # The caller already timed out (or was cancelled); nobody is waiting.
                logger.debug("late reply for request %s (task %s)", reply.request_id,
                             reply.task_id)
                continue
            future.set_result(reply)

    async def _forget(self, last_id: bytes | str) -> None:
        """Drop every reply up to ``last_id`` (all read) and push the stream's expiry out."""
        ms, _, seq = (last_id.decode() if isinstance(last_id, bytes) else last_id).partition("-")
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.xtrim(self.reply_stream, minid=f"{ms}-{int(seq or 0) + 1}")
                pipe.pexpire(self.reply_stream, self.reply_ttl_ms)
                await pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not trim reply stream %s: %s", self.reply_stream, exc)
