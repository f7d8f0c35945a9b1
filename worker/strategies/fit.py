"""What a strategy receives (the frozen base, the parent bank, the task's data) and returns."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from adapters_store.datasets import Row
from adapters_store.records import GateReport, HamReport, InputKind, LayerDecision, OldTaskEval
from adapters_store.strategy_params import AnyParams, SearchParams
from worker.bank import LoadedVersion
from worker.evaluation import accuracy, route_features
from worker.fit_loop import (
    Batch,
    Fit,
    param_groups,
    set_trainable,
    shuffled_batches,
    steps_per_epoch,
)
from worker.modules import AdapterModule
from worker.progress import JobClock
from worker.routed_model import RoutedEncoder
from worker.routing import Routing

# task id -> (train rows, held-out rows) of an earlier task, split exactly as when it was trained
TaskRows = Callable[[str], tuple[list[Row], list[Row]]]
Route = list[AdapterModule | None]
StepHook = Callable[[int, int, Batch], None]


def no_task_rows(task_id: str) -> tuple[list[Row], list[Row]]:
    raise KeyError(f"no stored rows for task {task_id!r}")


@dataclass
class FitContext:
    model: RoutedEncoder
    parent: LoadedVersion | None
    task_id: str
    train_rows: list[Row]
    labels: list[str]
    params: AnyParams
    clock: JobClock
    device: torch.device
    seed: int
    task_rows: TaskRows = no_task_rows
    # The task's held-out split (what SAFM's validation decision compares candidates on).
    val_rows: list[Row] = field(default_factory=list)

    @property
    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def search_params(self) -> SearchParams:
        if not isinstance(self.params, SearchParams):
            raise TypeError(f"strategy {self.params.strategy!r} has no search parameters")
        return self.params

    def new_module(self, layer: int) -> AdapterModule:
        config = self.params.module_config(self.model.base.info.hidden_size,
                                           self.model.intermediate_size)
        return AdapterModule(layer, config).to(self.device)

    def new_head(self, num_labels: int | None = None) -> nn.Linear:
        """A fresh head for this task's labels, or for ``num_labels`` (an earlier task's)."""
        head = nn.Linear(self.model.base.info.hidden_size,
                         len(self.labels) if num_labels is None else num_labels)
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head.to(self.device)

    def module(self, module_id: str) -> AdapterModule:
        """An earlier version's module by id (the bank's frozen original: copy before training)."""
        if self.parent is None:
            raise KeyError(module_id)
        return self.parent.module(module_id)

    def held_out_accuracy(self, task_id: str, route: Sequence[AdapterModule | None],
                          head: nn.Linear) -> float:
        """An earlier task's accuracy on its stored held-out rows along ``route`` and ``head``."""
        if self.parent is None:
            return float("nan")
        rows = self.task_rows(task_id)[1]
        return accuracy(self.model, route, head, rows, self.parent.tasks[task_id].label_index)

    def current_accuracy(self, task_id: str) -> float:
        """An earlier task's held-out accuracy on the parent version, as it serves now."""
        runtime = self.parent.tasks[task_id]  # type: ignore[union-attr]
        return self.held_out_accuracy(task_id, runtime.modules, runtime.head)


@dataclass
class FitResult:
    """The task's route (module objects or None per layer), what is new or changed, its head.

    Module identity is the content id: a new module gets one when it is written, and every
    reused module is a working copy of a bank module listed by its original id in
    ``updated_modules`` (an unchanged copy keeps its id, a changed one gets a new id)."""

    route: Route
    new_modules: list[AdapterModule]
    head: nn.Linear
    decisions: list[LayerDecision] = field(default_factory=list)
    # old module id -> its tuned working copy (replay may change shared modules)
    updated_modules: dict[str, AdapterModule] = field(default_factory=dict)
    # earlier task -> its tuned head (replay batches train the replayed task's whole path)
    updated_heads: dict[str, nn.Linear] = field(default_factory=dict)
    # earlier task -> its stored training rows replayed (0 when a path was kept but none fit)
    replayed_rows: dict[str, int] = field(default_factory=dict)
    # Filled by the regression gate (worker.regression_gate), not by the strategy.
    old_tasks: dict[str, OldTaskEval] = field(default_factory=dict)
    gate: GateReport | None = None
    # Routes the strategy derives for other task ids (HAM's task-agnostic route).
    extra_routes: dict[str, ExtraRoute] = field(default_factory=dict)
    ham: HamReport | None = None

    @property
    def replayed(self) -> list[str]:
        return sorted(self.replayed_rows)


