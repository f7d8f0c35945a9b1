"""Pydantic records crossing process boundaries: bank manifests, routes, modules, jobs, datasets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from adapters_store.merges import MergeInfo, MergeRequest
from adapters_store.module_config import CONFIG_TYPES, ModuleConfig, ModuleKind
from adapters_store.strategy_params import (
    HAM_ALL_TASK,
    RESERVED_TASK_IDS,
    StrategyName,
    StrategyOverrides,
    TrainParams,
)

__all__ = ["FINISHED_JOB_STATES", "HAM_ALL_TASK", "RESERVED_TASK_IDS", "ModuleKind", "StrategyName"]

# Records (or routes) a loader handles between two pauses (see BankManifest.from_json).
PAUSE_EVERY = 32

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

InputKind = Literal["single", "pair"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _none_if_empty(value: Any) -> Any:
    return None if value == {} else value


# Records written before params were typed may hold {} where no params were recorded.
OptionalParams = Annotated[TrainParams | None, BeforeValidator(_none_if_empty)]


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
    config: ModuleConfig
    blob: str
    created_by: str
    created_in: str

    @model_validator(mode="before")
    @classmethod
    def _config_of_kind(cls, data: Any) -> Any:
        # The kind says which config type applies; a union guess could pick the wrong one.
        if isinstance(data, dict) and isinstance(data.get("config"), dict) \
                and data.get("kind") in CONFIG_TYPES:
            data = dict(data, config=CONFIG_TYPES[data["kind"]].model_validate(data["config"]))
        return data


class LayerDecision(Record):
    """What a strategy chose at one layer for a task's route, and (for a search) why."""

    layer: int = Field(ge=0)
    choice: Literal["empty", "reuse", "new"]
    forced: bool = False
    module: str | None = Field(None, description="the reused module's id")
    weights: dict[str, float] = Field(default_factory=dict,
                                      description="final softmax weight per candidate")
    logits: list[float] = Field(default_factory=list)
    method: str | None = Field(None, description="how it was decided (SAFM's decision mode)")
    losses: dict[str, float] = Field(
        default_factory=dict, description="validation decision: held-out loss per candidate")


class OldTaskEval(Record):
    """An earlier task's held-out accuracy before and after a job changed its path."""

    before: float
    after: float


class GateCheck(Record):
    """One earlier task at the regression gate: held-out accuracy before and after the job's
    proposed change, the largest drop allowed, and whether it held."""

    before: float
    after: float
    rows: int = Field(ge=0, description="held-out rows it was measured on")
    tolerance: float
    passed: bool


class GateReport(Record):
    """The regression gate of a job (strategy_params.GateMode): what it checked and did."""

    mode: Literal["fallback", "fail", "off"]
    outcome: Literal["passed", "fallback", "failed", "unchecked"] = Field(
        description="unchecked: mode off, or no earlier task was touched")
    checks: dict[str, GateCheck] = Field(
        default_factory=dict, description="the proposed change, task by task")
    reverted_modules: list[str] = Field(
        default_factory=list, description="shared modules kept as they were (ids)")
    reverted_heads: list[str] = Field(default_factory=list,
                                      description="tasks whose head was kept as it was")
    unshared_layers: list[int] = Field(
        default_factory=list, description="layers where the new task keeps its tuned copy as a "
        "module of its own instead of sharing")


class HamReport(Record):
    """What a HAM job decided: the group, why (similarities), the pruning and the rank after."""

    group: int = Field(ge=0, description="the group the task joined (creation order)")
    new_group: bool
    similarities: dict[str, float] = Field(description="group index -> cosine to the task")
    prune_keep_ratio: float
    pruned_fraction: float = Field(description="of the task adapter's factor entries")
    rank_before: int = Field(ge=0, description="the group's rank before this task (0: new)")
    rank_after: int = Field(ge=0)
    capped: bool = Field(description="the concatenated rank exceeded rank_cap: SVD-truncated")
    members: list[str] = Field(description="the group's tasks after this job")


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
    strategy_params: OptionalParams = None
    decisions: list[LayerDecision] = Field(default_factory=list)
    merge: MergeInfo | None = Field(None, description="set when a merge built or moved this route")
    ham_group: int | None = Field(None, ge=0, description="HAM: the task's group")


