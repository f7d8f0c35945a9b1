"""In-process task sequences (tests, benchmarks): the trainer's own pipeline over a local blob
store, with each version published in memory instead of in Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapters_store.blobstore import BlobStore
from adapters_store.datasets import Row
from adapters_store.records import BankManifest
from adapters_store.settings import Settings
from adapters_store.strategy_params import StrategyOverrides, resolve
from worker.bank import LoadedBank
from worker.pipeline import TrainOutput, TrainSpec, train_version
from worker.progress import ProgressFn, no_progress
from worker.routed_model import RoutedEncoder

CPU = torch.device("cpu")


@dataclass
class Sequence:
    model: RoutedEncoder
    root: Path
    settings: Settings
    device: torch.device = CPU
    manifests: list[BankManifest] = field(default_factory=list)
    data: dict[str, tuple[list[Row], list[Row]]] = field(default_factory=dict)
    outputs: list[TrainOutput] = field(default_factory=list)
    progress: ProgressFn = no_progress

    def __post_init__(self) -> None:
        self.blobs = BlobStore(self.root)
        self.bank = LoadedBank(self.blobs, self.device, keep=8)

    @property
    def live(self) -> BankManifest | None:
        return self.manifests[-1] if self.manifests else None

    def add(self, task_id: str, rows: list[Row], strategy: str = "safm",
            overrides: StrategyOverrides | None = None, **given: object) -> TrainOutput:
        """Train ``task_id`` on ``rows`` exactly as a trainer job would, and make it live;
        hyperparameters as an upload gives them (``overrides``, or keywords)."""
        if overrides is None:
            overrides = StrategyOverrides.model_validate(given)
        params = resolve(strategy, overrides, self.settings, self.model.num_layers)
        number = len(self.manifests) + 1
        spec = TrainSpec(task_id=task_id, job_id=f"job_{number:016x}", dataset_id=f"ds_{task_id}",
                         rows=rows, params=params, seed=self.settings.seed,
                         val_fraction=self.settings.val_fraction)
        parent = self.bank.sync(self.live) if self.live else None
        out = train_version(self.model, parent, spec, number, self.device, self.progress,
                            self.data.__getitem__)
        for data in out.blobs.values():
            self.blobs.put(data)
        self.data[task_id] = (out.train_rows, out.val_rows)
        self.manifests.append(out.manifest)
        self.outputs.append(out)
        return out
