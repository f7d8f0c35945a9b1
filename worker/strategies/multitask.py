"""Multi-task training, the upper bound: one fresh module set trained jointly on all tasks."""

from __future__ import annotations

import torch

from adapters_store.records import LayerDecision
from worker.strategies.fit import FitContext, FitResult, shared_set
from worker.strategies.tuning import Path, ReplayPlan, run_tuning


def fit_multitask(ctx: FitContext) -> FitResult:
    """Re-initialise the set and every member's head, then train on all members' stored training
    rows plus the new task's, in interleaved single-task batches (each batch steps its own head
    and the shared set). Earlier members move to the new set and heads."""
    torch.manual_seed(ctx.seed)
    ids, members = shared_set(ctx)
    route = [ctx.new_module(layer) for layer in range(ctx.num_layers)]
    plan = ReplayPlan(copies=dict(zip(ids, route, strict=True)) if ids else {})
    for task_id in members:
        runtime = ctx.parent.tasks[task_id]  # type: ignore[union-attr]
        plan.paths[task_id] = Path(task_id, list(route), ctx.new_head(len(runtime.labels)),
                                   runtime.label_index)
        plan.rows[task_id] = list(ctx.task_rows(task_id)[0])
    head = ctx.new_head()
    run_tuning(ctx, Path(ctx.task_id, list(route), head, ctx.label_index), plan, route,
               layer_loss_weight=0.0)
    decisions = [LayerDecision(layer=layer, choice="new") for layer in range(ctx.num_layers)]
    return FitResult(route=list(route), new_modules=[] if ids else list(route), head=head,
                     decisions=decisions, updated_modules=plan.copies,
                     updated_heads={t: p.head for t, p in plan.paths.items()},
                     replayed_rows=plan.row_counts())
