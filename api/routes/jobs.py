"""Admin: background jobs (rebuild, evaluate, embed). Jobs run as worker processes; see api/jobs.py."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request

from core.jobs import JobKind
from core.keys import Action

from api.auth import check
from api.guards import AUDIT_PRODUCT
from api.deps import Caller, CatalogueDep, require_admin
from api.jobs import JobManager, job_json
from api.schemas import EmbedJobRequest, JobAccepted, RebuildJobRequest, error_responses

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(400, 401, 403, 404, 408, 413, 422, 429, 503))


def get_jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


def accepted(jobs: JobManager, kind: JobKind, model: str, params: dict[str, Any]) -> JobAccepted:
    job = jobs.submit(kind, model, params)
    return JobAccepted(task_id=job.task_id, status=job.status.value, kind=kind.value, model=model)


_CONFLICT = error_responses(409)


@router.post("/{model}/jobs/rebuild", response_model=JobAccepted, status_code=202, responses=_CONFLICT,
             summary="Queue a pipeline run of the model (409 while one is queued or running)")
async def job_rebuild(model: str, catalogue: CatalogueDep, body: RebuildJobRequest | None = None,
                      jobs: JobManager = Depends(get_jobs)) -> JobAccepted:
    catalogue.model(model)
    params = (body or RebuildJobRequest()).model_dump()
    return await to_thread.run_sync(accepted, jobs, JobKind.REBUILD, model, params)


@router.post("/{model}/jobs/evaluate", response_model=JobAccepted, status_code=202,
             summary="Queue an evaluation of the model (training/evaluate.py)")
async def job_evaluate(model: str, catalogue: CatalogueDep,
                       jobs: JobManager = Depends(get_jobs)) -> JobAccepted:
    catalogue.model(model).require()
    return await to_thread.run_sync(accepted, jobs, JobKind.EVALUATE, model, {})


@router.post("/{model}/jobs/embed", response_model=JobAccepted, status_code=202, responses=_CONFLICT,
             summary="Queue re-embedding these products from their cached images")
async def job_embed(model: str, body: EmbedJobRequest, request: Request,
                    catalogue: CatalogueDep, jobs: JobManager = Depends(get_jobs)) -> JobAccepted:
    setattr(request.state, AUDIT_PRODUCT, ",".join(body.ids[:5]) + (f",... ({len(body.ids)} ids)"
                                                                     if len(body.ids) > 5 else ""))
    catalogue.model(model).require()
    return await to_thread.run_sync(accepted, jobs, JobKind.EMBED, model, {"ids": body.ids})


@router.get("/jobs", summary="Recent jobs, newest first (a write:<model> key sees its models' jobs)")
async def list_jobs(caller: Caller, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    jobs: JobManager = Depends(get_jobs)) -> list[dict[str, Any]]:
    recent = await to_thread.run_sync(lambda: jobs.store.recent(limit=limit))
    return [job_json(j) for j in recent if caller.may(Action.JOBS, j.model)]


@router.get("/jobs/{task_id}", summary="A job's status, progress, counts and errors")
async def get_job(task_id: str, caller: Caller, jobs: JobManager = Depends(get_jobs)) -> dict[str, Any]:
    job = await to_thread.run_sync(jobs.get, task_id)
    check(caller, Action.JOBS, job.model)
    return job_json(job)


@router.delete("/jobs/{task_id}", summary="Cancel a job (a running worker is stopped)")
async def cancel_job(task_id: str, caller: Caller, jobs: JobManager = Depends(get_jobs)) -> dict[str, Any]:
    check(caller, Action.WRITE, (await to_thread.run_sync(jobs.get, task_id)).model)
    return job_json(await to_thread.run_sync(jobs.cancel, task_id))