class BaseModelInfo(Record):
    name: str
    fingerprint: str
    family: str = Field("bert", description="model_type family (adapters_store/model_families.py)")
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
    strategy_params: OptionalParams = None
    created_at: float = Field(default_factory=time.time)
    note: str = ""

    @classmethod
    def from_json(cls, raw: str | bytes, pause: Callable[[], None] | None = None
                  ) -> BankManifest:
        """Validated record by record: one validate_json over thousands of routes holds the GIL
        for hundreds of milliseconds, stalling the thread that serves (or the API's event loop)
        beside the one that parses. ``pause`` runs every ``PAUSE_EVERY`` records, so a loader
        thread can hand the GIL to the serving thread."""
        data = json.loads(raw)
        if not (isinstance(data, dict) and isinstance(data.get("modules"), dict)
                and isinstance(data.get("routes"), dict)):
            return cls.model_validate(data)  # malformed: the usual error

        def each(items: dict[str, Any], record: type[Record]) -> dict[str, Any]:
            out = {}
            for n, (k, v) in enumerate(items.items(), 1):
                out[k] = record.model_validate(v)
                if pause is not None and n % PAUSE_EVERY == 0:
                    pause()
            return out

        modules = each(data["modules"], ModuleRecord)
        routes = each(data["routes"], Route)
        shell = cls.model_validate(data | {"modules": {}, "routes": {}})
        return shell.model_copy(update={"modules": modules, "routes": routes})

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
            "shared_modules": sum(len(u) > 1 for u in self.module_users().values()),
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
    """Where a job is: its current stage, and steps, fraction and ETA over the whole job."""

    stage: str = "queued"
    epoch: int = Field(0, description="epoch within the current stage")
    epochs: int = Field(0, description="epochs of the current stage")
    step: int = Field(0, description="training steps done, all stages")
    total_steps: int = Field(0, description="training steps planned, all stages")
    stage_step: int = 0
    stage_steps: int = 0
    fraction: float = Field(0.0, ge=0, le=1, description="of the whole job's training steps")
    loss: float | None = None
    eta_s: float | None = None
    updated_at: float = Field(default_factory=time.time)


class JobResult(Record):
    version: str
    params_added: int
    route_params: int
    val_accuracy: float | None = Field(description="None: nothing to evaluate on (an import)")
    val_rows: int
    train_rows: int
    majority_baseline: float | None
    train_seconds: float
    layers: list[str | None]
    decisions: list[LayerDecision] = Field(default_factory=list)
    replayed: list[str] = Field(default_factory=list)
    old_tasks: dict[str, OldTaskEval] = Field(
        default_factory=dict, description="held-out accuracy before/after of affected tasks")
    strategy_params: OptionalParams = None
    merge: MergeInfo | None = None
    ham: HamReport | None = None
    gate: GateReport | None = None
    replayed_rows: dict[str, int] = Field(default_factory=dict,
                                          description="stored training rows replayed per task")
    stage_seconds: dict[str, float] = Field(default_factory=dict,
                                            description="wall seconds per stage of the job")


class JobRecord(Record):
    """A training job (a dataset for a task) or a merge job (``merge``: members into one set);
    ``task_id`` is the trained task, or the merged task (the first member when the merge only
    replaces)."""

    job_id: str
    kind: Literal["train", "merge", "import"] = "train"
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    dataset_id: str | None = None
    strategy: StrategyName | None = None
    params: StrategyOverrides = Field(default_factory=StrategyOverrides)
    merge: MergeRequest | None = None
    import_blob: str | None = Field(None, description="import: the uploaded peft zip's blob")
    input_kind: InputKind = "single"
    state: JobState = "queued"
    attempts: int = 0
    trainer_id: str | None = None
    reclaimed_from: str | None = Field(None, description="the trainer that died running it")
    progress: JobProgress = Field(default_factory=JobProgress)
    result: JobResult | None = None
    error: str | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None


    @model_validator(mode="after")
    def _kind_fields(self) -> JobRecord:
        if self.kind == "train" and (self.dataset_id is None or self.strategy is None):
            raise ValueError("a train job needs a dataset_id and a strategy")
        if self.kind == "merge" and self.merge is None:
            raise ValueError("a merge job needs its merge request")
        if self.kind == "import" and self.import_blob is None:
            raise ValueError("an import job needs the adapter's blob")
        return self


class TaskRecord(Record):
    task_id: str = Field(pattern=TASK_ID_PATTERN)
    created_at: float = Field(default_factory=time.time)
    dataset_ids: list[str] = Field(default_factory=list)
    job_ids: list[str] = Field(default_factory=list)
