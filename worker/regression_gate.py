"""The regression gate before every publish: each earlier task a job changes, before and after."""

from __future__ import annotations

import math

from torch import nn

from adapters_store.errors import Regression
from adapters_store.records import GateCheck, GateReport, OldTaskEval
from adapters_store.strategy_params import RESERVED_TASK_IDS
from worker.modules import AdapterModule
from worker.strategies.fit import FitContext, FitResult


def drop_tolerance(before: float, rows: int, floor: float = 0.01) -> float:
    """The default largest allowed drop: 1 point or 2 binomial standard errors of the task's
    held-out accuracy, whichever is larger (smaller held-out splits are noisier)."""
    if rows <= 0 or math.isnan(before):
        return floor
    return max(floor, 2 * math.sqrt(max(before * (1 - before), 0.0) / rows))


class _Proposal:
    """The job's changes to earlier tasks, minus what the gate has reverted so far."""

    def __init__(self, ctx: FitContext, fit: FitResult) -> None:
        self.ctx, self.fit = ctx, fit
        self.changed = {old: m for old, m in fit.updated_modules.items()
                        if m.content_id() != old}
        self.reverted: set[str] = set()
        self.kept_heads: set[str] = set()

    def affected(self) -> list[str]:
        parent = self.ctx.parent
        if parent is None:
            return []
        skip = {self.ctx.task_id, *self.fit.extra_routes, *RESERVED_TASK_IDS}
        return sorted(t for t, runtime in parent.tasks.items() if t not in skip and (
            t in self.fit.updated_heads or self.changed.keys() & set(runtime.module_ids)))

    def path(self, task_id: str) -> tuple[list[AdapterModule | None], nn.Linear]:
        runtime = self.ctx.parent.tasks[task_id]  # type: ignore[union-attr]
        route = [self.changed[mid] if mid in self.changed and mid not in self.reverted
                 else module for mid, module in zip(runtime.module_ids, runtime.modules,
                                                    strict=True)]
        head = runtime.head if task_id in self.kept_heads or task_id not in \
            self.fit.updated_heads else self.fit.updated_heads[task_id]
        return route, head

    def revert(self, task_id: str) -> None:
        runtime = self.ctx.parent.tasks[task_id]  # type: ignore[union-attr]
        self.reverted |= self.changed.keys() & set(runtime.module_ids)
        self.kept_heads.add(task_id)


def check(ctx: FitContext, fit: FitResult) -> GateReport:
    """Evaluate every earlier task whose route touches a module the job changes (or whose head
    it retrained) on its held-out rows, and record the final before/after in ``fit.old_tasks``.

    ``fallback``: a task that drops past its tolerance keeps its modules and head as they were;
    every other task that shares a reverted module is checked again, until all hold. The new
    task keeps its tuned copy of a reverted module as a module of its own (it was trained with
    it), so it loses nothing. ``fail`` raises Regression: the job fails and nothing publishes.
    """
    p = ctx.params
    proposal = _Proposal(ctx, fit)
    tasks = proposal.affected()
    if not tasks:
        fit.gate = GateReport(mode=p.regression_gate, outcome="unchecked")
        return fit.gate
    before: dict[str, float] = {}
    rows: dict[str, int] = {}
    for t in tasks:
        rows[t] = len(ctx.task_rows(t)[1])
        before[t] = ctx.current_accuracy(t)
    cache: dict[tuple[int, ...], float] = {}

    def after(task_id: str) -> float:
        route, head = proposal.path(task_id)
        key = (*(id(m) for m in route), id(head))
        if key not in cache:
            cache[key] = ctx.held_out_accuracy(task_id, route, head)
        return cache[key]

    def tolerance(task_id: str) -> float:
        if p.regression_tolerance is not None:
            return p.regression_tolerance
        return drop_tolerance(before[task_id], rows[task_id])

    def fails(task_id: str) -> bool:
        return after(task_id) < before[task_id] - tolerance(task_id)

    checks = {t: GateCheck(before=before[t], after=after(t), rows=rows[t],
                           tolerance=round(tolerance(t), 6), passed=not fails(t)) for t in tasks}
    failing = [t for t in tasks if not checks[t].passed]
    outcome = "passed"
    if p.regression_gate == "off":
        outcome = "unchecked"
    elif failing and p.regression_gate == "fail":
        raise Regression(
            f"the regression gate stopped the publish: {', '.join(failing)} would drop past "
            "the tolerance", {t: checks[t].model_dump() for t in failing})
    elif failing:
        outcome = "fallback"
        while failing:  # each round reverts more, so it ends
            for t in failing:
                proposal.revert(t)
            failing = [t for t in tasks if fails(t)]
    kept_heads = proposal.kept_heads & set(fit.updated_heads)
    unshared = _apply(fit, proposal)
    fit.old_tasks = {t: OldTaskEval(before=before[t], after=after(t)) for t in tasks}
    fit.gate = GateReport(mode=p.regression_gate, outcome=outcome, checks=checks,
                          reverted_modules=sorted(proposal.reverted),
                          reverted_heads=sorted(kept_heads), unshared_layers=unshared)
    return fit.gate


def _apply(fit: FitResult, proposal: _Proposal) -> list[int]:
    """Drop the reverted changes from ``fit``; the new task's reverted copies become its own."""
    on_route = {id(m): layer for layer, m in enumerate(fit.route) if m is not None}
    unshared = []
    for mid in sorted(proposal.reverted):
        copy = fit.updated_modules.pop(mid)
        layer = on_route.get(id(copy))
        if layer is None:
            continue
        unshared.append(layer)
        fit.new_modules.append(copy)
        fit.decisions = [d.model_copy(update={"choice": "new", "module": None})
                         if d.layer == layer else d for d in fit.decisions]
    for t in proposal.kept_heads:
        fit.updated_heads.pop(t, None)
    return sorted(unshared)
