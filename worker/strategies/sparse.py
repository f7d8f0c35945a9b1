"""Sparse adapters (seed 002): a new masked ΔW per layer per task, and its merged variant."""

from __future__ import annotations

import torch

from adapters_store.records import LayerDecision
from adapters_store.strategy_params import SparseParams
from worker.fit_loop import Batch, batch_loss
from worker.merging import merge_layer
from worker.sparse_mask import masked_sites, select_masks
from worker.strategies.fit import FitContext, FitResult, shared_set, train_plain


def _params(ctx: FitContext) -> SparseParams:
    if not isinstance(ctx.params, SparseParams):
        raise TypeError(f"strategy {ctx.params.strategy!r} has no sparse parameters")
    return ctx.params


def fit_sparse(ctx: FitContext) -> FitResult:
    """per_task with sparse modules: masks chosen on the first batch, re-chosen every
    ``mask_update_interval`` steps while the first epoch lasts, then fixed."""
    p = _params(ctx)
    torch.manual_seed(ctx.seed)
    modules = [ctx.new_module(layer) for layer in range(ctx.num_layers)]
    head = ctx.new_head()
    sites = masked_sites(ctx.model, modules)
    def update_masks(epoch: int, step: int, batch: Batch) -> None:
        if epoch == 0 and step % p.mask_update_interval == 0:
            select_masks(sites, p.keep_ratio, p.mask_criterion,
                         lambda: batch_loss(ctx.model, batch))

    train_plain(ctx, list(modules), head, before_step=update_masks)
    decisions = [LayerDecision(layer=layer, choice="new") for layer in range(ctx.num_layers)]
    return FitResult(route=list(modules), new_modules=modules, head=head, decisions=decisions)


def fit_sparse_merged(ctx: FitContext) -> FitResult:
    """Train this task's sparse expert, then merge it into the one set every earlier
    sparse_merged task serves from (uniform_sparse: each weight averaged over the experts that
    changed it; the set's stored counts make the running merge exact). Every member moves to
    the new set and keeps its own head; the new head was trained on the expert, as in the
    paper's merging setting, so the accuracies recorded are the merged model's."""
    expert = fit_sparse(ctx)
    ids, _ = shared_set(ctx)
    if not ids:
        return expert
    merged = [merge_layer([ctx.module(mid), new], "uniform_sparse", ctx.model.intermediate_size)
              for mid, new in zip(ids, expert.new_modules, strict=True)]
    route = [m for m in merged if m is not None]
    if len(route) != ctx.num_layers:
        raise RuntimeError("a sparse merge lost a layer")
    decisions = [LayerDecision(layer=layer, choice="reuse", module=ids[layer])
                 for layer in range(ctx.num_layers)]
    return FitResult(route=list(route), new_modules=list(route), head=expert.head,
                     decisions=decisions, updated_modules=dict(zip(ids, route, strict=True)))
