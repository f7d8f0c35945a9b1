"""The one training loop every stage of every strategy runs: optimiser groups, learning-rate
schedule, loss (cross-entropy plus optional layer-wise and regulariser terms), path masking,
gradient clipping and progress."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from adapters_store.datasets import Row
from worker.evaluation import items_of
from worker.progress import JobClock
from worker.routed_model import RoutedEncoder
from worker.routing import RoutingLike

GRAD_CLIP = 1.0
Regulariser = Callable[[], torch.Tensor]


@dataclass
class Batch:
    """One step's rows and the path they train: routing, head, and what the step may change."""

    rows: list[Row]
    routing: RoutingLike
    head: nn.Linear
    label_index: dict[str, int]
    # Path masking: only these parameters step (None: every parameter with a gradient).
    params: Sequence[nn.Parameter] | None = None
    # Layer-wise loss: weight · mean cos(layer input, layer output) over these layers.
    layer_loss: tuple[float, list[int]] | None = None


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


def batch_loss(model: RoutedEncoder, batch: Batch) -> torch.Tensor:
    """Cross-entropy of ``batch`` along its path, plus its layer-wise term when it has one."""
    device = next(batch.head.parameters()).device
    inputs = model.base.tokenize(items_of(batch.rows), device)
    targets = torch.tensor([batch.label_index[r.label] for r in batch.rows], device=device)
    if batch.layer_loss is None:
        return nn.functional.cross_entropy(batch.head(model.embed(inputs, batch.routing)),
                                           targets)
    weight, layers = batch.layer_loss
    pooled, states = model.embed_with_layers(inputs, batch.routing)
    return nn.functional.cross_entropy(batch.head(pooled), targets) + weight * \
        layer_cosine(states, inputs["attention_mask"], layers)


def param_groups(modules: Iterable[nn.Module], heads: Iterable[nn.Module], lr: float,
                 head_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: module weights decay, biases and gains do not, heads train at their own
    rate."""
    decay: dict[nn.Parameter, None] = {}
    no_decay: dict[nn.Parameter, None] = {}
    head_params: dict[nn.Parameter, None] = {}
    for head in heads:
        head_params.update(dict.fromkeys(head.parameters()))
    for module in modules:
        for name, p in module.named_parameters():
            if p.requires_grad and p not in head_params:
                # Biases and HAM's gains are scales and offsets, not weights to shrink.
                (no_decay if name.endswith(("bias", "gain")) else decay)[p] = None
    groups = [{"params": list(decay), "weight_decay": weight_decay, "lr": lr},
              {"params": list(no_decay), "weight_decay": 0.0, "lr": lr},
              {"params": list(head_params), "weight_decay": 0.0, "lr": head_lr}]
    return [g for g in groups if g["params"]]


def shuffled_batches(rows: Sequence[Row], batch_size: int, rng: random.Random
                     ) -> Iterator[list[Row]]:
    """One epoch of ``rows`` in a fresh seeded order, cut into batches."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        yield [rows[i] for i in order[start:start + batch_size]]


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return -(-rows // batch_size)


class Fit:
    """One optimiser (AdamW over ``groups``) and one schedule, stepped batch by batch.

    ``warmup_fraction`` None keeps the learning rate constant (SAFM's decision stage); otherwise
    the rate warms up linearly over that fraction of ``total_steps`` and decays linearly to 0.
    Stages that share one optimiser state (warm-up then search) share one Fit.
    """

    def __init__(self, model: RoutedEncoder, clock: JobClock, groups: list[dict],
                 total_steps: int, warmup_fraction: float | None,
                 grad_clip: float = GRAD_CLIP) -> None:
        self.model = model
        self.clock = clock
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(groups, eps=1e-6)
        self.params = [p for g in groups for p in g["params"]]
        self.scheduler = None
        if warmup_fraction is not None:
            total = max(1, total_steps)
            warm = max(1, int(total * warmup_fraction))
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        self.losses: list[float] = []

    def loss(self, batch: Batch) -> torch.Tensor:
        return batch_loss(self.model, batch)

    def step(self, batch: Batch, regulariser: Regulariser | None = None) -> float:
        loss = self.loss(batch)
        if regulariser is not None:
            loss = loss + regulariser()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if batch.params is not None:
            on_path = dict.fromkeys(batch.params)
            for p in self.params:
                if p not in on_path:
                    p.grad = None  # AdamW skips a parameter without a gradient entirely
        # The norm over the path (in path order), as the SAFM authors clip a replay batch.
        clip = self.params if batch.params is None else batch.params
        torch.nn.utils.clip_grad_norm_(clip, self.grad_clip)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        value = float(loss.detach())
        self.losses.append(value)
        return value

    def epoch(self, stage: str, epoch: int, epochs: int, batches: Iterable[Batch],
              regulariser: Regulariser | None = None) -> None:
        """Run one epoch of ``batches`` as stage ``stage`` (epoch counts from 0)."""
        if self.clock.stage != stage:
            self.clock.begin(stage)
        for batch in batches:
            loss = self.step(batch, regulariser)
            self.clock.step(epoch + 1, epochs, loss)


def set_trainable(modules: Iterable[nn.Module], on: bool) -> None:
    for module in modules:
        module.train(on).requires_grad_(on)
