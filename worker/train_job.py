"""One training job end to end: data split, strategy fit, evaluation, module writes, publish."""

from __future__ import annotations

import logging
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass

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


def _module_record(module: AdapterModule, blobs: BlobStore, task_id: str,
                   version: str) -> ModuleRecord:
    return ModuleRecord(id=module.content_id(), kind=module.kind, layer=module.layer,
                        params=module.num_params, config=module.config,
                        blob=blobs.put(module.to_bytes()), created_by=task_id, created_in=version)


def _build_manifest(state: TrainerState, job: JobRecord, parent: BankManifest | None,
                    fit: FitResult, labels: list[str], input_kind: str,
                    metrics: dict[str, float], full_route_params: int) -> BankManifest:
    number = state.registry.next_version_number()
    version = f"v{number}"
    ids_by_obj = {id(m): mid for mid, m in state.bank.modules.items()}
    modules: dict[str, ModuleRecord] = {}
    for module in fit.new_modules:
        rec = _module_record(module, state.blobs, job.task_id, version)
        modules.setdefault(rec.id, rec)
        ids_by_obj[id(module)] = rec.id
    layers = [None if m is None else ids_by_obj[id(m)] for m in fit.route]
    head = HeadRecord(labels=labels, blob=state.blobs.put(head_to_bytes(fit.head)),
                      params=sum(p.numel() for p in fit.head.parameters()))
    route = Route(task_id=job.task_id, layers=layers, head=head, input_kind=input_kind,
                  strategy=job.strategy, dataset_id=job.dataset_id, job_id=job.job_id,
                  trained_in=version, full_route_params=full_route_params, metrics=metrics)
    routes = dict(parent.routes) if parent else {}
    routes[job.task_id] = route
    # Modules no route uses any more (a retrained task's old ones) leave this version; older
    # versions and the blob store still hold them, so rollback keeps working.
    used = {m for r in routes.values() for m in r.layers if m is not None}
    for module_id in used - modules.keys():
        modules[module_id] = parent.modules[module_id]  # type: ignore[union-attr]
    return BankManifest(
        version=version, number=number, parent=parent.version if parent else None,
        base=state.model.base.info, modules={k: modules[k] for k in sorted(used)}, routes=routes,
        strategy=job.strategy, strategy_params=fit.strategy_params,
        note=f"{job.strategy} trained task {job.task_id} ({job.job_id})",
    )


def run_train_job(state: TrainerState, job: JobRecord, progress: ProgressFn) -> JobResult:
    """Train and publish; raise on any failure, leaving the live bank untouched."""
    started = time.monotonic()
    settings = state.settings
    dataset = state.registry.dataset(job.dataset_id)
    rows = load_rows(state.blobs.get(dataset.blob))
    train, val = split_rows(rows, settings.val_fraction, settings.seed)
    labels = sorted(dataset.label_counts)
    parent = state.registry.live_manifest()
    if parent and parent.base.fingerprint != state.model.base.info.fingerprint:
        raise Conflict("the live bank was built on a different base model",
                       {"bank_base": parent.base.name, "worker_base": state.model.base.info.name})
    if parent and job.task_id in parent.routes and \
            parent.routes[job.task_id].input_kind != dataset.input_kind:
        raise InvalidInput("the task's existing route takes another input kind")
    loaded_parent = state.bank.sync(parent) if parent else None
    fit_fn = STRATEGIES.get(job.strategy)
    if fit_fn is None:
        raise InvalidInput(f"unknown strategy {job.strategy!r}")
    ctx = FitContext(model=state.model, parent=loaded_parent, task_id=job.task_id,
                     train_rows=train, labels=labels, settings=settings, progress=progress,
                     device=state.device)
    log.info("job %s task %s: fitting %s on %d rows (%d held out), parent %s", job.job_id,
             job.task_id, job.strategy, len(train), len(val), parent.version if parent else None)
    fit = fit_fn(ctx)
    progress(Progress("evaluating", 0, 0, 0, 0, None, None))
    val_acc = accuracy(state.model, fit.route, fit.head, val, ctx.label_index)
    majority = max(sum(r.label == lbl for r in val) for lbl in labels) / len(val)
    full_route_params = sum(ctx.new_module(layer).num_params
                            for layer in range(state.model.num_layers))
    metrics = {"val_accuracy": val_acc, "majority_baseline": majority}
    manifest = _build_manifest(state, job, parent, fit, labels, dataset.input_kind, metrics,
                               full_route_params)
    progress(Progress("publishing", 0, 0, 0, 0, None, None))
    state.registry.publish(manifest, reason=f"train {job.task_id} ({job.job_id})")
    params_added = sum(manifest.modules[m].params for m in manifest.modules
                       if parent is None or m not in parent.modules)
    log.info("job %s task %s: published %s (val acc %.3f, +%d params)", job.job_id,
             job.task_id, manifest.version, val_acc, params_added)
    return JobResult(
        version=manifest.version, params_added=params_added,
        route_params=manifest.route_params(job.task_id), val_accuracy=val_acc,
        val_rows=len(val), train_rows=len(train), majority_baseline=majority,
        train_seconds=time.monotonic() - started, layers=manifest.routes[job.task_id].layers,
        decisions=fit.decisions,
    )


