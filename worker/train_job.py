"""One training job's I/O around the pure pipeline: load its data and the live bank, fit, write
the new tensors, publish."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import torch
from pydantic import ValidationError

from adapters_store.blobstore import Blobs
from adapters_store.datasets import Row, load_rows
from adapters_store.errors import InvalidInput
from adapters_store.records import BankManifest, JobRecord, JobResult
from adapters_store.registry import Registry
from adapters_store.settings import Settings
from adapters_store.strategy_params import resolve
from worker.bank import LoadedBank
from worker.pipeline import TrainSpec, build_version, fit_task, split_rows
from worker.progress import ProgressFn
from worker.routed_model import RoutedEncoder
from worker.strategies.fit import TaskRows

log = logging.getLogger(__name__)


@dataclass
class TrainerState:
    """The trainer process's heavy objects, built once in its entry point."""

    settings: Settings
    registry: Registry
    blobs: Blobs
    model: RoutedEncoder
    bank: LoadedBank
    device: torch.device


def stored_task_rows(state: TrainerState, parent: BankManifest | None) -> TaskRows:
    """Earlier tasks' rows from their stored datasets, split exactly as when they trained."""
    @cache
    def rows_of(task_id: str) -> tuple[list[Row], list[Row]]:
        if parent is None or task_id not in parent.routes:
            raise KeyError(task_id)
        route = parent.routes[task_id]
        if route.merge is not None and not route.dataset_id:
            # A merged task has no dataset of its own: its rows are its members', split as
            # each member's were.
            parts = [rows_of(m) for m in route.merge.members]
            return [r for p in parts for r in p[0]], [r for p in parts for r in p[1]]
        dataset = state.registry.dataset(route.dataset_id)
        rows = load_rows(state.blobs.get(dataset.blob))
        return split_rows(rows, state.settings.val_fraction, state.settings.seed)

    return rows_of


def publish(state: TrainerState, manifest: BankManifest, blobs: dict[str, bytes],
            reason: str) -> None:
    """Write the version's new tensor files, stage it so inference workers load it while they
    still serve the old one, then make it live (a reader never meets a manifest whose blobs are
    missing, and a worker rarely meets a live version it has not loaded)."""
    for data in blobs.values():
        state.blobs.put(data)
    report = state.registry.publish(manifest, reason=reason,
                                    prepare_timeout_s=state.settings.prepare_timeout_s)
    if report is not None:
        log.info("version %s prepared on %d of %d inference workers in %.3fs before publish",
                 manifest.version, report.prepared, report.workers, report.waited_s)


def run_train_job(state: TrainerState, job: JobRecord, progress: ProgressFn) -> JobResult:
    """Train and publish; raise on any failure, leaving the live bank untouched."""
    settings = state.settings
    if job.dataset_id is None or job.strategy is None:
        raise InvalidInput("not a training job")
    dataset = state.registry.dataset(job.dataset_id)
    rows = load_rows(state.blobs.get(dataset.blob))
    try:
        params = resolve(job.strategy, job.params, settings, state.model.num_layers)
    except (ValueError, ValidationError) as exc:
        raise InvalidInput(f"invalid strategy parameters: {exc}") from exc
    parent = state.registry.live_manifest()
    loaded_parent = state.bank.sync(parent) if parent else None
    spec = TrainSpec(task_id=job.task_id, job_id=job.job_id, dataset_id=job.dataset_id,
                     rows=rows, params=params, seed=settings.seed,
                     val_fraction=settings.val_fraction, input_kind=dataset.input_kind)
    log.info("job %s task %s: fitting %s on %d rows, parent %s", job.job_id, job.task_id,
             job.strategy, len(rows), parent.version if parent else None)
    trained = fit_task(state.model, loaded_parent, spec, state.device, progress,
                       stored_task_rows(state, parent))
    out = build_version(trained, state.registry.next_version_number())
    trained.clock.note("publishing")
    publish(state, out.manifest, out.blobs, reason=f"train {job.task_id} ({job.job_id})")
    log.info("job %s task %s: published %s (val acc %.3f, +%d params, replayed %s)",
             job.job_id, job.task_id, out.manifest.version, out.result.val_accuracy,
             out.result.params_added, out.result.replayed)
    return out.result
