"""Prometheus metrics of one API instance, in its own registry, plus the HTTP timing middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters_store.registry import Registry
from adapters_store.streams import InferenceReply

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _StoreCollector(Collector):
    """Values read from Redis at scrape time, so they are never stale and cost nothing between
    scrapes: inference queue depth, live bank version, live workers per kind."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def describe(self) -> Iterator[Metric]:
        # Describing without values keeps registration from touching Redis.
        yield GaugeMetricFamily("adapterd_inference_queue_depth", "Requests waiting in the "
                                "inference stream (XLEN)")
        yield GaugeMetricFamily("adapterd_live_version_info", "The live bank version",
                                labels=["version"])
        yield GaugeMetricFamily("adapterd_workers_alive", "Workers with a live heartbeat",
                                labels=["kind"])

    def collect(self) -> Iterator[Metric]:
        try:
            depth = self.registry.r.xlen(self.registry.keys.infer_stream)
            live = self.registry.live_version()
            beats = self.registry.heartbeats()
        except redis.RedisError as exc:
            logger.warning("metrics scrape could not read Redis: %s", exc)
            return
        yield GaugeMetricFamily("adapterd_inference_queue_depth",
                                "Requests waiting in the inference stream (XLEN)", value=depth)
        info = GaugeMetricFamily("adapterd_live_version_info", "The live bank version",
                                 labels=["version"])
        if live:
            info.add_metric([live], 1)
        yield info
        alive = GaugeMetricFamily("adapterd_workers_alive", "Workers with a live heartbeat",
                                  labels=["kind"])
        kinds: dict[str, int] = {}
        for hb in beats:
            kinds[hb.kind] = kinds.get(hb.kind, 0) + 1
        for kind, n in sorted(kinds.items()):
            alive.add_metric([kind], n)
        yield alive


class Metrics:
    """Per-app metrics; a registry per app keeps tests (many apps, one process) independent."""

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("adapterd_http_requests", "HTTP requests",
                                     ["method", "route", "status"], registry=r)
        self.http_latency = Histogram("adapterd_http_request_seconds", "HTTP request latency",
                                      ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.predict_requests = Counter("adapterd_predict_requests", "Predict requests served",
                                        ["task_id"], registry=r)
        self.predict_rows = Counter("adapterd_predict_rows", "Input rows predicted",
                                    ["task_id"], registry=r)
        self.batch_rows = Histogram("adapterd_inference_batch_rows",
                                    "Rows in the worker batch that served a request",
                                    buckets=_ROWS_BUCKETS, registry=r)
        self.batch_requests = Histogram("adapterd_inference_batch_requests",
                                        "Requests in the worker batch that served a request",
                                        buckets=_ROWS_BUCKETS, registry=r)
        self.queue_seconds = Histogram("adapterd_inference_queue_seconds",
                                       "Time a request waited before its batch ran",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("adapterd_inference_compute_seconds",
                                         "Forward time of the batch that served a request",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.uploads = Counter("adapterd_uploads", "Dataset uploads by outcome", ["outcome"],
                               registry=r)
        self.jobs_submitted = Counter("adapterd_jobs_submitted", "Training jobs enqueued",
                                      ["strategy"], registry=r)
        if registry is not None:
            r.register(_StoreCollector(registry))

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(method, route).observe(seconds)

    def observe_reply(self, reply: InferenceReply, rows: int) -> None:
        self.predict_requests.labels(reply.task_id).inc()
        self.predict_rows.labels(reply.task_id).inc(rows)
        if reply.batch_rows:
            self.batch_rows.observe(reply.batch_rows)
        if reply.batch_requests:
            self.batch_requests.observe(reply.batch_requests)
        self.queue_seconds.observe(reply.queue_s)
        self.compute_seconds.observe(reply.compute_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HttpMetricsMiddleware:
    """Counts and times every request by route template (not raw path: bounded label values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                route = getattr(scope.get("route"), "path", None) or "<unmatched>"
                metrics.observe_http(scope["method"], route, status,
                                     time.perf_counter() - start)
