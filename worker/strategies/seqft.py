"""Sequential fine-tuning, the forgetting lower bound: one module set trained task after task."""

from __future__ import annotations

import copy

import torch

from adapters_store.records import LayerDecision
from worker.strategies.fit import FitContext, FitResult, shared_set, train_plain


def fit_seqft(ctx: FitContext) -> FitResult:
    """Train the shared set (a working copy) and a new head on this task alone; earlier tasks keep
    their heads but move to the tuned set, so whatever the set forgets, they lose."""
    torch.manual_seed(ctx.seed)
    ids, _ = shared_set(ctx)
    if ids:
        route = [copy.deepcopy(ctx.module(mid)) for mid in ids]
        new_modules, updated = [], dict(zip(ids, route, strict=True))
    else:
        route = [ctx.new_module(layer) for layer in range(ctx.num_layers)]
        new_modules, updated = list(route), {}
    head = ctx.new_head()
    train_plain(ctx, list(route), head)
    decisions = [LayerDecision(layer=layer, choice="reuse" if ids else "new",
                               module=ids[layer] if ids else None)
                 for layer in range(ctx.num_layers)]
    return FitResult(route=list(route), new_modules=new_modules, head=head, decisions=decisions,
                     updated_modules=updated)
