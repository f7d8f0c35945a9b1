"""Pydantic records crossing process boundaries: bank manifests, routes, modules, jobs, datasets."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ModuleKind = Literal["bottleneck", "lora"]
InputKind = Literal["single", "pair"]
JobState = Literal["queued", "running", "succeeded", "failed"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes):  # noqa: ANN206 - returns cls
        return cls.model_validate_json(raw)


class ModuleRecord(Record):
    """An immutable adapter module at one layer; ``id`` is the sha256 of its spec and tensors."""

    id: str
    kind: ModuleKind
    layer: int = Field(ge=0)
    params: int = Field(ge=0)
    config: dict[str, Any]
    blob: str
    created_by: str
    created_in: str


class HeadRecord(Record):
    """A task's classification head: labels in output order plus the tensor blob."""

    labels: list[str] = Field(min_length=2)
    blob: str
    params: int = Field(ge=0)


class Route(Record):
    """How a task reaches the base model: a module id (None = empty) per layer, plus its head."""

    task_id: str = Field(pattern=TASK_ID_PATTERN)
    layers: list[str | None]
    head: HeadRecord
    input_kind: InputKind
    strategy: str
    dataset_id: str
    job_id: str
    trained_in: str
    full_route_params: int = Field(ge=0, description="params of one new module at every layer")
    metrics: dict[str, float] = Field(default_factory=dict)
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    decisions: list[dict[str, Any]] = Field(default_factory=list)


class BaseModelInfo(Record):
    name: str
    fingerprint: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)


class BankManifest(Record):
    """An immutable bank version: every module and every task's route, written before it is live."""

    version: str
    number: int = Field(ge=1)
    parent: str | None
    base: BaseModelInfo
    modules: dict[str, ModuleRecord]
    routes: dict[str, Route]
    strategy: str
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    note: str = ""

    def route_params(self, task_id: str) -> int:
        route = self.routes[task_id]
        return sum(self.modules[m].params for m in route.layers if m is not None)

    def module_users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {m: [] for m in self.modules}
        for task_id, route in sorted(self.routes.items()):
            for module_id in dict.fromkeys(m for m in route.layers if m is not None):
                users[module_id].append(task_id)
        return users

    def totals(self) -> dict[str, int]:
        adapter = sum(m.params for m in self.modules.values())
        heads = sum(r.head.params for r in self.routes.values())
        per_task = sum(r.full_route_params for r in self.routes.values())
        return {
            "modules": len(self.modules),
            "tasks": len(self.routes),
            "adapter_params": adapter,
            "head_params": heads,
            "one_adapter_per_task_params": per_task,
        }


class DatasetRecord(Record):
    id: str
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    filename: str
    format: Literal["jsonl", "csv"]
    input_kind: InputKind
    rows: int
    label_counts: dict[str, int]
    blob: str
    created_at: float = Field(default_factory=time.time)


class JobProgress(Record):
    stage: str = "queued"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eta_s: float | None = None
    updated_at: float = Field(default_factory=time.time)


class JobResult(Record):
    version: str
    params_added: int
    route_params: int
    val_accuracy: float
    val_rows: int
    train_rows: int
    majority_baseline: float
    train_seconds: float
    layers: list[str | None]
    decisions: list[dict[str, Any]] = Field(default_factory=list)
    replayed: list[str] = Field(default_factory=list)
    old_tasks: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="held-out accuracy before/after of affected tasks")
    strategy_params: dict[str, Any] = Field(default_factory=dict)


class JobRecord(Record):
    job_id: str
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    dataset_id: str
    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)
    state: JobState = "queued"
    attempts: int = 0
    trainer_id: str | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    result: JobResult | None = None
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


class TaskRecord(Record):
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    created_at: float = Field(default_factory=time.time)
    dataset_ids: list[str] = Field(default_factory=list)
    job_ids: list[str] = Field(default_factory=list)
