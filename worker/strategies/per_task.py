"""The no-sharing baseline: every new task gets a fresh module at every layer."""

from __future__ import annotations

import torch

from worker.strategies.fit import FitContext, FitResult
from worker.training import train_route


def fit_per_task(ctx: FitContext) -> FitResult:
    torch.manual_seed(ctx.seed)
    modules = [ctx.new_module(layer) for layer in range(ctx.model.num_layers)]
    head = ctx.new_head()
    train_route(ctx.model, list(modules), modules, head, ctx.train_rows, ctx.label_index,
                ctx.train_config(), ctx.progress)
    decisions = [{"layer": layer, "choice": "new", "forced": False}
                 for layer in range(len(modules))]
    return FitResult(route=list(modules), new_modules=modules, head=head, decisions=decisions)
