"""The one training pipeline, pure: split → fit → evaluate → new module/head tensors → manifest.

It touches no Redis and writes no files. The trainer (``train_job``) is the I/O around it, and
the continual benchmark and the strategy tests call the same two functions, so what they measure
is what the service runs.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from adapters_store.datasets import Row
from adapters_store.errors import Conflict, InvalidInput
from adapters_store.records import (
    BankManifest,
    BaseModelInfo,
    HeadRecord,
    InputKind,
    JobResult,
    ModuleRecord,
    Route,
)
from adapters_store.strategy_params import AnyParams
from worker import regression_gate
from worker.bank import LoadedVersion
from worker.evaluation import accuracy, majority_share
from worker.modules import AdapterModule, head_to_bytes, planned_params
from worker.progress import JobClock, ProgressFn
from worker.routed_model import RoutedEncoder
from worker.strategies import STRATEGIES, FitContext, FitResult
from worker.strategies.fit import TaskRows, no_task_rows


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


def input_kind_of(rows: list[Row]) -> InputKind:
    pairs = sum(r.text_pair is not None for r in rows)
    if 0 < pairs < len(rows):
        raise InvalidInput("rows mix single texts and text pairs",
                           {"pairs": pairs, "singles": len(rows) - pairs})
    return "pair" if pairs else "single"


@dataclass(frozen=True)
class TrainSpec:
    """One training job as the pipeline sees it: identity, data, typed hyperparameters."""

    task_id: str
    job_id: str
    dataset_id: str
    rows: list[Row]
    params: AnyParams
    seed: int
    val_fraction: float
    # The dataset record's input kind, when there is one: the rows must agree with it.
    input_kind: InputKind | None = None


@dataclass
class TrainedTask:
    """A fitted task, evaluated, before it has a version number."""

    spec: TrainSpec
    parent: BankManifest | None
    base: BaseModelInfo
    fit: FitResult
    labels: list[str]
    input_kind: InputKind
    train_rows: list[Row]
    val_rows: list[Row]
    val_accuracy: float
    majority: float
    full_route_params: int
    started: float
    clock: JobClock


@dataclass
class TrainOutput:
    """A new bank version and what must be stored before it is published."""

    manifest: BankManifest
    blobs: dict[str, bytes]  # sha256 -> bytes of every new module and head tensor file
    result: JobResult
    train_rows: list[Row]
    val_rows: list[Row]
    fit: FitResult = field(repr=False)


def fit_task(model: RoutedEncoder, parent: LoadedVersion | None, spec: TrainSpec,
             device: torch.device, progress: ProgressFn,
             task_rows: TaskRows = no_task_rows) -> TrainedTask:
    """Check, split, fit with the strategy and evaluate on the held-out split."""
    started = time.monotonic()
    manifest = parent.manifest if parent else None
    if manifest and manifest.base.fingerprint != model.base.info.fingerprint:
        raise Conflict("the live bank was built on a different base model",
                       {"bank_base": manifest.base.name, "worker_base": model.base.info.name})
    kind = input_kind_of(spec.rows)
    if spec.input_kind is not None and kind != spec.input_kind:
        raise InvalidInput(f"the dataset says {spec.input_kind} inputs; its rows are {kind}")
    if manifest and spec.task_id in manifest.routes and \
            manifest.routes[spec.task_id].input_kind != kind:
        raise InvalidInput("the task's existing route takes another input kind")
    labels = sorted({r.label for r in spec.rows})
    if len(labels) < 2:
        raise InvalidInput("a task needs at least 2 labels", {"labels": labels})
    train, val = split_rows(spec.rows, spec.val_fraction, spec.seed)
    clock = JobClock(progress)
    ctx = FitContext(model=model, parent=parent, task_id=spec.task_id, train_rows=train,
                     labels=labels, params=spec.params, clock=clock, device=device,
                     seed=spec.seed, task_rows=task_rows, val_rows=val)
    fit = STRATEGIES[spec.params.strategy](ctx)
    clock.note("checking earlier tasks")
    regression_gate.check(ctx, fit)
    clock.note("evaluating")
    val_acc = accuracy(model, fit.route, fit.head, val, ctx.label_index)
    one = planned_params(spec.params.module_config(model.base.info.hidden_size,
                                                   model.intermediate_size))
    return TrainedTask(spec=spec, parent=manifest, base=model.base.info, fit=fit, labels=labels,
                       input_kind=kind, train_rows=train, val_rows=val, val_accuracy=val_acc,
                       majority=majority_share(val), full_route_params=one * model.num_layers,
                       started=started, clock=clock)


class VersionWriter:
    """Module and head records of the new version, with the tensor files they need."""

    def __init__(self, parent: BankManifest | None, version: str) -> None:
        self.parent, self.version = parent, version
        self.records: dict[str, ModuleRecord] = {}
        self.blobs: dict[str, bytes] = {}

    def _blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def module(self, module: AdapterModule, created_by: str) -> str:
        content_id = module.content_id()
        if self.parent and content_id in self.parent.modules:
            self.records[content_id] = self.parent.modules[content_id]
        elif content_id not in self.records:
            self.records[content_id] = ModuleRecord(
                id=content_id, kind=module.kind, layer=module.layer, params=module.num_params,
                config=module.config, blob=self._blob(module.to_bytes()),
                created_by=created_by, created_in=self.version)
        return content_id

    def used_modules(self, routes: dict[str, Route]) -> dict[str, ModuleRecord]:
        """The records of every module some route uses (this version's, else the parent's), in
        id order: modules no route uses any more leave the version; older versions and the blob
        store still hold them, so rollback keeps working."""
        used = sorted({m for r in routes.values() for m in r.layers if m is not None})
        return {m: self.records[m] if m in self.records
                else self.parent.modules[m] for m in used}  # type: ignore[union-attr]

    def head(self, head: nn.Linear, labels: list[str]) -> HeadRecord:
        return HeadRecord(labels=labels, blob=self._blob(head_to_bytes(head)),
                          params=sum(p.numel() for p in head.parameters()))


def bank_growth(manifest: BankManifest, parent: BankManifest | None) -> int:
    """What the bank grew by: tuned replacements of shared modules of the same size add nothing;
    a merged set that replaces a smaller one (sparse_merged, HAM) adds the difference."""
    return max(0, manifest.totals()["adapter_params"]
               - (parent.totals()["adapter_params"] if parent else 0))


def build_version(trained: TrainedTask, number: int) -> TrainOutput:
    """The next manifest (``v<number>``) with the fitted task, and its new tensor files."""
    spec, parent, fit = trained.spec, trained.parent, trained.fit
    version = f"v{number}"
    writer = VersionWriter(parent, version)
    for module in fit.new_modules:
        writer.module(module, spec.task_id)
    # Replay may have changed shared modules: each changed one gets a new id, and every route
    # that used the old id moves to it; the parent version keeps the old tensors.
    remap = {old: writer.module(m, parent.modules[old].created_by)  # type: ignore[union-attr]
             for old, m in fit.updated_modules.items()}
    routes: dict[str, Route] = {}
    for task_id, route in (parent.routes.items() if parent else []):
        update: dict[str, object] = {"layers": [None if m is None else remap.get(m, m)
                                                for m in route.layers]}
        if task_id in fit.updated_heads:
            update["head"] = writer.head(fit.updated_heads[task_id], route.head.labels)
        if task_id in fit.old_tasks:
            update["metrics"] = route.metrics | {"val_accuracy": fit.old_tasks[task_id].after}
        routes[task_id] = route.model_copy(update=update)
    metrics = {"val_accuracy": trained.val_accuracy, "majority_baseline": trained.majority}
    for task_id, extra in fit.extra_routes.items():
        routes[task_id] = Route(
            task_id=task_id, layers=[None if m is None else writer.module(m, spec.task_id)
                                     for m in extra.route],
            head=writer.head(extra.head, extra.labels), input_kind=extra.input_kind,
            strategy=spec.params.strategy, dataset_id="", job_id=spec.job_id, trained_in=version,
            full_route_params=0)
    routes[spec.task_id] = Route(
        task_id=spec.task_id,
        layers=[None if m is None else writer.module(m, spec.task_id) for m in fit.route],
        head=writer.head(fit.head, trained.labels), input_kind=trained.input_kind,
        strategy=spec.params.strategy, dataset_id=spec.dataset_id, job_id=spec.job_id,
        trained_in=version, full_route_params=trained.full_route_params, metrics=metrics,
        strategy_params=spec.params, decisions=fit.decisions,
        ham_group=fit.ham.group if fit.ham else None)
    manifest = BankManifest(
        version=version, number=number, parent=parent.version if parent else None,
        base=trained.base, modules=writer.used_modules(routes), routes=routes,
        strategy=spec.params.strategy, strategy_params=spec.params,
        note=f"{spec.params.strategy} trained task {spec.task_id} ({spec.job_id})")
    result = JobResult(
        version=version, params_added=bank_growth(manifest, parent),
        route_params=manifest.route_params(spec.task_id), val_accuracy=trained.val_accuracy,
        val_rows=len(trained.val_rows), train_rows=len(trained.train_rows),
        majority_baseline=trained.majority, train_seconds=time.monotonic() - trained.started,
        layers=routes[spec.task_id].layers, decisions=fit.decisions, replayed=fit.replayed,
        old_tasks=fit.old_tasks, strategy_params=spec.params, ham=fit.ham, gate=fit.gate,
        replayed_rows=fit.replayed_rows, stage_seconds=trained.clock.stage_seconds())
    return TrainOutput(manifest=manifest, blobs=writer.blobs, result=result,
                       train_rows=trained.train_rows, val_rows=trained.val_rows, fit=fit)


def train_version(model: RoutedEncoder, parent: LoadedVersion | None, spec: TrainSpec,
                  number: int, device: torch.device, progress: ProgressFn,
                  task_rows: TaskRows = no_task_rows) -> TrainOutput:
    """fit_task then build_version, for callers that know the version number up front."""
    return build_version(fit_task(model, parent, spec, device, progress, task_rows), number)
