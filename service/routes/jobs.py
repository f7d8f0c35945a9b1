"""Routes of the job resource: one training job's state and progress, and recent jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from adapters_store.records import JobRecord
from service.auth import AdminAuth, ReadAuth
from service.deps import RegistryDep
from service.schemas import ErrorResponse, JobIdPath, JobList

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ReadAuth])


@router.get("/{job_id}", response_model=JobRecord, responses={404: {"model": ErrorResponse}})
def get_job(job_id: JobIdPath, registry: RegistryDep) -> JobRecord:
    return registry.job(job_id)


@router.get("", response_model=JobList)
def get_jobs(registry: RegistryDep,
             limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> JobList:
    return JobList(jobs=registry.jobs(limit))


@router.delete("/{job_id}", status_code=202, response_model=JobRecord,
             dependencies=[AdminAuth],
             responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def cancel_job(job_id: JobIdPath, registry: RegistryDep) -> JobRecord:
    """A queued job is cancelled at once; a running one stops at its next training step and
    publishes nothing (state becomes ``cancelled``). Too late once the job is publishing, and
    409 for a finished job."""
    return registry.cancel_job(job_id)
