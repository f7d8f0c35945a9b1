"""Runs one strategy over a task sequence with the trainer's own fit and publish code, scoring
every task seen so far on its test split after each task (the accuracy matrix)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import torch

from adapters_store.records import LayerDecision
from adapters_store.settings import Settings
from adapters_store.strategy_params import StrategyOverrides
from worker.continual.metrics import average, bwt, forgetting
from worker.continual.sequences import TaskData
from worker.evaluation import accuracy
from worker.progress import Progress
from worker.routed_model import RoutedEncoder
from worker.sequence import Sequence

# (strategy, task index, task name) -> a progress callback and a closer for that task
ProgressFactory = Callable[[str, int, str], tuple[Callable[[Progress], None], Callable[[], None]]]


def quiet_progress(strategy: str, index: int, task: str
                   ) -> tuple[Callable[[Progress], None], Callable[[], None]]:
    return (lambda p: None), (lambda: None)


@dataclass
class RunConfig:
    settings: Settings
    params: dict[str, StrategyOverrides]
    device: torch.device


def _decisions(decisions: list[LayerDecision]) -> list[dict[str, Any]]:
    return [d.model_dump(include={"layer", "choice", "forced", "module", "weights", "method",
                                  "losses"})
            for d in decisions]


def run_strategy(strategy: str, tasks: list[TaskData], model: RoutedEncoder, cfg: RunConfig,
                 progress: ProgressFactory = quiet_progress) -> dict[str, Any]:
    n = len(tasks)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    # The same on each task's validation split (from its train rows): what tuning may look at.
    val_matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    steps: list[dict[str, Any]] = []
    overrides = cfg.params.get(strategy, StrategyOverrides())
    with TemporaryDirectory(prefix=f"adapterd-bench-{strategy}-") as tmp:
        seq = Sequence(model, Path(tmp), cfg.settings, device=cfg.device)
        for i, task in enumerate(tasks):
            report, close = progress(strategy, i, task.name)
            seq.progress = report
            started = time.monotonic()
            try:
                out = seq.add(task.name, task.train, strategy, overrides)
            finally:
                close()
            train_seconds = time.monotonic() - started
            manifest, job = out.manifest, out.result
            started = time.monotonic()
            loaded = seq.bank.sync(manifest)
            for j in range(i + 1):
                t = loaded.tasks[tasks[j].name]
                for m, rows in ((matrix, tasks[j].test), (val_matrix, seq.data[tasks[j].name][1])):
                    m[i][j] = accuracy(model, t.modules, t.head, rows, t.label_index)
            eval_seconds = time.monotonic() - started
            train_rows, val_rows = seq.data[task.name]
            val_acc = val_matrix[i][i]
            totals = manifest.totals()
            steps.append({
                "task": task.name, "train_rows": len(train_rows), "val_rows": len(val_rows),
                "test_rows": len(task.test), "val_accuracy": val_acc,
                "train_seconds": round(train_seconds, 2), "eval_seconds": round(eval_seconds, 2),
                "params_added": job.params_added, "route_params": manifest.route_params(task.name),
                "head_params": manifest.routes[task.name].head.params,
                "bank_adapter_params": totals["adapter_params"],
                "bank_head_params": totals["head_params"], "bank_modules": totals["modules"],
                "decisions": _decisions(job.decisions), "replayed": job.replayed,
                "replayed_rows": job.replayed_rows, "stage_seconds": job.stage_seconds,
                "gate": job.gate.model_dump() if job.gate else None,
                "ham": job.ham.model_dump() if job.ham else None,
                "old_tasks_val": {t: e.model_dump() for t, e in job.old_tasks.items()},
                "strategy_params": manifest.routes[task.name].strategy_params.model_dump(),
            })
        final = seq.live.totals() if seq.live else {}
    result: dict[str, Any] = {
        "strategy": strategy, "tasks": [t.name for t in tasks], "matrix": matrix,
        "average": average(matrix), "bwt": bwt(matrix), "forgetting": forgetting(matrix),
        "val_matrix": val_matrix, "val_average": average(val_matrix), "val_bwt": bwt(val_matrix),
        "bank": final, "train_seconds": round(sum(s["train_seconds"] for s in steps), 1),
        "eval_seconds": round(sum(s["eval_seconds"] for s in steps), 1), "steps": steps,
    }
    result["params_per_task"] = final.get("adapter_params", 0) / max(1, n)
    result["nan_cells"] = sum(1 for row in matrix for v in row
                              if v is not None and math.isnan(v))
    return result
