"""SAFM (empty / reuse / new per layer, then replay-tuned with the layer-wise loss) and its
ACM ablation (no empty candidate, no layer-wise loss)."""

from __future__ import annotations

import copy

import torch

from worker.modules import AdapterModule
from worker.strategies.decision import build_search, decide, run_decision
from worker.strategies.fit import FitContext, FitResult, OldTaskEval, held_out_accuracy
from worker.strategies.tuning import Path, plan_replay, run_tuning


def _affected_routes(ctx: FitContext, copies: dict[str, AdapterModule]
                     ) -> dict[str, list[AdapterModule | None]]:
    """Every earlier task whose route touches a module that tuning changed, with its new route."""
    parent = ctx.parent
    changed = {mid for mid, m in copies.items() if m.content_id() != mid}
    routes = {}
    for task_id, route in (parent.manifest.routes.items() if parent else []):
        if task_id != ctx.task_id and changed & {i for i in route.layers if i is not None}:
            old = parent.tasks[task_id].modules
            routes[task_id] = [None if mid is None else copies.get(mid, module)
                               for mid, module in zip(route.layers, old, strict=True)]
    return routes


def _fit(ctx: FitContext, with_empty: bool) -> FitResult:
    torch.manual_seed(ctx.seed)
    layers, candidates = build_search(ctx, with_empty)
    head = ctx.new_head()
    run_decision(ctx, layers, candidates, head)
    route, new_modules, decisions = decide(layers, candidates)
    plan = plan_replay(ctx, route)
    # A reused module only the retrained task itself used has no replayed owner: copy it too,
    # so the bank's frozen original is never trained in place.
    route = [plan.copies.setdefault(d["module"], copy.deepcopy(m)) if d["choice"] == "reuse"
             else m for d, m in zip(decisions, route, strict=True)]
    before = {}
    if ctx.parent is not None and ctx.task_rows is not None:
        for task_id, t in ctx.parent.tasks.items():
            if task_id != ctx.task_id:
                before[task_id] = held_out_accuracy(ctx, task_id, t.modules, t.head)
    new_path = Path(ctx.task_id, route, head, ctx.label_index)
    run_tuning(ctx, new_path, plan, new_modules + list(plan.copies.values()))
    old_tasks = {}
    for task_id, new_route in _affected_routes(ctx, plan.copies).items():
        t = ctx.parent.tasks[task_id]
        path_head = plan.paths[task_id].head if task_id in plan.paths else t.head
        after = held_out_accuracy(ctx, task_id, new_route, path_head)
        old_tasks[task_id] = OldTaskEval(before=before.get(task_id, float("nan")), after=after)
    return FitResult(
        route=route, new_modules=new_modules, head=head, decisions=decisions,
        updated_modules=plan.copies,
        updated_heads={t: path.head for t, path in plan.paths.items()},
        replayed=sorted(plan.paths), old_tasks=old_tasks,
    )


def fit_safm(ctx: FitContext) -> FitResult:
    return _fit(ctx, with_empty=True)


def fit_acm(ctx: FitContext) -> FitResult:
    return _fit(ctx, with_empty=False)