@dataclass
class ExtraRoute:
    route: Route
    head: nn.Linear
    labels: list[str]
    input_kind: InputKind


def train_plain(ctx: FitContext, route: Route, head: nn.Linear, stage: str = "training",
                before_step: StepHook | None = None) -> None:
    """Train every module on ``route`` and ``head`` on the task's rows (per_task, seqft, sparse).

    ``before_step(epoch, step_in_epoch, batch)`` runs before each step (sparse mask updates)."""
    p = ctx.params
    modules = [m for m in route if m is not None]
    total = steps_per_epoch(len(ctx.train_rows), p.batch_size) * p.epochs
    ctx.clock.plan(stage, total)
    set_trainable([*modules, head], True)
    fit = Fit(ctx.model, ctx.clock, param_groups(modules, [head], p.learning_rate,
                                                 p.head_learning_rate, p.weight_decay),
              total, warmup_fraction=0.06)
    rng = random.Random(ctx.seed)
    routing = Routing.uniform(route)
    for epoch in range(p.epochs):
        batches = (Batch(rows, routing, head, ctx.label_index)
                   for rows in shuffled_batches(ctx.train_rows, p.batch_size, rng))
        if before_step is not None:
            batches = _hooked(batches, epoch, before_step)
        fit.epoch(stage, epoch, p.epochs, batches)
    set_trainable([*modules, head], False)


def refit_head(ctx: FitContext, route: Route, head: nn.Linear, rows: Sequence[Row],
               label_index: dict[str, int], epochs: int = 10) -> None:
    """Fit ``head`` (in place, from where it is) to the features ``route`` gives ``rows``: for a
    head trained beside other modules than it will be served with (HAM trains a task beside
    every group, then serves it from its merged group). The route stays frozen, so the features
    are computed once and only the head steps."""
    p = ctx.params
    device = next(head.parameters()).device
    features = route_features(ctx.model, route, rows, device)
    targets = torch.tensor([label_index[r.label] for r in rows], device=device)
    rng = torch.Generator().manual_seed(ctx.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=p.head_learning_rate, weight_decay=0.0)
    head.requires_grad_(True)
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=rng).to(device)
        for start in range(0, len(rows), p.batch_size):
            idx = order[start:start + p.batch_size]
            loss = nn.functional.cross_entropy(head(features[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.requires_grad_(False)


def _hooked(batches: Iterator[Batch], epoch: int, hook: StepHook) -> Iterator[Batch]:
    for index, batch in enumerate(batches):
        hook(epoch, index, batch)
        yield batch


def shared_set(ctx: FitContext) -> tuple[list[str], list[str]]:
    """The one module set that earlier tasks of this strategy all use (module ids per layer), and
    those tasks; empty when there is none yet, or it was built with another module kind."""
    parent = ctx.parent
    if parent is None:
        return [], []
    manifest = parent.manifest
    strategy = ctx.params.strategy
    members = sorted(t for t, r in manifest.routes.items() if r.strategy == strategy
                     and t != ctx.task_id and all(m is not None for m in r.layers))
    if not members:
        return [], []
    # Each publish moves every member to the tuned set; the latest-trained member has it.
    latest = max(members, key=lambda t: (int(manifest.routes[t].trained_in.lstrip("v")), t))
    ids = [m for m in manifest.routes[latest].layers if m is not None]
    if any(manifest.modules[m].kind != ctx.params.module_kind for m in ids):
        return [], []
    return ids, [t for t in members if manifest.routes[t].layers == manifest.routes[latest].layers]
