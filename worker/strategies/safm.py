"""SAFM (empty / reuse / new per layer, then replay-tuned with the layer-wise loss) and its
ACM ablation (no empty candidate, no layer-wise loss)."""

from __future__ import annotations

import copy
import math

import torch

from adapters_store.records import OldTaskEval
from worker.modules import AdapterModule
from worker.strategies.decision import build_search, decide, decision_steps, run_decision
from worker.strategies.fit import FitContext, FitResult, Route
from worker.strategies.tuning import STAGE, Path, plan_replay, run_tuning, tuning_steps


def _affected_routes(ctx: FitContext, copies: dict[str, AdapterModule]) -> dict[str, Route]:
    """Every earlier task whose route touches a module that tuning changed, with its new route."""
    parent = ctx.parent
    changed = {mid for mid, m in copies.items() if m.content_id() != mid}
    routes = {}
    for task_id, runtime in (parent.tasks.items() if parent else []):
        if task_id != ctx.task_id and changed & {i for i in runtime.module_ids if i is not None}:
            routes[task_id] = [None if mid is None else copies.get(mid, module)
                               for mid, module in zip(runtime.module_ids, runtime.modules,
                                                      strict=True)]
    return routes


def _fit(ctx: FitContext, with_empty: bool) -> FitResult:
    p = ctx.search_params()
    torch.manual_seed(ctx.seed)
    # Plan every stage up front so progress covers the whole job; tuning's replay share is an
    # estimate until the decision says what is shared.
    for stage, steps in decision_steps(ctx).items():
        ctx.clock.plan(stage, steps)
    ctx.clock.plan(STAGE, tuning_steps(ctx, math.ceil(p.replay_ratio * len(ctx.train_rows))
                                       if ctx.parent else 0))
    layers, candidates = build_search(ctx, with_empty)
    head = ctx.new_head()
    run_decision(ctx, layers, candidates, head)
    route, new_modules, decisions = decide(layers, candidates)
    reused = {d.module for d in decisions if d.module is not None}
    plan = plan_replay(ctx, reused, p.replay_ratio)
    # A reused module only the retrained task itself used has no replayed owner: copy it too,
    # so the bank's frozen original is never trained in place.
    route = [plan.copies.setdefault(d.module, copy.deepcopy(m)) if d.module is not None
             else m for d, m in zip(decisions, route, strict=True)]
    before = {t: ctx.current_accuracy(t) for t in ctx.parent.tasks if t != ctx.task_id} \
        if ctx.parent else {}
    new_path = Path(ctx.task_id, route, head, ctx.label_index)
    run_tuning(ctx, new_path, plan, new_modules + list(plan.copies.values()),
               layer_loss_weight=p.layer_loss_weight)
    old_tasks = {}
    for task_id, new_route in _affected_routes(ctx, plan.copies).items():
        t = ctx.parent.tasks[task_id]  # type: ignore[union-attr]
        path_head = plan.paths[task_id].head if task_id in plan.paths else t.head
        after = ctx.held_out_accuracy(task_id, new_route, path_head)
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
