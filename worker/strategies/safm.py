"""SAFM (empty / reuse / new per layer, then replay-tuned with the layer-wise loss) and its
ACM ablation (no empty candidate, no layer-wise loss)."""

from __future__ import annotations

import copy
import math

import torch

from worker.strategies.decision import (
    build_search,
    choose_by_validation,
    decide,
    decision_steps,
    run_decision,
    run_sampled_warmup,
)
from worker.strategies.fit import FitContext, FitResult
from worker.strategies.tuning import STAGE, Path, plan_replay, run_tuning, tuning_steps


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
    if p.decision == "validation":
        run_sampled_warmup(ctx, layers, candidates, head)
        chosen, losses = choose_by_validation(ctx, layers, head)
        route, new_modules, decisions = decide(layers, candidates, p.decision, chosen, losses)
    else:
        run_decision(ctx, layers, candidates, head)
        route, new_modules, decisions = decide(layers, candidates, p.decision)
    reused = {d.module for d in decisions if d.module is not None}
    plan = plan_replay(ctx, reused, p.replay_ratio, p.replay_adaptive)
    # A reused module only the retrained task itself used has no replayed owner: copy it too,
    # so the bank's frozen original is never trained in place.
    route = [plan.copies.setdefault(d.module, copy.deepcopy(m)) if d.module is not None
             else m for d, m in zip(decisions, route, strict=True)]
    new_path = Path(ctx.task_id, route, head, ctx.label_index)
    run_tuning(ctx, new_path, plan, new_modules + list(plan.copies.values()),
               layer_loss_weight=p.layer_loss_weight)
    return FitResult(
        route=route, new_modules=new_modules, head=head, decisions=decisions,
        updated_modules=plan.copies,
        updated_heads={t: path.head for t, path in plan.paths.items()},
        replayed_rows=plan.row_counts(),
    )


def fit_safm(ctx: FitContext) -> FitResult:
    return _fit(ctx, with_empty=True)


def fit_acm(ctx: FitContext) -> FitResult:
    return _fit(ctx, with_empty=False)
