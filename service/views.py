"""Read models of the registry: task summaries and details, and the adapter bank as users see it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from adapters_store.errors import NotFound
from adapters_store.module_config import SparseConfig
from adapters_store.records import BankManifest, DatasetRecord, JobRecord, TaskRecord
from adapters_store.registry import Registry
from adapters_store.strategy_params import HamParams
from service.schemas import (
    AdaptersView,
    HamGroupView,
    HamView,
    LayerView,
    ModuleView,
    RouteLayer,
    RouteView,
    TaskDetail,
    TaskRouteView,
    TaskState,
    TaskSummary,
)

T = TypeVar("T")

_JOB_TO_TASK_STATE: dict[str, TaskState] = {
    "queued": "queued",
    "running": "training",
    "failed": "failed",
    "cancelled": "cancelled",
    # Trained, but the live version does not route the task (e.g. after a rollback).
    "succeeded": "not_live",
}
EMPTY_TOTALS = {"modules": 0, "shared_modules": 0, "tasks": 0, "adapter_params": 0,
                "head_params": 0, "one_adapter_per_task_params": 0}


def _maybe(load: Callable[[str], T], key: str) -> T | None:
    """A registry getter that answers None instead of raising NotFound."""
    try:
        return load(key)
    except NotFound:
        return None


def _summary_fields(task_id: str, manifest: BankManifest | None, task: TaskRecord | None,
                    job: JobRecord | None, dataset: DatasetRecord | None) -> dict:
    route = manifest.routes.get(task_id) if manifest else None
    if route is not None:
        state: TaskState = "ready"
    else:
        state = _JOB_TO_TASK_STATE.get(job.state, "queued") if job else "queued"
    return {
        "task_id": task_id,
        "state": state,
        "labels": route.head.labels if route else sorted(dataset.label_counts) if dataset else [],
        "input_kind": route.input_kind if route else dataset.input_kind if dataset else None,
        "params": manifest.route_params(task_id) if route and manifest else None,
        "head_params": route.head.params if route else None,
        "latest_job_id": job.job_id if job else None,
        "latest_job_state": job.state if job else None,
        "metrics": dict(route.metrics) if route else {},
    }


def _latest(registry: Registry, task: TaskRecord | None) -> tuple[JobRecord | None,
                                                                 DatasetRecord | None]:
    if task is None:
        return None, None
    job = _maybe(registry.job, task.job_ids[-1]) if task.job_ids else None
    dataset = _maybe(registry.dataset, task.dataset_ids[-1]) if task.dataset_ids else None
    return job, dataset


def list_tasks(registry: Registry) -> list[TaskSummary]:
    manifest = registry.live_manifest()
    ids = sorted(set(registry.task_ids()) | set(manifest.routes if manifest else ()))
    out = []
    for task_id in ids:
        task = _maybe(registry.task, task_id)
        job, dataset = _latest(registry, task)
        out.append(TaskSummary(**_summary_fields(task_id, manifest, task, job, dataset)))
    return out


def route_view(manifest: BankManifest, task_id: str) -> RouteView:
    route = manifest.routes[task_id]
    users = manifest.module_users()
    layers = []
    for index, module_id in enumerate(route.layers):
        module = manifest.modules.get(module_id) if module_id else None
        layers.append(RouteLayer(
            layer=index, module=module_id, kind=module.kind if module else None,
            params=module.params if module else 0,
            shared_with=[t for t in users.get(module_id, []) if t != task_id] if module_id else [],
        ))
    return RouteView(
        version=manifest.version, layers=layers, labels=route.head.labels,
        head_params=route.head.params, params=manifest.route_params(task_id),
        full_route_params=route.full_route_params, strategy=route.strategy,
        dataset_id=route.dataset_id, job_id=route.job_id, trained_in=route.trained_in,
        merge=route.merge,
    )


def task_detail(registry: Registry, task_id: str) -> TaskDetail:
    manifest = registry.live_manifest()
    task = _maybe(registry.task, task_id)
    in_live = manifest is not None and task_id in manifest.routes
    if task is None and not in_live:
        raise NotFound(f"task {task_id!r} does not exist")
    datasets = [d for d in (_maybe(registry.dataset, i) for i in task.dataset_ids) if d] \
        if task else []
    jobs = [j for j in (_maybe(registry.job, i) for i in task.job_ids) if j] if task else []
    fields = _summary_fields(task_id, manifest, task, jobs[-1] if jobs else None,
                             datasets[-1] if datasets else None)
    route = route_view(manifest, task_id) if in_live and manifest else None
    return TaskDetail(
        **fields, route=route, datasets=datasets, jobs=jobs,
        trained_in=route.trained_in if route else None,
        trained_versions=[j.result.version for j in jobs if j.result is not None],
    )


def adapters_view(manifest: BankManifest | None) -> AdaptersView:
    if manifest is None:
        return AdaptersView(live_version=None, base_model=None, strategy=None, modules=[],
                            layers=[], routes={}, totals=dict(EMPTY_TOTALS))
    users = manifest.module_users()
    ordered = sorted(manifest.modules.values(), key=lambda m: (m.layer, m.id))
    modules = [
        ModuleView(id=m.id, kind=m.kind, layer=m.layer, params=m.params, users=users[m.id],
                   created_by=m.created_by, created_in=m.created_in,
                   config=m.config.model_dump(),
                   density=m.params / m.config.dense_size() if isinstance(m.config, SparseConfig)
                   else None)
        for m in ordered
    ]
    layers = [
        LayerView(layer=layer, modules=[m.id for m in ordered if m.layer == layer],
                  users={m.id: users[m.id] for m in ordered if m.layer == layer},
                  empty=[t for t, r in sorted(manifest.routes.items())
                         if r.layers[layer] is None])
        for layer in range(manifest.base.num_layers)
    ]
    routes = {
        task_id: TaskRouteView(layers=route.layers, labels=route.head.labels,
                               params=manifest.route_params(task_id),
                               head_params=route.head.params,
                               full_route_params=route.full_route_params,
                               strategy=route.strategy, merge=route.merge)
        for task_id, route in sorted(manifest.routes.items())
    }
    ham = ham_view(manifest)
    totals = manifest.totals()
    if ham is not None and ham.bound_params is not None:
        totals["ham_bound_params"] = ham.bound_params  # fixed by G_max and the rank cap
    return AdaptersView(live_version=manifest.version, base_model=manifest.base,
                        strategy=manifest.strategy, modules=modules, layers=layers,
                        routes=routes, totals=totals, ham=ham)


def ham_view(manifest: BankManifest) -> HamView | None:
    """HAM's groups (members, rank, params) and the bound on what they can hold."""
    members: dict[int, list[str]] = {}
    for task_id, route in sorted(manifest.routes.items()):
        if route.ham_group is not None:
            members.setdefault(route.ham_group, []).append(task_id)
    if not members:
        return None
    groups = []
    for index, tasks in sorted(members.items()):
        layers = manifest.routes[tasks[0]].layers
        recs = [manifest.modules[m] for m in layers if m is not None]
        groups.append(HamGroupView(
            group=index, members=tasks, modules=layers,
            rank=max((getattr(r.config, "rank", 0) for r in recs), default=0),
            params=sum(r.params for r in recs)))
    latest = max((r for r in manifest.routes.values() if r.ham_group is not None),
                 key=lambda r: int(r.trained_in.lstrip("v") or 0))
    params = latest.strategy_params
    if not isinstance(params, HamParams):
        return HamView(groups=groups, max_groups=len(groups), rank_cap=0)
    per_rank = 2 * manifest.base.hidden_size * len(params.lora_targets)
    bound = 2 * params.max_groups * params.rank_cap * per_rank * manifest.base.num_layers \
        if params.rank_cap else None
    return HamView(groups=groups, max_groups=params.max_groups, rank_cap=params.rank_cap,
                   bound_params=bound)


def missing_route_error(registry: Registry, task_id: str) -> NotFound:
    """The 404 for predicting a task without a live route: unknown, training, or failed."""
    task = _maybe(registry.task, task_id)
    if task is None:
        return NotFound(f"task {task_id!r} does not exist")
    job, _ = _latest(registry, task)
    details = {"task_id": task_id, "latest_job_id": job.job_id if job else None,
               "latest_job_state": job.state if job else None,
               "status_url": f"/v1/jobs/{job.job_id}" if job else None}
    if job is not None and job.state == "failed":
        return NotFound(f"task {task_id!r} has no live route: its last training job failed",
                        details)
    if job is not None and job.state == "succeeded":
        return NotFound(f"task {task_id!r} is not routed by the live bank version", details)
    return NotFound(f"task {task_id!r} has no live route yet: it is still training", details)
