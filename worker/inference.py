"""The inference worker: micro-batches requests of many tasks into one routed forward; hot-swaps."""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass

import redis
import torch
from pydantic import ValidationError

from adapters_store.keys import INFERENCE_GROUP
from adapters_store.settings import Settings
from adapters_store.streams import (
    Heartbeat,
    InferenceReply,
    InferenceRequest,
    InputItem,
    Prediction,
    ReplyError,
)
from worker.bank import LoadedBank, LoadedVersion
from worker.routed_model import RoutedEncoder, apply_heads
from worker.routing import Routing
from worker.runtime import GracefulStop, build_model, configure_logging, connect, new_worker_id

log = logging.getLogger(__name__)


@dataclass
class Pending:
    msg_id: str
    request: InferenceRequest
    received: float


def _pad_cat(parts: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate separately tokenised batches (singles, pairs) into one, right-padded."""
    if len(parts) == 1:
        return parts[0]
    width = max(p["input_ids"].shape[1] for p in parts)
    out: dict[str, list[torch.Tensor]] = {}
    for p in parts:
        for key, t in p.items():
            fill = pad_id if key == "input_ids" else 0
            out.setdefault(key, []).append(
                torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill))
    return {k: torch.cat(v) for k, v in out.items()}


def run_batch(model: RoutedEncoder, loaded: LoadedVersion,
              requests: list[InferenceRequest]) -> list[list[Prediction]]:
    """One forward for every row of every request (each request's task already checked)."""
    rows: list[tuple[int, InputItem]] = [(i, item) for i, r in enumerate(requests)
                                         for item in r.inputs]
    device = next(model.parameters()).device
    singles = [(i, it) for i, it in rows if it.text_pair is None]
    pairs = [(i, it) for i, it in rows if it.text_pair is not None]
    ordered = singles + pairs
    parts = [model.base.tokenize([it for _, it in group], device)
             for group in (singles, pairs) if group]
    batch = _pad_cat(parts, model.base.tokenizer.pad_token_id or 0)
    tasks = [loaded.tasks[requests[i].task_id] for i, _ in ordered]
    with torch.inference_mode():
        routing = Routing.from_rows([t.modules for t in tasks], model.num_layers, device)
        pooled = model.embed(batch, routing)
        logits = apply_heads(pooled, [t.head for t in tasks])
    results: list[list[Prediction]] = [[] for _ in requests]
    position = {id(it): n for n, (_, it) in enumerate(ordered)}
    for i, item in rows:
        n = position[id(item)]
        probs = torch.softmax(logits[n].float(), -1).tolist()
        task = tasks[n]
        best = max(range(len(probs)), key=probs.__getitem__)
        results[i].append(Prediction(label=task.labels[best],
                                     scores=dict(zip(task.labels, probs, strict=True))))
    return results


class InferenceWorker:
    def __init__(self, settings: Settings, stop: GracefulStop | None = None) -> None:
        self.settings = settings
        self.stop = stop or GracefulStop()
        self.worker_id = new_worker_id("inference")
        self.client, self.registry, self.blobs = connect(settings)
        self.keys = self.registry.keys
        self.model, self.device = build_model(settings)
        self.model.eval()
        self.bank = LoadedBank(self.blobs, self.device, keep=settings.keep_versions)
        self.current: LoadedVersion | None = None
        self.batches = 0
        self._last_beat = 0.0
        self._last_claim = time.monotonic()

    # ---- between batches ------------------------------------------------------------------
    def maybe_swap(self) -> None:
        """Load the live version if it moved; on any failure keep serving the old one."""
        live = self.registry.live_version()
        if live is None or (self.current is not None and self.current.version == live):
            return
        try:
            loaded = self.bank.sync(self.registry.manifest(live))
        except Exception:  # noqa: BLE001 - a bad version must not take the worker down
            log.exception("worker %s could not load bank %s; still serving %s", self.worker_id,
                          live, self.current.version if self.current else None)
            return
        log.info("worker %s swapped %s -> %s", self.worker_id,
                 self.current.version if self.current else None, live)
        self.current = loaded

    def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_beat >= self.settings.heartbeat_s:
            self._last_beat = now
            self.registry.beat(Heartbeat(worker_id=self.worker_id, kind="inference",
                                         pid=os.getpid(), batches=self.batches,
                                         version=self.current.version if self.current else None,
                                         device=str(self.device)),
                               ttl_s=self.settings.heartbeat_s * 3)

    # ---- reading ----------------------------------------------------------------------------
    def _claim_stale(self) -> list:
        """Requests a dead worker read but never acknowledged, idle past the claim timeout."""
        if time.monotonic() - self._last_claim < self.settings.claim_idle_ms / 2000:
            return []
        self._last_claim = time.monotonic()
        claimed = self.client.xautoclaim(self.keys.infer_stream, INFERENCE_GROUP,
                                         self.worker_id, self.settings.claim_idle_ms,
                                         count=self.settings.max_batch)[1]
        if claimed:
            log.warning("worker %s claimed %d stale requests", self.worker_id, len(claimed))
        return claimed or []

    def _read(self, count: int, block_ms: int | None) -> list:
        got = self.client.xreadgroup(INFERENCE_GROUP, self.worker_id,
                                     {self.keys.infer_stream: ">"}, count=count, block=block_ms)
        return got[0][1] if got else []

    def collect(self) -> list:
        """Up to max_batch entries: block for the first, then wait at most max_wait_ms for more."""
        entries = self._claim_stale()
        if not entries:
            entries = self._read(self.settings.max_batch,
                                 int(min(1000, self.settings.heartbeat_s * 500)))
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000
        while entries and len(entries) < self.settings.max_batch:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more = self._read(self.settings.max_batch - len(entries), left_ms)
            if not more:
                break
            entries.extend(more)
        return entries

    # ---- serving ----------------------------------------------------------------------------
    def _reply(self, pipe: redis.client.Pipeline, req: InferenceRequest, **kw: object) -> None:
        reply = InferenceReply(request_id=req.request_id, task_id=req.task_id,
                               worker_id=self.worker_id, **kw)
        pipe.xadd(req.reply_to, reply.fields(), maxlen=100_000, approximate=True)

    def _error(self, pipe: redis.client.Pipeline, req: InferenceRequest, version: str | None,
               code: str, message: str) -> None:
        self._reply(pipe, req, version=version, error=ReplyError(code=code, message=message))

    def serve(self, entries: list) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        groups: dict[str, list[InferenceRequest]] = {}
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
                continue  # the API already answered 504; computing it would be wasted work
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
        # One forward per bank version present: a batch is always served by exactly one version.
        for version, requests in groups.items():
            loaded = self.bank.get(version)
            started = time.monotonic()
            try:
                outputs = run_batch(self.model, loaded, requests)
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
        ids = [e[0] for e in entries]
        pipe.xack(self.keys.infer_stream, INFERENCE_GROUP, *ids)
        pipe.xdel(self.keys.infer_stream, *ids)
        pipe.execute()
        self.batches += 1

    def run(self, max_batches: int | None = None) -> int:
        log.info("inference worker %s ready on %s", self.worker_id, self.device)
        self.maybe_swap()
        self.beat(force=True)
        try:
            while not self.stop.stopping and (max_batches is None or self.batches < max_batches):
                self.maybe_swap()
                self.beat()
                entries = self.collect()
                if entries:
                    # The API saw the live pointer before enqueueing; re-reading it after the
                    # read means a request never meets a version older than the one it saw.
                    self.maybe_swap()
                    self.serve(entries)
        finally:
            self.registry.forget_worker(self.worker_id)
            log.info("inference worker %s stopped after %d batches", self.worker_id, self.batches)
        return self.batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.inference")
    parser.add_argument("--max-batches", type=int, default=None)
    args = parser.parse_args(argv)
    configure_logging()
    stop = GracefulStop()
    stop.install()
    InferenceWorker(Settings(), stop).run(max_batches=args.max_batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
