"""The no-sharing baseline: every new task gets a fresh module at every layer."""

from __future__ import annotations

import torch

from worker.strategies.fit import FitContext, FitResult
from worker.training import train_route


def fit_per_task(ctx: FitContext) -> FitResult:
    torch.manual_seed(ctx.settings.seed)
    modules = [ctx.new_module(layer) for layer in range(ctx.model.num_layers)]
    head = ctx.new_head()
    train_route(ctx.model, list(modules), modules, head, ctx.train_rows, ctx.label_index,
                ctx.train_config(), ctx.progress)
    s = ctx.settings
    params = {"module_kind": s.module_kind, "epochs": s.epochs, "batch_size": s.batch_size,
              "learning_rate": s.learning_rate, "head_learning_rate": s.head_learning_rate}
    if s.module_kind == "bottleneck":
        params["bottleneck_size"] = s.bottleneck_size
    else:
        params |= {"lora_rank": s.lora_rank, "lora_alpha": s.lora_alpha,
                   "lora_targets": sorted(s.lora_targets)}
    decisions = [{"layer": layer, "choice": "new"} for layer in range(len(modules))]
    return FitResult(route=list(modules), new_modules=modules, head=head, strategy_params=params,
                     decisions=decisions)
