"""What a strategy receives (the frozen base, the parent bank, the task's data) and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapters_store.datasets import Row
from adapters_store.settings import Settings
from worker.bank import LoadedVersion
from worker.modules import AdapterModule, module_config
from worker.routed_model import RoutedEncoder
from worker.training import ProgressFn, TrainConfig


@dataclass
class FitContext:
    model: RoutedEncoder
    parent: LoadedVersion | None
    task_id: str
    train_rows: list[Row]
    labels: list[str]
    settings: Settings
    progress: ProgressFn
    device: torch.device

    @property
    def label_index(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def train_config(self) -> TrainConfig:
        s = self.settings
        return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.learning_rate,
                           head_lr=s.head_learning_rate, weight_decay=s.weight_decay, seed=s.seed)

    def new_module(self, layer: int) -> AdapterModule:
        s = self.settings
        config = module_config(s.module_kind, self.model.base.info.hidden_size,
                               size=s.bottleneck_size, rank=s.lora_rank, alpha=s.lora_alpha,
                               targets=s.lora_targets)
        return AdapterModule(s.module_kind, layer, config).to(self.device)

    def new_head(self) -> nn.Linear:
        head = nn.Linear(self.model.base.info.hidden_size, len(self.labels))
        nn.init.normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head.to(self.device)


@dataclass
class FitResult:
    """The task's route (module objects or None per layer), what is new, and its head."""

    route: list[AdapterModule | None]
    new_modules: list[AdapterModule]
    head: nn.Linear
    strategy_params: dict[str, Any] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
