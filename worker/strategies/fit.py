"""What a strategy receives (the frozen base, the parent bank, the task's data) and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapters_store.datasets import Row
from worker.bank import LoadedVersion
from worker.modules import AdapterModule, module_config
from worker.routed_model import RoutedEncoder
from worker.training import ProgressFn, TrainConfig, accuracy

# task id -> (train rows, held-out rows) of an earlier task, split exactly as when it was trained
TaskRows = Callable[[str], tuple[list[Row], list[Row]]]


@dataclass
class FitContext:
    model: RoutedEncoder
    parent: LoadedVersion | None
    task_id: str
    train_rows: list[Row]
    labels: list[str]
    params: dict[str, Any]
    progress: ProgressFn
    device: torch.device
    seed: int
    task_rows: TaskRows | None = None
    weight_decay: float = 0.01

    @property
    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        p = self.params
        return TrainConfig(epochs=p["epochs"] if epochs is None else epochs,
                           batch_size=p["batch_size"], lr=p["learning_rate"],
                           head_lr=p["head_learning_rate"], weight_decay=self.weight_decay,
                           seed=self.seed)

    def module_config(self) -> dict[str, Any]:
        p = self.params
        return module_config(p["module_kind"], self.model.base.info.hidden_size,
                             size=p["bottleneck_size"], rank=p["lora_rank"],
                             alpha=p["lora_alpha"], targets=p["lora_targets"])

    def new_module(self, layer: int) -> AdapterModule:
        module = AdapterModule(self.params["module_kind"], layer, self.module_config())
        return module.to(self.device)

    def new_head(self, num_labels: int | None = None) -> nn.Linear:
        """A fresh head for this task's labels, or for ``num_labels`` (an earlier task's)."""
        head = nn.Linear(self.model.base.info.hidden_size,
                         len(self.labels) if num_labels is None else num_labels)
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head.to(self.device)


@dataclass
class OldTaskEval:
    before: float
    after: float


@dataclass
class FitResult:
    """The task's route (module objects or None per layer), what is new or changed, its head."""

    route: list[AdapterModule | None]
    new_modules: list[AdapterModule]
    head: nn.Linear
    decisions: list[dict[str, Any]] = field(default_factory=list)
    # old module id -> its tuned working copy (replay may change shared modules)
    updated_modules: dict[str, AdapterModule] = field(default_factory=dict)
    # earlier task -> its tuned head (replay batches train the replayed task's whole path)
    updated_heads: dict[str, nn.Linear] = field(default_factory=dict)
    replayed: list[str] = field(default_factory=list)
    old_tasks: dict[str, OldTaskEval] = field(default_factory=dict)


def held_out_accuracy(ctx: FitContext, task_id: str, route: list[AdapterModule | None],
                      head: nn.Linear) -> float:
    """An earlier task's accuracy on its stored held-out rows along ``route`` and ``head``."""
    if ctx.parent is None or ctx.task_rows is None:
        return float("nan")
    rows = ctx.task_rows(task_id)[1]
    return accuracy(ctx.model, route, head, rows, ctx.parent.tasks[task_id].label_index)


def shared_set(ctx: FitContext, strategy: str) -> tuple[list[str], list[str]]:
    """The one module set that earlier tasks of ``strategy`` all use (module ids per layer), and
    those tasks; empty when there is none yet, or it was built with another module kind."""
    parent = ctx.parent
    if parent is None:
        return [], []
    manifest = parent.manifest
    members = sorted(t for t, r in manifest.routes.items() if r.strategy == strategy
                     and t != ctx.task_id and all(m is not None for m in r.layers))
    if not members:
        return [], []
    # Each publish moves every member to the tuned set; the latest-trained member has it.
    latest = max(members, key=lambda t: (int(manifest.routes[t].trained_in.lstrip("v")), t))
    ids = [m for m in manifest.routes[latest].layers if m is not None]
    if any(manifest.modules[m].kind != ctx.params["module_kind"] for m in ids):
        return [], []
    return ids, [t for t in members if manifest.routes[t].layers == manifest.routes[latest].layers]
