"""SAFM's tuning stage: fixed route, replay of tasks that share modules, path-masked updates,
and the layer-wise cosine loss on the new task's non-empty layers."""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from adapters_store.datasets import Row
from worker.modules import AdapterModule
from worker.routing import Routing
from worker.strategies.fit import FitContext
from worker.training import Progress, items_of


@dataclass
class Path:
    """One task's trainable path: its route (working copies) and head."""

    task_id: str
    route: list[AdapterModule | None]
    head: nn.Linear
    label_index: dict[str, int]

    def parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for module in self.route:
            if module is not None:
                for p in module.parameters():
                    seen.setdefault(id(p), p)
        for p in self.head.parameters():
            seen.setdefault(id(p), p)
        return list(seen.values())


@dataclass
class ReplayPlan:
    paths: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, list[Row]] = field(default_factory=dict)
    copies: dict[str, AdapterModule] = field(default_factory=dict)  # old id -> working copy


def layer_cosine(states: tuple[torch.Tensor, ...], mask: torch.Tensor,
                 layers: list[int]) -> torch.Tensor:
    """Mean over ``layers`` of the token-averaged cos(layer input, layer output)."""
    if not layers:
        return states[0].new_zeros(())
    m = mask.to(states[0].dtype)
    terms = []
    for layer in layers:
        cos = nn.functional.cosine_similarity(states[layer], states[layer + 1], dim=-1)
        terms.append((cos * m).sum() / m.sum().clamp(min=1.0))
    return torch.stack(terms).mean()


def plan_replay(ctx: FitContext, route: list[AdapterModule | None]) -> ReplayPlan:
    """Tasks sharing a non-empty module with ``route``; working copies of every module on their
    paths; ceil(ratio·|D_new|) stored training rows split evenly across them."""
    plan = ReplayPlan()
    parent = ctx.parent
    if parent is None:
        return plan
    ids_of = {id(m): mid for t in parent.tasks.values()
              for mid, m in zip(parent.manifest.routes[t.task_id].layers, t.modules, strict=True)
              if m is not None}
    shared = {ids_of[id(m)] for m in route if m is not None and id(m) in ids_of}
    replayed = sorted(t for t, r in parent.manifest.routes.items()
                      if t != ctx.task_id and shared & {i for i in r.layers if i is not None})
    if not replayed:
        return plan
    for task_id in replayed:
        runtime = parent.tasks[task_id]
        layer_ids = parent.manifest.routes[task_id].layers
        for mid, module in zip(layer_ids, runtime.modules, strict=True):
            if mid is not None and mid not in plan.copies:
                plan.copies[mid] = copy.deepcopy(module)
        plan.paths[task_id] = Path(
            task_id, [None if mid is None else plan.copies[mid] for mid in layer_ids],
            copy.deepcopy(runtime.head), runtime.label_index)
    total = math.ceil(ctx.params["replay_ratio"] * len(ctx.train_rows))
    rng = random.Random(ctx.seed)
    for n, task_id in enumerate(replayed):
        want = total // len(replayed) + (1 if n < total % len(replayed) else 0)
        train_rows, _ = ctx.task_rows(task_id) if ctx.task_rows else ([], [])
        plan.rows[task_id] = rng.sample(train_rows, min(want, len(train_rows)))
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


def run_tuning(ctx: FitContext, new_path: Path, plan: ReplayPlan,
               trainable: list[AdapterModule]) -> list[float]:
    """Train along fixed routes; a batch of task t steps only the parameters on t's path."""
    p = ctx.params
    bs, weight = p["batch_size"], p.get("layer_loss_weight", 0.0)
    paths = {ctx.task_id: new_path, **plan.paths}
    params: dict[int, nn.Parameter] = {}
    for path in paths.values():
        for q in path.parameters():
            params.setdefault(id(q), q)
    for module in trainable:
        module.train().requires_grad_(True)
    for path in paths.values():
        path.head.train().requires_grad_(True)
    heads = {id(q) for path in paths.values() for q in path.head.parameters()}
    named = [(n, q) for m in trainable for n, q in m.named_parameters()]
    no_decay = {id(q) for n, q in named if n.endswith("bias")} | heads
    groups = [
        {"params": [q for q in params.values() if id(q) not in no_decay],
         "lr": p["learning_rate"], "weight_decay": ctx.weight_decay},
        {"params": [q for q in params.values() if id(q) in no_decay and id(q) not in heads],
         "lr": p["learning_rate"], "weight_decay": 0.0},
        {"params": [q for q in params.values() if id(q) in heads],
         "lr": p["head_learning_rate"], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], eps=1e-6)
    rng = random.Random(ctx.seed + 1)
    cur_batches = -(-len(ctx.train_rows) // bs)
    replay_batches = [t for t, rows in plan.rows.items() for _ in range(-(-len(rows) // bs))]
    steps_per_epoch = cur_batches + len(replay_batches)
    total = steps_per_epoch * p["epochs"]
    warm = max(1, int(0.005 * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    non_empty = [i for i, m in enumerate(new_path.route) if m is not None]
    losses: list[float] = []
    started, step, ema = time.monotonic(), 0, None
    for epoch in range(p["epochs"]):
        current = list(ctx.train_rows)
        rng.shuffle(current)
        pools = {t: rng.sample(rows, len(rows)) for t, rows in plan.rows.items()}
        for task_id in _schedule(cur_batches, list(replay_batches), rng):
            if task_id is None:
                batch_rows, current = current[:bs], current[bs:]
                path = new_path
            else:
                batch_rows, pools[task_id] = pools[task_id][:bs], pools[task_id][bs:]
                path = plan.paths[task_id]
            batch = ctx.model.base.tokenize(items_of(batch_rows), ctx.device)
            targets = torch.tensor([path.label_index[r.label] for r in batch_rows],
                                   device=ctx.device)
            routing = Routing.uniform(path.route)
            if task_id is None and weight > 0:
                pooled, states = ctx.model.embed_with_layers(batch, routing)
                loss = nn.functional.cross_entropy(path.head(pooled), targets) + weight * \
                    layer_cosine(states, batch["attention_mask"], non_empty)
            else:
                loss = nn.functional.cross_entropy(path.head(ctx.model.embed(batch, routing)),
                                                   targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            on_path = {id(q) for q in path.parameters()}
            for q in params.values():
                if id(q) not in on_path:
                    q.grad = None  # AdamW skips a parameter without a gradient entirely
            torch.nn.utils.clip_grad_norm_(path.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            ema = losses[-1] if ema is None else 0.9 * ema + 0.1 * losses[-1]
            elapsed = time.monotonic() - started
            ctx.progress(Progress("tuning", epoch + 1, p["epochs"], step, total, ema,
                                  elapsed / step * (total - step)))
    for module in trainable:
        module.eval().requires_grad_(False)
    for path in paths.values():
        path.head.eval().requires_grad_(False)
    return losses
