"""Merges as bank operations: the request contract, what a merged route records, and the checks
a merge must pass against a bank version (shared by the API, before enqueueing, and the
trainer, against the bank it merges)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters_store.errors import Conflict, InvalidInput, NotFound
from adapters_store.strategy_params import RESERVED_TASK_IDS

if TYPE_CHECKING:
    from adapters_store.records import BankManifest

MergeMethod = Literal["uniform_sparse", "uniform", "ties"]
MERGE_METHODS: tuple[str, ...] = get_args(MergeMethod)
_TASK_ID = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # records.TASK_ID_PATTERN (records imports this module)


class MergeRequest(BaseModel):
    """``POST /v1/merges``: merge the members' modules layer by layer into one new set.

    ``name``: a new task served by the merged set with the members' heads averaged; needs one
    label set and one input kind across members. ``replace``: the members themselves move to the
    merged set (each keeps its own head), which shrinks the bank; refused, bank unchanged, when
    a member's held-out accuracy drops by more than ``tolerance``. At least one of the two.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[str] = Field(min_length=2, max_length=256)
    method: MergeMethod
    name: str | None = Field(None, pattern=_TASK_ID)
    replace: bool = False
    density: float = Field(0.2, gt=0, le=1, description="ties: fraction kept per task (top-k)")
    tolerance: float | None = Field(
        None, ge=0, le=1, description="replace: largest allowed held-out accuracy drop per "
        "member (fraction; default: the server's merge_tolerance)")

    @model_validator(mode="after")
    def _shape(self) -> MergeRequest:
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks lists a task twice")
        if self.name is None and not self.replace:
            raise ValueError("a merge needs a name (a new merged task), replace=true, or both")
        if self.name is not None and self.name in self.tasks:
            raise ValueError("name must be a new task id, not one of the members")
        if self.name in RESERVED_TASK_IDS:
            raise ValueError(f"task id {self.name!r} is reserved")
        return self


class MergeInfo(BaseModel):
    """What a merged route records: who was merged, how, by which job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: list[str]
    method: MergeMethod
    density: float | None = None
    replace: bool = False
    job_id: str


def check_merge(manifest: BankManifest | None, req: MergeRequest) -> str:
    """Refuse what cannot be merged in ``manifest``; returns the members' module kind."""
    if manifest is None:
        raise NotFound("the bank is empty: no task to merge")
    missing = [t for t in req.tasks if t not in manifest.routes]
    if missing:
        raise NotFound(f"unknown tasks {missing}", {"tasks": missing})
    if req.name is not None and req.name in manifest.routes:
        raise Conflict(f"task {req.name!r} already exists; choose a new name for the merge")
    kinds = sorted({manifest.modules[m].kind for t in req.tasks
                    for m in manifest.routes[t].layers if m is not None})
    if not kinds:
        raise InvalidInput("the members have no adapter modules: nothing to merge")
    if len(kinds) > 1:
        raise InvalidInput(f"the members use different module kinds {kinds}; merge tasks of "
                           "one kind", {"kinds": kinds})
    if kinds == ["bottleneck"] and req.method == "ties":
        raise InvalidInput("ties merges additive weight deltas; bottleneck modules are not "
                           "additive (use uniform or uniform_sparse)")
    if req.name is not None:
        labels = {tuple(manifest.routes[t].head.labels) for t in req.tasks}
        inputs = {manifest.routes[t].input_kind for t in req.tasks}
        if len(labels) > 1 or len(inputs) > 1:
            raise InvalidInput(
                "a merged task needs one label set and one input kind across its members (its "
                "head is the members' heads averaged); to serve each member through the merged "
                "modules with its own head, send replace=true without a name",
                {"label_sets": sorted(list(x) for x in labels), "input_kinds": sorted(inputs)})
    return kinds[0]
