"""In-process task sequences for strategy tests: fit, write blobs, build manifests (no Redis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters_store.blobstore import BlobStore
from adapters_store.datasets import Row
from adapters_store.records import BankManifest, JobRecord
from adapters_store.settings import Settings
from adapters_store.strategy_params import resolve
from tests.factories import CPU
from worker.bank import LoadedBank
from worker.routed_model import RoutedEncoder
from worker.strategies import STRATEGIES, FitContext, FitResult
from worker.train_job import ManifestWriter, Outcome, TrainerState, split_rows

TEST_SETTINGS = dict(base_model="tiny-bert", batch_size=8, learning_rate=1e-2,
                     head_learning_rate=1e-2, bottleneck_size=8, safm_learning_rate=1e-2,
                     safm_epochs=3, safm_warmup_epochs=2, safm_search_epochs=3, seed=0)


@dataclass
class Sequence:
    model: RoutedEncoder
    root: Path
    settings: Settings = field(default_factory=lambda: Settings(**TEST_SETTINGS))
    manifests: list[BankManifest] = field(default_factory=list)
    data: dict[str, tuple[list[Row], list[Row]]] = field(default_factory=dict)
    fits: list[FitResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blobs = BlobStore(self.root)
        self.state = TrainerState(settings=self.settings, registry=None,  # type: ignore[arg-type]
                                  blobs=self.blobs, model=self.model,
                                  bank=LoadedBank(self.blobs, CPU, keep=8), device=CPU)

    @property
    def live(self) -> BankManifest | None:
        return self.manifests[-1] if self.manifests else None

    def add(self, task_id: str, rows: list[Row], strategy: str = "safm",
            **overrides: Any) -> tuple[BankManifest, FitResult]:
        self.data[task_id] = split_rows(rows, 0.2, 0)
        train = self.data[task_id][0]
        labels = sorted({r.label for r in rows})
        params = resolve(strategy, overrides, self.settings, self.model.num_layers)
        parent = self.live
        ctx = FitContext(model=self.model, parent=self.state.bank.sync(parent) if parent else None,
                         task_id=task_id, train_rows=train, labels=labels, params=params,
                         progress=lambda p: None, device=CPU, seed=0,
                         task_rows=self.data.__getitem__)
        fit = STRATEGIES[strategy](ctx)
        number = len(self.manifests) + 1
        job = JobRecord(job_id=f"job_{number:016x}", task_id=task_id, dataset_id=f"ds_{task_id}",
                        strategy=strategy)
        full = sum(ctx.new_module(i).num_params for i in range(self.model.num_layers))
        outcome = Outcome(fit=fit, labels=labels, input_kind="single", metrics={},
                          params=params, full_route_params=full)
        manifest = ManifestWriter(self.state, job, parent, f"v{number}").build(number, outcome)
        self.manifests.append(manifest)
        self.fits.append(fit)
        return manifest, fit
