"""An import job: a peft LoRA adapter (checked zip in the blob store) becomes a task's route in
a new bank version."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from adapters_store.errors import InvalidInput
from adapters_store.module_config import LoraConfig
from adapters_store.peft_import import read_peft_zip
from adapters_store.records import BankManifest, JobRecord, JobResult, Route
from worker.modules import AdapterModule
from worker.pipeline import VersionWriter, bank_growth
from worker.progress import JobClock, ProgressFn
from worker.train_job import TrainerState, publish

log = logging.getLogger(__name__)


def run_import_job(state: TrainerState, job: JobRecord, progress: ProgressFn) -> JobResult:
    started = time.monotonic()
    if job.import_blob is None:
        raise InvalidInput("not an import job")
    JobClock(progress).note("importing")
    info = state.model.base.info
    adapter = read_peft_zip(state.blobs.get(job.import_blob), info.family, info.num_layers,
                            info.hidden_size, state.settings.max_upload_bytes)
    parent = state.registry.live_manifest()
    if parent is not None and parent.base.fingerprint != info.fingerprint:
        raise InvalidInput("the live bank was built on another base model")
    old = parent.routes.get(job.task_id) if parent else None
    if old is not None and old.input_kind != job.input_kind:
        raise InvalidInput(f"task {job.task_id!r} takes {old.input_kind} inputs")
    config = LoraConfig(hidden=info.hidden_size, rank=adapter.rank, alpha=adapter.alpha,
                        targets=sorted(adapter.targets))
    route: list[AdapterModule | None] = []
    for layer in range(info.num_layers):
        factors = adapter.layers.get(layer)
        if factors is None:
            route.append(None)
            continue
        module = AdapterModule(layer, config)
        with torch.no_grad():
            for target, (a, b) in factors.items():
                module.parts[target].lora_A.copy_(torch.from_numpy(a))
                module.parts[target].lora_B.copy_(torch.from_numpy(b))
        route.append(module)
    head = nn.Linear(info.hidden_size, len(adapter.labels))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(adapter.head_weight))
        head.bias.copy_(torch.from_numpy(adapter.head_bias))
    number = state.registry.next_version_number()
    version = f"v{number}"
    writer = VersionWriter(parent, version)
    layers = [None if m is None else writer.module(m, job.task_id) for m in route]
    routes = dict(parent.routes) if parent else {}
    routes[job.task_id] = Route(
        task_id=job.task_id, layers=layers, head=writer.head(head, adapter.labels),
        input_kind=job.input_kind, strategy="import", dataset_id="", job_id=job.job_id,
        trained_in=version, full_route_params=sum(m.num_params for m in route if m))
    manifest = BankManifest(
        version=version, number=number, parent=parent.version if parent else None, base=info,
        modules=writer.used_modules(routes), routes=routes, strategy="import",
        note=f"imported a peft LoRA adapter as task {job.task_id} ({job.job_id})")
    publish(state, manifest, writer.blobs, reason=f"import {job.task_id} ({job.job_id})")
    log.info("job %s: imported task %s as %s", job.job_id, job.task_id, version)
    return JobResult(version=version, params_added=bank_growth(manifest, parent),
                     route_params=manifest.route_params(job.task_id), val_accuracy=None,
                     val_rows=0, train_rows=0, majority_baseline=None,
                     train_seconds=time.monotonic() - started, layers=layers)
