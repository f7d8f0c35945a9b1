"""Sequential fine-tuning, the forgetting lower bound: one module set trained task after task."""

from __future__ import annotations

import copy

import torch

from worker.strategies.fit import FitContext, FitResult, OldTaskEval, held_out_accuracy, shared_set
from worker.training import train_route

SEQFT = "seqft"


def fit_seqft(ctx: FitContext) -> FitResult:
    """Train the shared set (a working copy) and a new head on this task alone; earlier tasks keep
    their heads but move to the tuned set, so whatever the set forgets, they lose."""
    torch.manual_seed(ctx.seed)
    ids, members = shared_set(ctx, SEQFT)
    if ids:
        by_id = {mid: m for t in members for mid, m in
                 zip(ctx.parent.manifest.routes[t].layers, ctx.parent.tasks[t].modules,  # type: ignore[union-attr]
                     strict=True)}
        route = [copy.deepcopy(by_id[mid]) for mid in ids]
        new_modules, updated = [], dict(zip(ids, route, strict=True))
    else:
        route = [ctx.new_module(layer) for layer in range(ctx.model.num_layers)]
        new_modules, updated = list(route), {}
    old = {t: ctx.parent.tasks[t] for t in members}  # type: ignore[union-attr]
    before = {t: held_out_accuracy(ctx, t, r.modules, r.head) for t, r in old.items()}
    head = ctx.new_head()
    train_route(ctx.model, list(route), route, head, ctx.train_rows, ctx.label_index,
                ctx.train_config(), ctx.progress)
    old_tasks = {t: OldTaskEval(before[t], held_out_accuracy(ctx, t, list(route), r.head))
                 for t, r in old.items()}
    decisions = [{"layer": layer, "choice": "reuse" if ids else "new", "forced": False,
                  "module": ids[layer] if ids else None}
                 for layer in range(ctx.model.num_layers)]
    return FitResult(route=list(route), new_modules=new_modules, head=head, decisions=decisions,
                     updated_modules=updated, old_tasks=old_tasks)
