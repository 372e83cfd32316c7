"""Ingest jobs: ``POST /ingest/run`` (202 + job id), ``GET /jobs``, ``GET /jobs/{id}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from marketlake.api.deps import ContextDep, ReadAccess, StoreDep, WriteAccess, in_thread
from marketlake.api.errors import problem_responses
from marketlake.api.models import IngestRequest, JobAccepted, JobOut
from marketlake.store import Job

router = APIRouter(tags=["jobs"])


def _job(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        params=job.params,
        summary=job.summary,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


@router.post(
    "/ingest/run",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    summary="Start an ingest job",
    responses=problem_responses(422),
)
async def run_ingest(
    body: IngestRequest, _: WriteAccess, ctx: ContextDep, response: Response
) -> JobAccepted:
    """Check the request, record a job and run it in the background; poll ``url`` for it."""
    from marketlake.timeseries.times import resolve_range

    start, end = resolve_range(body.start, body.end, body.period, fields=True)
    assert start is not None  # required=True gives both ends
    assert end is not None
    plan = ctx.jobs.plan(body.provider, body.symbols, body.timeframe, start, end)
    job_id: str = await in_thread(lambda: ctx.jobs.start_record(ctx.store, plan))
    ctx.jobs.launch(ctx.store, plan, job_id)
    url = f"/api/v1/jobs/{job_id}"
    response.headers["Location"] = url
    return JobAccepted(job_id=job_id, status="pending", url=url)


@router.get("/jobs", response_model=list[JobOut], summary="Recent jobs")
async def list_jobs(
    _: ReadAccess,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many of the newest")] = 50,
    kind: Annotated[
        str | None, Query(description="Only jobs of this kind", examples=["ingest"], max_length=50)
    ] = None,
) -> list[JobOut]:
    """The newest jobs first."""
    jobs: list[Job] = await in_thread(store.list_jobs, limit, kind)
    return [_job(j) for j in jobs]


@router.get(
    "/jobs/{job_id}", response_model=JobOut, summary="One job", responses=problem_responses(404)
)
async def get_job(
    job_id: Annotated[str, Path(max_length=64, examples=["3f9a1c2b7d4e"])],
    _: ReadAccess,
    store: StoreDep,
) -> JobOut:
    """Status, parameters, per-symbol counts and error of a job."""
    job: Job = await in_thread(store.get_job, job_id)
    return _job(job)
