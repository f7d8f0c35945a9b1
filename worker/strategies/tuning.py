"""SAFM's tuning stage: fixed route, replay of tasks that share modules, path-masked updates,
and the layer-wise cosine loss on the new task's non-empty layers."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from adapters_store.datasets import Row
from worker.fit_loop import Batch, Fit, param_groups, set_trainable, steps_per_epoch
from worker.modules import AdapterModule
from worker.routing import Routing, RoutingLike
from worker.strategies.fit import FitContext, Route

STAGE = "tuning"
# The SAFM authors' schedule for this stage: a very short warm-up, then linear decay.
WARMUP_FRACTION = 0.005


@dataclass
class Path:
    """One task's trainable path: its route (working copies) and head; ``routing`` overrides
    the route's one-module-per-layer forward (HAM's new task runs beside every group), and
    ``extra`` lists the modules that routing adds to the path."""

    task_id: str
    route: Route
    head: nn.Linear
    label_index: dict[str, int]
    routing: RoutingLike | None = None
    extra: list[AdapterModule] = field(default_factory=list)

    def parameters(self) -> list[nn.Parameter]:
        params: dict[nn.Parameter, None] = {}
        for module in [*self.route, *self.extra]:
            if module is not None:
                params.update(dict.fromkeys(module.parameters()))
        params.update(dict.fromkeys(self.head.parameters()))
        return list(params)

    def forward_routing(self) -> RoutingLike:
        return self.routing if self.routing is not None else Routing.uniform(self.route)


@dataclass
class ReplayPlan:
    paths: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, list[Row]] = field(default_factory=dict)
    copies: dict[str, AdapterModule] = field(default_factory=dict)  # old id -> working copy

    def row_counts(self) -> dict[str, int]:
        return {t: len(rows) for t, rows in sorted(self.rows.items())}


def plan_replay(ctx: FitContext, reused: set[str], replay_ratio: float,
                adaptive: bool = False) -> ReplayPlan:
    """Tasks whose routes share one of the ``reused`` module ids; working copies of every module
    on their paths; their stored training rows (``replay_counts``)."""
    plan = ReplayPlan()
    parent = ctx.parent
    if parent is None or not reused:
        return plan
    replayed = sorted(t for t, r in parent.tasks.items()
                      if t != ctx.task_id and reused & {i for i in r.module_ids if i is not None})
    shares = None
    if adaptive:
        shares = {}
        for task_id in replayed:
            ids = [i for i in parent.tasks[task_id].module_ids if i is not None]
            shares[task_id] = sum(i in reused for i in ids) / len(ids)
    return replay_paths(ctx, replayed, replay_ratio, shares=shares)


def replay_counts(new_rows: int, replayed: list[str], ratio: float,
                  shares: dict[str, float] | None) -> dict[str, int]:
    """Rows to replay per task: ceil(ratio·|D_new|) split evenly; with ``shares`` (the fraction
    of each task's path this job reuses) at least share·|D_new| each, scaled down to |D_new|
    in all. A task whose whole path is retrained then replays as many rows as the new task
    trains (olora1 needed ratio 1.0 once the search reused: findings), one sharing a layer few."""
    total = math.ceil(ratio * new_rows)
    even = {t: total // len(replayed) + (1 if n < total % len(replayed) else 0)
            for n, t in enumerate(replayed)}
    if shares is None:
        return even
    want = {t: max(even[t], math.ceil(shares[t] * new_rows)) for t in replayed}
    cap = max(total, new_rows)
    if sum(want.values()) > cap:
        scale = cap / sum(want.values())
        want = {t: max(even[t], math.floor(n * scale)) for t, n in want.items()}
    return want


def replay_paths(ctx: FitContext, replayed: list[str], replay_ratio: float,
                 copies: dict[str, AdapterModule] | None = None,
                 shares: dict[str, float] | None = None) -> ReplayPlan:
    """Paths over working copies (``copies`` first, then fresh ones) for ``replayed`` tasks, and
    their stored training rows (``replay_counts``)."""
    plan = ReplayPlan(copies=dict(copies or {}))
    parent = ctx.parent
    if parent is None or not replayed:
        return plan
    for task_id in replayed:
        runtime = parent.tasks[task_id]
        for mid in runtime.module_ids:
            if mid is not None and mid not in plan.copies:
                plan.copies[mid] = copy.deepcopy(ctx.module(mid))
        plan.paths[task_id] = Path(
            task_id, [None if mid is None else plan.copies[mid] for mid in runtime.module_ids],
            copy.deepcopy(runtime.head), runtime.label_index)
    counts = replay_counts(len(ctx.train_rows), replayed, replay_ratio, shares)
    rng = random.Random(ctx.seed)
    for task_id in replayed:
        train_rows, _ = ctx.task_rows(task_id)
        plan.rows[task_id] = rng.sample(train_rows, min(counts[task_id], len(train_rows)))
    return plan


def _schedule(current: int, replay: list[str], rng: random.Random) -> list[str | None]:
    """Current batches (None) with replay batches spread evenly between them."""
    order: list[str | None] = [None] * current
    if replay:
        rng.shuffle(replay)
        gap = current / len(replay)
        for k, task_id in enumerate(replay):
            order.insert(min(len(order), int((k + 1) * gap) + k), task_id)
    return order


def tuning_steps(ctx: FitContext, replay_rows: int) -> int:
    """Steps of the tuning stage for ``replay_rows`` replayed rows (an estimate before the plan:
    the rows of several replayed tasks may need one more batch each)."""
    bs = ctx.params.batch_size
    return (steps_per_epoch(len(ctx.train_rows), bs) + steps_per_epoch(replay_rows, bs)) \
        * ctx.params.epochs


def run_tuning(ctx: FitContext, new_path: Path, plan: ReplayPlan, trainable: list[AdapterModule],
               layer_loss_weight: float) -> None:
    """Train along fixed routes; a batch of task t steps only the parameters on t's path."""
    p = ctx.params
    bs = p.batch_size
    paths = {ctx.task_id: new_path, **plan.paths}
    rng = random.Random(ctx.seed + 1)
    cur_batches = steps_per_epoch(len(ctx.train_rows), bs)
    replay_batches = [t for t, rows in plan.rows.items() for _ in range(steps_per_epoch(len(rows),
                                                                                         bs))]
    total = (cur_batches + len(replay_batches)) * p.epochs
    ctx.clock.plan(STAGE, total)
    heads = [path.head for path in paths.values()]
    on_paths = [m for path in paths.values() for m in [*path.route, *path.extra]
                if m is not None]
    set_trainable([*trainable, *heads], True)
    fit = Fit(ctx.model, ctx.clock,
              param_groups(on_paths, heads, p.learning_rate, p.head_learning_rate,
                           p.weight_decay), total, WARMUP_FRACTION)
    non_empty = [i for i, m in enumerate(new_path.route) if m is not None]
    layer_loss = (layer_loss_weight, non_empty) if layer_loss_weight > 0 else None
    routings = {t: path.forward_routing() for t, path in paths.items()}
    path_params = {t: path.parameters() for t, path in paths.items()}

    def batches() -> Iterator[Batch]:
        current = list(ctx.train_rows)
        rng.shuffle(current)
        pools = {t: rng.sample(rows, len(rows)) for t, rows in plan.rows.items()}
        for task_id in _schedule(cur_batches, list(replay_batches), rng):
            key = ctx.task_id if task_id is None else task_id
            if task_id is None:
                rows, current = current[:bs], current[bs:]
            else:
                rows, pools[task_id] = pools[task_id][:bs], pools[task_id][bs:]
            path = paths[key]
            yield Batch(rows, routings[key], path.head, path.label_index, path_params[key],
                        layer_loss if task_id is None else None)

    for epoch in range(p.epochs):
        fit.epoch(STAGE, epoch, p.epochs, batches())
    set_trainable([*trainable, *heads], False)
