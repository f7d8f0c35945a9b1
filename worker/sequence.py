"""In-process task sequences (tests, benchmarks): the trainer's fit and manifest code, no Redis."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapters_store.blobstore import BlobStore
from adapters_store.datasets import Row
from adapters_store.records import BankManifest, JobRecord
from adapters_store.settings import Settings
from adapters_store.strategy_params import resolve
from worker.bank import LoadedBank
from worker.routed_model import RoutedEncoder
from worker.strategies import STRATEGIES, FitContext, FitResult
from worker.train_job import ManifestWriter, Outcome, TrainerState, split_rows
from worker.training import ProgressFn

CPU = torch.device("cpu")


@dataclass
class Sequence:
    model: RoutedEncoder
    root: Path
    settings: Settings
    device: torch.device = CPU
    manifests: list[BankManifest] = field(default_factory=list)
    data: dict[str, tuple[list[Row], list[Row]]] = field(default_factory=dict)
    fits: list[FitResult] = field(default_factory=list)
    progress: ProgressFn = field(default=lambda p: None)

    def __post_init__(self) -> None:
        self.blobs = BlobStore(self.root)
        self.state = TrainerState(settings=self.settings, registry=None,  # type: ignore[arg-type]
                                  blobs=self.blobs, model=self.model,
                                  bank=LoadedBank(self.blobs, self.device, keep=8),
                                  device=self.device)

    @property
    def live(self) -> BankManifest | None:
        return self.manifests[-1] if self.manifests else None

    def add(self, task_id: str, rows: list[Row], strategy: str = "safm",
            **overrides: Any) -> tuple[BankManifest, FitResult]:
        self.data[task_id] = split_rows(rows, self.settings.val_fraction, self.settings.seed)
        train = self.data[task_id][0]
        labels = sorted({r.label for r in rows})
        params = resolve(strategy, overrides, self.settings, self.model.num_layers)
        parent = self.live
        ctx = FitContext(model=self.model, parent=self.state.bank.sync(parent) if parent else None,
                         task_id=task_id, train_rows=train, labels=labels, params=params,
                         progress=self.progress, device=self.device,
                         seed=self.settings.seed,
                         task_rows=self.data.__getitem__)
        fit = STRATEGIES[strategy](ctx)
        number = len(self.manifests) + 1
        job = JobRecord(job_id=f"job_{number:016x}", task_id=task_id, dataset_id=f"ds_{task_id}",
                        strategy=strategy)
        full = sum(ctx.new_module(i).num_params for i in range(self.model.num_layers))
        kind = "pair" if rows[0].text_pair is not None else "single"
        outcome = Outcome(fit=fit, labels=labels, input_kind=kind, metrics={},
                          params=params, full_route_params=full)
        manifest = ManifestWriter(self.state, job, parent, f"v{number}").build(number, outcome)
        self.manifests.append(manifest)
        self.fits.append(fit)
        return manifest, fit
