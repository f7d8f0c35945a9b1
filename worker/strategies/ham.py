"""HAM (seed 001, methods.md §3.3): a task adapter with an importance gain trained beside the
frozen group adapters (whose gains train), then grouped by cosine similarity, pruned, scaled and
concatenated into its group; a task-agnostic route applies every group at once."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.records import HAM_ALL_TASK, HamReport, LayerDecision
from adapters_store.strategy_params import HamParams
from worker.ham_groups import merge_sets, prune_, similarity
from worker.modules import AdapterModule, LoraPart
from worker.routing import Group, Routing
from worker.strategies.fit import ExtraRoute, FitContext, FitResult, refit_head
from worker.strategies.tuning import Path, replay_paths, run_tuning


@dataclass(frozen=True)
class HamGroup:
    index: int
    module_ids: list[str]  # one per layer
    members: list[str]


def ham_groups(ctx: FitContext) -> list[HamGroup]:
    """The parent bank's HAM groups, by index: every member's route is its group's modules."""
    if ctx.parent is None:
        return []
    by_index: dict[int, list[str]] = {}
    for task_id, route in sorted(ctx.parent.manifest.routes.items()):
        if route.ham_group is not None and task_id != ctx.task_id:
            by_index.setdefault(route.ham_group, []).append(task_id)
    routes = ctx.parent.manifest.routes
    return [HamGroup(i, [m for m in routes[members[0]].layers if m is not None], members)
            for i, members in sorted(by_index.items())]


def _ham(ctx: FitContext) -> HamParams:
    if not isinstance(ctx.params, HamParams):
        raise TypeError(f"strategy {ctx.params.strategy!r} has no HAM parameters")
    return ctx.params


def _gains_only(module: AdapterModule) -> AdapterModule:
    """A working copy whose factors stay frozen and whose gains train (the group scalars)."""
    work = copy.deepcopy(module).requires_grad_(False)
    for part in work.parts.values():
        if isinstance(part, LoraPart) and part.gain is not None:
            part.gain.requires_grad_(True)
    return work


def choose_group(similarities: dict[int, float], max_groups: int,
                 threshold: float) -> tuple[int | None, bool]:
    """(the most similar group, whether the task opens a new group instead): a new group while
    fewer than ``max_groups`` exist and no group reaches ``threshold``."""
    best = max(similarities, key=similarities.__getitem__) if similarities else None
    opens = len(similarities) < max_groups and (best is None
                                                or similarities[best] < threshold)
    return best, opens


