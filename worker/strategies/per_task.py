"""The no-sharing baseline: every new task gets a fresh module at every layer."""

from __future__ import annotations

import torch

from adapters_store.records import LayerDecision
from worker.strategies.fit import FitContext, FitResult, train_plain


def fit_per_task(ctx: FitContext) -> FitResult:
    torch.manual_seed(ctx.seed)
    modules = [ctx.new_module(layer) for layer in range(ctx.num_layers)]
    head = ctx.new_head()
    train_plain(ctx, list(modules), head)
    decisions = [LayerDecision(layer=layer, choice="new") for layer in range(len(modules))]
    return FitResult(route=list(modules), new_modules=modules, head=head, decisions=decisions)
