"""One training job end to end: data split, strategy fit, evaluation, module writes, publish."""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from adapters_store.blobstore import BlobStore
from adapters_store.datasets import Row, load_rows
from adapters_store.errors import Conflict, InvalidInput
from adapters_store.records import (
    BankManifest,
    HeadRecord,
    JobRecord,
    JobResult,
    ModuleRecord,
    Route,
)
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from adapters_store.strategy_params import resolve
from worker.bank import LoadedBank
from worker.modules import AdapterModule, head_to_bytes
from worker.routed_model import RoutedEncoder
from worker.strategies import STRATEGIES, FitContext, FitResult
from worker.training import Progress, ProgressFn, accuracy

log = logging.getLogger(__name__)


def split_rows(rows: list[Row], val_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Seeded stratified split: every label keeps at least one row on each side."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row.label].append(row)
    rng = random.Random(seed)
    train: list[Row] = []
    val: list[Row] = []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        n_val = min(len(group) - 1, max(1, math.ceil(len(group) * val_fraction)))
        val.extend(group[:n_val])
        train.extend(group[n_val:])
    rng.shuffle(train)
    return train, val


@dataclass
class TrainerState:
    """The trainer process's heavy objects, built once in its entry point."""

    settings: Settings
    registry: Registry
    blobs: BlobStore
    model: RoutedEncoder
    bank: LoadedBank
    device: torch.device


@dataclass
class Outcome:
    """What a fit produced, ready to be written: the task's metrics and its resolved params."""

    fit: FitResult
    labels: list[str]
    input_kind: str
    metrics: dict[str, float]
    params: dict[str, Any]
    full_route_params: int


class ManifestWriter:
    """Writes new and changed modules and heads as blobs, then assembles the next manifest."""

    def __init__(self, state: TrainerState, job: JobRecord, parent: BankManifest | None,
                 version: str) -> None:
        self.state, self.job, self.parent, self.version = state, job, parent, version
        self.records: dict[str, ModuleRecord] = {}
        self.ids_by_obj = {id(m): mid for mid, m in state.bank.modules.items()}

    def module(self, module: AdapterModule, created_by: str) -> str:
        content_id = module.content_id()
        if self.parent and content_id in self.parent.modules:
            self.records[content_id] = self.parent.modules[content_id]
        elif content_id not in self.records:
            self.records[content_id] = ModuleRecord(
                id=content_id, kind=module.kind, layer=module.layer, params=module.num_params,
                config=module.config, blob=self.state.blobs.put(module.to_bytes()),
                created_by=created_by, created_in=self.version)
        self.ids_by_obj[id(module)] = content_id
        return content_id

    def head(self, head: torch.nn.Linear, labels: list[str]) -> HeadRecord:
        return HeadRecord(labels=labels, blob=self.state.blobs.put(head_to_bytes(head)),
                          params=sum(p.numel() for p in head.parameters()))

    def build(self, number: int, out: Outcome) -> BankManifest:
        job, parent, fit = self.job, self.parent, out.fit
        for module in fit.new_modules:
            self.module(module, job.task_id)
        # Replay may have changed shared modules: each changed one gets a new id, and every
        # route that used the old id moves to it; the parent version keeps the old tensors.
        remap = {old: self.module(m, parent.modules[old].created_by)  # type: ignore[union-attr]
                 for old, m in fit.updated_modules.items()}
        routes: dict[str, Route] = {}
        for task_id, route in (parent.routes.items() if parent else []):
            update: dict[str, Any] = {"layers": [None if m is None else remap.get(m, m)
                                                 for m in route.layers]}
            if task_id in fit.updated_heads:
                update["head"] = self.head(fit.updated_heads[task_id], route.head.labels)
            if task_id in fit.old_tasks:
                update["metrics"] = route.metrics | {
                    "val_accuracy": fit.old_tasks[task_id].after}
            routes[task_id] = route.model_copy(update=update)
        routes[job.task_id] = Route(
            task_id=job.task_id, layers=[None if m is None else self.ids_by_obj[id(m)]
                                         for m in fit.route],
            head=self.head(fit.head, out.labels), input_kind=out.input_kind,
            strategy=job.strategy, dataset_id=job.dataset_id, job_id=job.job_id,
            trained_in=self.version, full_route_params=out.full_route_params,
            metrics=out.metrics, strategy_params=out.params, decisions=fit.decisions)
        used = sorted({m for r in routes.values() for m in r.layers if m is not None})
        for module_id in used:
            if module_id not in self.records:
                self.records[module_id] = parent.modules[module_id]  # type: ignore[union-attr]
        # Modules no route uses any more leave this version; older versions and the blob store
        # still hold them, so rollback keeps working.
        return BankManifest(
            version=self.version, number=number, parent=parent.version if parent else None,
            base=self.state.model.base.info, modules={k: self.records[k] for k in used},
            routes=routes, strategy=job.strategy, strategy_params=out.params,
            note=f"{job.strategy} trained task {job.task_id} ({job.job_id})")


def _task_rows(state: TrainerState, parent: BankManifest | None):  # noqa: ANN202
    @cache
    def rows_of(task_id: str) -> tuple[list[Row], list[Row]]:
        route = parent.routes[task_id]  # type: ignore[union-attr]
        dataset = state.registry.dataset(route.dataset_id)
        rows = load_rows(state.blobs.get(dataset.blob))
        return split_rows(rows, state.settings.val_fraction, state.settings.seed)

    return rows_of


def run_train_job(state: TrainerState, job: JobRecord, progress: ProgressFn) -> JobResult:
    """Train and publish; raise on any failure, leaving the live bank untouched."""
    started = time.monotonic()
    settings = state.settings
    dataset = state.registry.dataset(job.dataset_id)
    rows = load_rows(state.blobs.get(dataset.blob))
    train, val = split_rows(rows, settings.val_fraction, settings.seed)
    labels = sorted(dataset.label_counts)
    fit_fn = STRATEGIES.get(job.strategy)
    if fit_fn is None:
        raise InvalidInput(f"unknown strategy {job.strategy!r}")
    try:
        params = resolve(job.strategy, job.params, settings, state.model.num_layers)
    except ValueError as exc:
        raise InvalidInput(f"invalid strategy parameters: {exc}") from exc
    parent = state.registry.live_manifest()
    if parent and parent.base.fingerprint != state.model.base.info.fingerprint:
        raise Conflict("the live bank was built on a different base model",
                       {"bank_base": parent.base.name, "worker_base": state.model.base.info.name})
    if parent and job.task_id in parent.routes and \
            parent.routes[job.task_id].input_kind != dataset.input_kind:
        raise InvalidInput("the task's existing route takes another input kind")
    loaded_parent = state.bank.sync(parent) if parent else None
    ctx = FitContext(model=state.model, parent=loaded_parent, task_id=job.task_id,
                     train_rows=train, labels=labels, params=params, progress=progress,
                     device=state.device, seed=settings.seed,
                     task_rows=_task_rows(state, parent), weight_decay=settings.weight_decay)
    log.info("job %s task %s: fitting %s on %d rows (%d held out), parent %s", job.job_id,
             job.task_id, job.strategy, len(train), len(val), parent.version if parent else None)
    fit = fit_fn(ctx)
    progress(Progress("evaluating", 0, 0, 0, 0, None, None))
    val_acc = accuracy(state.model, fit.route, fit.head, val, ctx.label_index)
    majority = max(sum(r.label == lbl for r in val) for lbl in labels) / len(val)
    full = sum(ctx.new_module(layer).num_params for layer in range(state.model.num_layers))
    outcome = Outcome(fit=fit, labels=labels, input_kind=dataset.input_kind,
                      metrics={"val_accuracy": val_acc, "majority_baseline": majority},
                      params=params, full_route_params=full)
    number = state.registry.next_version_number()
    writer = ManifestWriter(state, job, parent, f"v{number}")
    manifest = writer.build(number, outcome)
    progress(Progress("publishing", 0, 0, 0, 0, None, None))
    state.registry.publish(manifest, reason=f"train {job.task_id} ({job.job_id})")
    # New modules only: tuned replacements of shared modules do not grow the bank.
    new_ids = {writer.ids_by_obj[id(m)] for m in fit.new_modules}
    params_added = sum(manifest.modules[i].params for i in new_ids
                       if parent is None or i not in parent.modules)
    log.info("job %s task %s: published %s (val acc %.3f, +%d params, replayed %s)",
             job.job_id, job.task_id, manifest.version, val_acc, params_added, fit.replayed)
    return JobResult(
        version=manifest.version, params_added=params_added,
        route_params=manifest.route_params(job.task_id), val_accuracy=val_acc,
        val_rows=len(val), train_rows=len(train), majority_baseline=majority,
        train_seconds=time.monotonic() - started, layers=manifest.routes[job.task_id].layers,
        decisions=fit.decisions, replayed=fit.replayed,
        old_tasks={t: {"before": e.before, "after": e.after} for t, e in fit.old_tasks.items()},
        strategy_params=params,
    )
