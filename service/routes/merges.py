"""Routes of merges: enqueue a merge of tasks' modules as a bank operation, list merge jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from adapters_store.merges import MergeRequest, check_merge
from service.auth import AdminAuth, ReadAuth
from service.deps import RegistryDep
from service.schemas import ErrorResponse, JobAccepted, JobList

router = APIRouter(prefix="/v1/merges", tags=["merges"])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)}


@router.post("", status_code=202, response_model=JobAccepted, dependencies=[AdminAuth],
             responses=ERRORS, summary="Merge tasks' adapter modules into one set (a job)")
def post_merge(body: MergeRequest, registry: RegistryDep) -> JobAccepted:
    """Checked now against the live bank (members exist, one module kind, a method that can
    merge it, one label set for a named merge); the trainer checks again against the bank it
    merges and publishes one new version, or fails the job and leaves the bank unchanged."""
    check_merge(registry.live_manifest(), body)
    job = registry.submit_merge(body)
    return JobAccepted(job_id=job.job_id, task_id=job.task_id,
                       status_url=f"/v1/jobs/{job.job_id}")


@router.get("", response_model=JobList, dependencies=[ReadAuth])
def get_merges(registry: RegistryDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JobList:
    """Recent merge jobs (newest first) with their members, method, state and result."""
    return JobList(jobs=[j for j in registry.jobs(limit) if j.kind == "merge"])
