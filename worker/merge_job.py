"""A merge job: members' modules merged layer by layer into a new bank version (pure), and its
I/O (load the live bank, write the tensors, publish)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.datasets import Row
from adapters_store.errors import InvalidInput
from adapters_store.merges import MergeInfo, MergeRequest, check_merge
from adapters_store.records import BankManifest, JobRecord, JobResult, OldTaskEval, Route
from worker.bank import LoadedVersion
from worker.evaluation import accuracy, majority_share
from worker.merging import merge_layer
from worker.modules import AdapterModule
from worker.pipeline import VersionWriter
from worker.progress import JobClock, ProgressFn
from worker.regression_gate import drop_tolerance
from worker.routed_model import RoutedEncoder
from worker.strategies.fit import TaskRows
from worker.train_job import TrainerState, publish, stored_task_rows

log = logging.getLogger(__name__)


@dataclass
class MergeOutput:
    manifest: BankManifest
    blobs: dict[str, bytes]
    result: JobResult


def averaged_head(heads: list[nn.Linear]) -> nn.Linear:
    head = nn.Linear(heads[0].in_features, heads[0].out_features)
    with torch.no_grad():
        head.weight.copy_(torch.stack([h.weight.float().cpu() for h in heads]).mean(0))
        head.bias.copy_(torch.stack([h.bias.float().cpu() for h in heads]).mean(0))
    return head


def merge_version(model: RoutedEncoder, parent: LoadedVersion, req: MergeRequest, job_id: str,
                  number: int, task_rows: TaskRows, progress: ProgressFn) -> MergeOutput:
    """The next manifest with the merged set; raises InvalidInput when the merge is refused."""
    started = time.monotonic()
    manifest = parent.manifest
    check_merge(manifest, req)
    clock = JobClock(progress)
    clock.note("merging")
    device = next(model.parameters()).device
    merged: list[AdapterModule | None] = []
    for layer in range(model.num_layers):
        members = [None if (m := manifest.routes[t].layers[layer]) is None else parent.module(m)
                   for t in req.tasks]
        try:
            module = merge_layer(members, req.method, model.intermediate_size, req.density)
        except ValueError as exc:
            raise InvalidInput(f"layer {layer}: {exc}") from exc
        merged.append(None if module is None else module.to(device).eval())
    clock.note("evaluating members")
    held: dict[str, list[Row]] = {t: task_rows(t)[1] for t in req.tasks}
    evals: dict[str, OldTaskEval] = {}
    for t in req.tasks:
        runtime = parent.tasks[t]
        before = accuracy(model, runtime.modules, runtime.head, held[t], runtime.label_index)
        after = accuracy(model, merged, runtime.head, held[t], runtime.label_index)
        evals[t] = OldTaskEval(before=before, after=after)
    if req.replace:
        refused = {}
        for t, e in evals.items():
            limit = req.tolerance if req.tolerance is not None else \
                drop_tolerance(e.before, len(held[t]))
            if e.before - e.after > limit:
                refused[t] = {"before": round(e.before, 4), "after": round(e.after, 4),
                              "tolerance": round(limit, 4)}
        if refused:
            raise InvalidInput(f"merge refused: members would lose more than the tolerance on "
                               f"their held-out rows: {refused}", {"members": refused})
    version = f"v{number}"
    info = MergeInfo(members=list(req.tasks), method=req.method, replace=req.replace,
                     density=req.density if req.method == "ties" else None, job_id=job_id)
    writer = VersionWriter(manifest, version)
    created_by = req.name or f"merge:{job_id}"
    ids = [None if m is None else writer.module(m, created_by) for m in merged]
    routes = dict(manifest.routes)
    if req.replace:
        for t in req.tasks:
            routes[t] = routes[t].model_copy(update={
                "layers": list(ids), "merge": info,
                "metrics": routes[t].metrics | {"val_accuracy": evals[t].after}})
    union = [r for t in req.tasks for r in held[t]]
    first = manifest.routes[req.tasks[0]]
    if req.name is not None:
        head = averaged_head([parent.tasks[t].head for t in req.tasks]).to(device)
        label_index = parent.tasks[req.tasks[0]].label_index
        val_acc = accuracy(model, merged, head, union, label_index)
        routes[req.name] = Route(
            task_id=req.name, layers=list(ids), head=writer.head(head, first.head.labels),
            input_kind=first.input_kind, strategy="merge", dataset_id="", job_id=job_id,
            trained_in=version, full_route_params=first.full_route_params,
            metrics={"val_accuracy": val_acc, "majority_baseline": majority_share(union)},
            merge=info)
    else:
        val_acc = sum(e.after for e in evals.values()) / len(evals)
    new_manifest = BankManifest(
        version=version, number=number, parent=manifest.version, base=manifest.base,
        modules=writer.used_modules(routes), routes=routes, strategy="merge",
        note=f"{req.method} merge of {', '.join(req.tasks)}"
             + (f" as {req.name}" if req.name else "") + (" (replace)" if req.replace else ""))
    added = sum(new_manifest.modules[i].params for i in set(ids) - {None}
                if i not in manifest.modules)
    shown = req.name or req.tasks[0]
    result = JobResult(
        version=version, params_added=added, route_params=new_manifest.route_params(shown),
        val_accuracy=val_acc, val_rows=len(union), train_rows=0,
        majority_baseline=majority_share(union), train_seconds=time.monotonic() - started,
        layers=list(ids), old_tasks=evals, merge=info)
    return MergeOutput(manifest=new_manifest, blobs=writer.blobs, result=result)


def run_merge_job(state: TrainerState, job: JobRecord, progress: ProgressFn) -> JobResult:
    """Merge against the live bank and publish; raise on any failure, bank untouched."""
    if job.merge is None:
        raise InvalidInput("not a merge job")
    parent = state.registry.live_manifest()
    check_merge(parent, job.merge)
    assert parent is not None  # check_merge refuses an empty bank
    loaded = state.bank.sync(parent)
    out = merge_version(state.model, loaded, job.merge, job.job_id,
                        state.registry.next_version_number(), stored_task_rows(state, parent),
                        progress)
    publish(state, out.manifest, out.blobs,
            reason=f"merge {', '.join(job.merge.tasks)} ({job.job_id})")
    log.info("job %s: %s merge of %s published %s (+%d params)", job.job_id, job.merge.method,
             job.merge.tasks, out.manifest.version, out.result.params_added)
    return out.result
