"""Request and response models of the HTTP API (what OpenAPI shows and what clients rely on)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from adapters_store.merges import MergeInfo
from adapters_store.records import (
    TASK_ID_PATTERN,
    BaseModelInfo,
    DatasetRecord,
    InputKind,
    JobRecord,
    JobState,
    ModuleKind,
)
from adapters_store.streams import Prediction

JOB_ID_PATTERN = r"^job_[0-9a-f]{16}$"
VERSION_PATTERN = r"^v[0-9]+$"
TaskState = Literal["ready", "queued", "training", "failed", "cancelled", "not_live"]

TaskIdPath = Annotated[str, Path(pattern=TASK_ID_PATTERN, description="task id")]
JobIdPath = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="job id")]
Version = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(Model):
    code: str
    message: str
    details: Any = None


class ErrorResponse(Model):
    error: ErrorBody


# ---- uploads and jobs ------------------------------------------------------------------------
class UploadAccepted(Model):
    job_id: str
    dataset_id: str
    task_id: str
    status_url: str


class TaskDeleted(Model):
    task_id: str
    version: str | None = Field(description="the version published without the task's route "
                                "(None: it had no live route)")
    cancelled_jobs: list[str]


class JobAccepted(Model):
    """A merge or import job was queued: follow it at ``status_url``."""

    job_id: str
    task_id: str
    status_url: str


class JobList(Model):
    jobs: list[JobRecord]


# ---- predict -------------------------------------------------------------------------------
class PairInput(Model):
    text: Annotated[str, StringConstraints(min_length=1)]
    text_pair: Annotated[str, StringConstraints(min_length=1)] | None = None


class PredictRequest(Model):
    inputs: list[Annotated[str, StringConstraints(min_length=1)] | PairInput] = Field(
        min_length=1, description="texts, or {text, text_pair} objects for pair tasks")
    version: Version | None = Field(None, description="pin a bank version (default: live)")


class PredictResponse(Model):
    task_id: str
    version: str | None
    predictions: list[Prediction]


# ---- tasks ---------------------------------------------------------------------------------
class TaskSummary(Model):
    task_id: str
    state: TaskState
    labels: list[str]
    input_kind: InputKind | None
    params: int | None = Field(None, description="adapter params on the task's route")
    head_params: int | None = None
    latest_job_id: str | None
    latest_job_state: JobState | None
    metrics: dict[str, float]


class TaskList(Model):
    tasks: list[TaskSummary]


class RouteLayer(Model):
    layer: int
    module: str | None
    kind: ModuleKind | None
    params: int
    shared_with: list[str]


class RouteView(Model):
    version: str
    layers: list[RouteLayer]
    labels: list[str]
    head_params: int
    params: int
    full_route_params: int
    strategy: str
    dataset_id: str
    job_id: str
    trained_in: str
    merge: MergeInfo | None = None


class TaskDetail(TaskSummary):
    route: RouteView | None
    datasets: list[DatasetRecord]
    jobs: list[JobRecord]
    trained_in: str | None = Field(None, description="bank version that trained the live route")
    trained_versions: list[str] = Field(description="versions published by the task's jobs")


# ---- adapter bank --------------------------------------------------------------------------
class ModuleView(Model):
    id: str
    kind: ModuleKind
    layer: int
    params: int
    users: list[str]
    created_by: str
    created_in: str
    config: dict[str, Any]
    density: float | None = Field(None, description="sparse: stored values / dense entries")


class LayerView(Model):
    layer: int
    modules: list[str]
    users: dict[str, list[str]] = Field(description="module id -> the tasks that route it")
    empty: list[str] = Field(description="tasks with no module at this layer")


class TaskRouteView(Model):
    layers: list[str | None]
    labels: list[str]
    params: int
    head_params: int
    full_route_params: int = Field(description="what one adapter of its own would cost the task")
    strategy: str | None = None
    merge: MergeInfo | None = None


class HamGroupView(Model):
    group: int
    members: list[str]
    modules: list[str | None] = Field(description="the group's module per layer")
    rank: int = Field(description="the group's LoRA rank (the largest over layers)")
    params: int


class HamView(Model):
    groups: list[HamGroupView]
    max_groups: int
    rank_cap: int = Field(description="0: uncapped")
    bound_params: int | None = Field(
        None, description="the most the HAM groups and the task-agnostic route can hold: "
        "2 x max_groups x rank_cap ranks at every target of every layer (None when uncapped)")


class AdaptersView(Model):
    live_version: str | None
    base_model: BaseModelInfo | None
    strategy: str | None
    modules: list[ModuleView]
    layers: list[LayerView]
    routes: dict[str, TaskRouteView]
    totals: dict[str, int]
    ham: HamView | None = None


class VersionEntry(BaseModel):
    model_config = ConfigDict(extra="allow")  # history entries may grow fields; show them all

    version: str
    at: float
    reason: str
    previous: str | None = None


class VersionsView(Model):
    live_version: str | None
    history: list[VersionEntry]


class RollbackRequest(Model):
    version: Version


# ---- OpenAI-compatible model list ---------------------------------------------------------
class ModelCard(Model):
    id: str = Field(description="the task id (what predict takes)")
    object: Literal["model"] = "model"
    created: int = Field(description="unix time the bank version that trained the route was built")
    owned_by: str = "adapterd"
    parent: str = Field(description="the base model every task shares")
    version: str = Field(description="bank version that trained the task's live route")
    labels: list[str]
    input_kind: InputKind


class ModelList(Model):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- health --------------------------------------------------------------------------------
class Health(Model):
    status: str


class Ready(Model):
    status: str
    redis: str
    inference_workers: int
    live_version: str | None