def fit_ham(ctx: FitContext) -> FitResult:
    p = _ham(ctx)
    torch.manual_seed(ctx.seed)
    layers = ctx.num_layers
    groups = ham_groups(ctx)
    if any(len(g.module_ids) != layers for g in groups):
        raise RuntimeError("a HAM group lacks a module at some layer")
    copies = {mid: _gains_only(ctx.module(mid)) for g in groups for mid in g.module_ids}
    new = [ctx.new_module(layer) for layer in range(layers)]
    head = ctx.new_head()
    # W0·x + Σ_g α_g·ΔW_g·x + α_i·ΔW_i·x at every target of every layer.
    routing = Routing([[Group(copies[g.module_ids[layer]], None) for g in groups]
                       + [Group(new[layer], None)] for layer in range(layers)])
    members = sorted(t for g in groups for t in g.members)
    plan = replay_paths(ctx, members, p.replay_ratio, copies)
    new_path = Path(ctx.task_id, list(new), head, ctx.label_index, routing,
                    extra=list(copies.values()))
    run_tuning(ctx, new_path, plan, list(new), layer_loss_weight=0.0)

    sims = {g.index: similarity(new, [copies[m] for m in g.module_ids],
                                p.group_similarity == "per_layer") for g in groups}
    best, opens = choose_group(sims, p.max_groups, p.group_threshold)
    pruned = [prune_(part, p.prune_keep_ratio) for m in new for part in m.parts.values()]
    cap = p.rank_cap or None
    if opens:
        index = max((g.index for g in groups), default=-1) + 1
        target, rank_before = None, 0
        merged = merge_sets([new], cap)
    else:
        target = next(g for g in groups if g.index == best)
        index = target.index
        rank_before = max(copies[m].config.rank for m in target.module_ids)
        merged = merge_sets([[copies[m] for m in target.module_ids], new], cap)
    merged = [m.to(ctx.device) for m in merged]
    updated: dict[str, AdapterModule] = {}
    for g in groups:
        for layer, mid in enumerate(g.module_ids):
            updated[mid] = merged[layer] if g is target else copies[mid]
    heads = {t: path.head for t, path in plan.paths.items()}
    # The task and its group's members are served from the merged group alone, not beside every
    # group as they trained: their heads are fitted to what serving computes.
    refit_head(ctx, list(merged), head, ctx.train_rows, ctx.label_index)
    for t in target.members if target else []:
        refit_head(ctx, list(merged), heads[t], ctx.task_rows(t)[0][:len(ctx.train_rows)],
                   ctx.parent.tasks[t].label_index)  # type: ignore[union-attr]
    rank_after = max(m.config.rank for m in merged)
    report = HamReport(
        group=index, new_group=opens, similarities={str(k): round(v, 6) for k, v in sims.items()},
        prune_keep_ratio=p.prune_keep_ratio, pruned_fraction=sum(pruned) / len(pruned),
        rank_before=rank_before, rank_after=rank_after,
        capped=cap is not None and rank_before + p.lora_rank > cap,
        members=sorted([*(target.members if target else []), ctx.task_id]))
    decisions = [LayerDecision(layer=layer, choice="new" if opens else "reuse",
                               module=None if target is None else target.module_ids[layer])
                 for layer in range(layers)]
    extra = _all_groups_route(ctx, groups, updated, merged if opens else None, heads, head)
    return FitResult(route=list(merged), new_modules=list(merged) if opens else [], head=head,
                     decisions=decisions, updated_modules=updated, updated_heads=heads,
                     replayed_rows=plan.row_counts(), ham=report, extra_routes=extra)


def _all_groups_route(ctx: FitContext, groups: list[HamGroup], updated: dict[str, AdapterModule],
                      opened: list[AdapterModule] | None, heads: dict[str, nn.Linear],
                      new_head: nn.Linear) -> dict[str, ExtraRoute]:
    """The task-agnostic route: every group's delta added at each layer (the groups
    concatenated, uncapped: exact) and one head whose rows are every single-text HAM task's
    head, labelled "task/label". Pair tasks are left out: a route takes one input kind."""
    sets = [[updated[m] for m in g.module_ids] for g in groups] + ([opened] if opened else [])
    parent = ctx.parent
    tasks: list[tuple[str, nn.Linear, list[str]]] = []
    for g in groups:
        for t in g.members:
            runtime = parent.tasks[t]  # type: ignore[union-attr]
            if runtime.input_kind == "single":
                tasks.append((t, heads.get(t, runtime.head), runtime.labels))
    if all(r.text_pair is None for r in ctx.train_rows):
        tasks.append((ctx.task_id, new_head, ctx.labels))
    if not sets or not tasks:
        return {}
    tasks.sort(key=lambda item: item[0])
    hidden = ctx.model.base.info.hidden_size
    head = nn.Linear(hidden, sum(len(labels) for _, _, labels in tasks)).to(ctx.device)
    with torch.no_grad():
        head.weight.copy_(torch.cat([h.weight.detach() for _, h, _ in tasks]))
        head.bias.copy_(torch.cat([h.bias.detach() for _, h, _ in tasks]))
    labels = [f"{t}/{label}" for t, _, task_labels in tasks for label in task_labels]
    route = [m.to(ctx.device) for m in merge_sets(sets, None)]
    return {HAM_ALL_TASK: ExtraRoute(route=list(route), head=head, labels=labels,
                                     input_kind="single")}
