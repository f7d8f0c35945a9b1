"""The inference worker: micro-batches requests of many tasks into one routed forward; hot-swaps."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import redis
import torch
from pydantic import ValidationError

from adapters_store.keys import INFERENCE_GROUP
from adapters_store.logs import configure_logging
from adapters_store.registry import as_text
from adapters_store.settings import Settings
from adapters_store.streams import (
    Heartbeat,
    InferenceReply,
    InferenceRequest,
    Prediction,
    ReplyError,
)
from worker.bank import LoadedBank, LoadedVersion, TaskRuntime
from worker.routed_model import RoutedEncoder
from worker.routing import SegmentRouting, route_order
from worker.runtime import GracefulStop, build_model
from worker.stream_worker import Entry, StreamConfig, StreamWorker
from worker.version_prefetch import ServingGate, VersionPrefetcher

log = logging.getLogger(__name__)


def length_chunks(lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Row indexes bucketed by length into forwards of at most ``max_tokens`` padded tokens
    (rows × longest row), so short rows are not padded to a long one's length."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks: list[list[int]] = []
    current: list[int] = []
    for k in order:
        if current and (len(current) + 1) * lengths[k] > max_tokens:
            chunks.append(current)
            current = []
        current.append(k)
    if current:
        chunks.append(current)
    return chunks


def _route_key(task: TaskRuntime) -> tuple[str, ...]:
    return (*(m or "" for m in task.module_ids), task.task_id)


def run_batch(model: RoutedEncoder, loaded: LoadedVersion, requests: list[InferenceRequest],
              max_tokens: int = 4096) -> list[list[Prediction]]:
    """Every row of every request (each request's task already checked), in as few forwards as
    the token budget allows; within a forward rows are sorted by route into segments."""
    rows: list[tuple[int, int]] = [(i, j) for i, r in enumerate(requests)
                                   for j in range(len(r.inputs))]
    items = [requests[i].inputs[j] for i, j in rows]
    tasks = [loaded.tasks[requests[i].task_id] for i, _ in rows]
    encoded = model.base.encode(items)
    device = next(model.parameters()).device
    results: list[list[Prediction | None]] = [[None] * len(r.inputs) for r in requests]
    for chunk in length_chunks([len(e["input_ids"]) for e in encoded], max_tokens):
        order = [chunk[i] for i in route_order([_route_key(tasks[k]) for k in chunk])]
        batch = model.base.collate([encoded[k] for k in order], device)
        with torch.inference_mode():
            routing = SegmentRouting.from_sorted_rows([tasks[k].modules for k in order],
                                                      model.num_layers)
            pooled = model.embed(batch, routing)
            start = 0
            for end in range(1, len(order) + 1):  # one head call per run of one task's rows
                task = tasks[order[start]]
                if end < len(order) and tasks[order[end]] is task:
                    continue
                probs = torch.softmax(task.head(pooled[start:end]).float(), -1).tolist()
                for k, p in zip(order[start:end], probs, strict=True):
                    best = max(range(len(p)), key=p.__getitem__)
                    i, j = rows[k]
                    results[i][j] = Prediction(label=task.labels[best],
                                               scores=dict(zip(task.labels, p, strict=True)))
                start = end
    return results  # type: ignore[return-value]


class InferenceWorker(StreamWorker):
    kind = "inference"

    def __init__(self, settings: Settings, stop: GracefulStop | None = None) -> None:
        super().__init__(settings, stop)
        self.model, self.device = build_model(settings)
        dtype = getattr(torch, settings.serving_dtype)
        self.model.eval().to(dtype)
        self.bank = LoadedBank(self.blobs, self.device, keep=settings.keep_versions, dtype=dtype,
                               pooled=True)
        self.current: LoadedVersion | None = None
        self.live_at_read: str | None = None
        self.gate = ServingGate()
        self.prefetcher = VersionPrefetcher(
            self.registry, self.bank, self.worker_id, settings.prefetch_poll_ms / 1000,
            serving=lambda: self.current.version if self.current else None, gate=self.gate)

    def run(self, max_batches: int | None = None, idle_exit_s: float | None = None) -> int:
        self.prefetcher.start()
        try:
            return super().run(max_batches=max_batches, idle_exit_s=idle_exit_s)
        finally:
            self.prefetcher.stop()

    # ---- stream-worker hooks --------------------------------------------------------------
    def stream_config(self) -> StreamConfig:
        s = self.settings
        return StreamConfig(stream=self.keys.infer_stream, group=INFERENCE_GROUP,
                            batch=s.max_batch, max_wait_ms=s.max_wait_ms,
                            claim_idle_ms=s.claim_idle_ms, claim_every_s=s.claim_idle_ms / 2000,
                            block_ms=int(min(1000, s.heartbeat_s * 500)))

    def heartbeat(self) -> Heartbeat:
        current = self.current
        return self.base_heartbeat(current.version if current else None, str(self.device))

    def before_read(self) -> None:
        self.bank.reclaim()  # between forwards: no forward still reads a released slot
        self.live_at_read = None
        # No round trip here: an idle worker adopts what its prefetcher saw go live (and has
        # loaded); each read brings the live pointer as of just after it, for handle().
        live = self.prefetcher.live
        loaded = self.bank.get(live) if live is not None else None
        if loaded is not None and (self.current is None or self.current.version != live):
            self._adopt(loaded)

    def read_along(self, pipe: redis.client.Pipeline) -> None:
        pipe.get(self.keys.live)

    def read_along_results(self, results: list[Any]) -> None:
        self.live_at_read = as_text(results[0])

    def handle(self, entries: list[Entry], pipe: redis.client.Pipeline) -> None:
        # The pointer as Redis had it just after these entries were read: a request never meets
        # a version older than the one live when it was enqueued (the API saw that one or an
        # older one). Entries claimed from a dead worker came without it: read it now.
        live = self.live_at_read or self.registry.live_version()
        self.maybe_swap(live)
        self.serve(entries, pipe)

    # ---- between batches ------------------------------------------------------------------
    def maybe_swap(self, live: str | None) -> None:
        """Serve the live version if it moved: a reference change when the prefetcher has loaded
        it (a staged publish), else loaded here; on any failure keep serving the old one."""
        current = self.current
        if live is None or (current is not None and current.version == live):
            return
        try:
            loaded = self.bank.get(live) or self.bank.sync(
                self.registry.manifest(live),
                protect=frozenset({current.version} if current else ()))
        except Exception:  # noqa: BLE001 - a bad version must not take the worker down
            log.exception("worker %s could not load bank %s; still serving %s", self.worker_id,
                          live, self.current.version if self.current else None)
            return
        self._adopt(loaded)

    def _adopt(self, loaded: LoadedVersion) -> None:
        log.info("worker %s swapped %s -> %s", self.worker_id,
                 self.current.version if self.current else None, loaded.version)
        self.current = loaded

    # ---- serving ----------------------------------------------------------------------------
    def _reply(self, pipe: redis.client.Pipeline, req: InferenceRequest, **kw: object) -> None:
        reply = InferenceReply(request_id=req.request_id, task_id=req.task_id,
                               worker_id=self.worker_id, replied_at=time.time(), **kw)
        pipe.xadd(req.reply_to, reply.fields(), maxlen=100_000, approximate=True)

    def _error(self, pipe: redis.client.Pipeline, req: InferenceRequest, version: str | None,
               code: str, message: str) -> None:
        log.warning("worker %s: request %s (task %s, request_id %s): %s: %s", self.worker_id,
                    req.request_id, req.task_id, req.http_request_id, code, message)
        self._reply(pipe, req, version=version, error=ReplyError(code=code, message=message))

    def serve(self, entries: list[Entry], pipe: redis.client.Pipeline) -> None:
        """Answer every entry (replies queued on ``pipe``, sent with the batch's ack)."""
        now = time.time()
        groups: dict[str, list[InferenceRequest]] = {}
        versions: dict[str, LoadedVersion] = {}  # held here: the prefetcher may evict meanwhile
        for _, fields in entries:
            try:
                req = InferenceRequest.from_fields(fields)
            except (ValidationError, ValueError) as exc:
                log.warning("worker %s dropped a malformed request: %s", self.worker_id, exc)
                continue
            loaded = self.current
            if req.version is not None:
                loaded = self.bank.get(req.version)
                if loaded is None:
                    self._error(pipe, req, req.version, "not_found",
                                f"bank version {req.version} is not loaded on this worker")
                    continue
            if req.deadline < now:
                # The API already answered 504; computing it would be wasted work.
                log.warning("worker %s: request %s (task %s, request_id %s) expired in the queue",
                            self.worker_id, req.request_id, req.task_id, req.http_request_id)
                continue
            if loaded is None or req.task_id not in loaded.tasks:
                self._error(pipe, req, loaded.version if loaded else None, "not_found",
                            f"task {req.task_id!r} is not in the live bank")
                continue
            kind = loaded.tasks[req.task_id].input_kind
            if any((it.text_pair is not None) != (kind == "pair") for it in req.inputs):
                self._error(pipe, req, loaded.version, "invalid_input",
                            f"task {req.task_id!r} takes {kind} inputs")
                continue
            groups.setdefault(loaded.version, []).append(req)
            versions[loaded.version] = loaded
        # One forward per bank version present: a batch is always served by exactly one version.
        for version, requests in groups.items():
            loaded = versions[version]
            started = time.monotonic()
            try:
                with self.gate.forward():
                    outputs = run_batch(self.model, loaded, requests,
                                        self.settings.max_batch_tokens)
            except Exception as exc:  # noqa: BLE001 - answer every request, never drop it
                log.exception("worker %s batch failed on %s", self.worker_id, version)
                for req in requests:
                    self._error(pipe, req, version, "internal", f"inference failed: {exc}")
                continue
            compute = time.monotonic() - started
            rows = sum(len(r.inputs) for r in requests)
            for req, out in zip(requests, outputs, strict=True):
                self._reply(pipe, req, version=version, outputs=out, batch_rows=rows,
                            batch_requests=len(requests), compute_s=compute,
                            queue_s=max(0.0, now - req.enqueued_at))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.inference")
    parser.add_argument("--max-batches", type=int, default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    stop = GracefulStop()
    stop.install()
    InferenceWorker(settings, stop).run(max_batches=args.max_batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
