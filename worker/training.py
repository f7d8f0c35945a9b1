"""The supervised training loop for one task's route and head, with progress reporting."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.datasets import Row
from adapters_store.streams import InputItem
from worker.modules import AdapterModule
from worker.routed_model import RoutedEncoder
from worker.routing import Routing


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    head_lr: float
    weight_decay: float
    seed: int
    grad_clip: float = 1.0
    warmup_fraction: float = 0.06


@dataclass(frozen=True)
class Progress:
    stage: str
    epoch: int
    epochs: int
    step: int
    total_steps: int
    loss: float | None
    eta_s: float | None


ProgressFn = Callable[[Progress], None]


def items_of(rows: Sequence[Row]) -> list[InputItem]:
    return [InputItem(text=r.text, text_pair=r.text_pair) for r in rows]


def param_groups(modules: Sequence[nn.Module], head: nn.Module, cfg: TrainConfig) -> list[dict]:
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad:
                (no_decay if name.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr},
              {"params": list(head.parameters()), "weight_decay": 0.0, "lr": cfg.head_lr}]
    return [g for g in groups if g["params"]]


def train_route(
    model: RoutedEncoder,
    route: list[AdapterModule | None],
    trainable: Sequence[AdapterModule],
    head: nn.Linear,
    rows: Sequence[Row],
    label_index: dict[str, int],
    cfg: TrainConfig,
    progress: ProgressFn,
) -> list[float]:
    """Train ``trainable`` modules and ``head`` on ``rows`` along ``route``; others stay frozen."""
    device = next(head.parameters()).device
    for module in trainable:
        module.train().requires_grad_(True)
    head.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(param_groups(trainable, head, cfg), eps=1e-6)
    steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    routing = Routing.uniform(route)
    rng = random.Random(cfg.seed)
    order = list(range(len(rows)))
    losses: list[float] = []
    ema: float | None = None
    started = time.monotonic()
    step = 0
    for epoch in range(cfg.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            batch_rows = [rows[i] for i in order[start:start + cfg.batch_size]]
            batch = model.base.tokenize(items_of(batch_rows), device)
            targets = torch.tensor([label_index[r.label] for r in batch_rows], device=device)
            logits = head(model.embed(batch, routing))
            loss = nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            losses.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            elapsed = time.monotonic() - started
            progress(Progress("training", epoch + 1, cfg.epochs, step, total, ema,
                              elapsed / step * (total - step)))
    for module in trainable:
        module.eval().requires_grad_(False)
    head.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def predict_route(model: RoutedEncoder, route: list[AdapterModule | None], head: nn.Linear,
                  rows: Sequence[Row], batch_size: int = 64) -> list[int]:
    """Argmax class index for each row along one route (evaluation)."""
    device = next(head.parameters()).device
    routing = Routing.uniform(route)
    out: list[int] = []
    for start in range(0, len(rows), batch_size):
        batch = model.base.tokenize(items_of(rows[start:start + batch_size]), device)
        out.extend(head(model.embed(batch, routing)).argmax(-1).tolist())
    return out


def accuracy(model: RoutedEncoder, route: list[AdapterModule | None], head: nn.Linear,
             rows: Sequence[Row], label_index: dict[str, int]) -> float:
    if not rows:
        return float("nan")
    predicted = predict_route(model, route, head, rows)
    # A label the head lacks (a test row of a class absent from training) counts as wrong.
    right = sum(p == label_index.get(r.label, -1) for p, r in zip(predicted, rows, strict=True))
    return right / len(rows)
