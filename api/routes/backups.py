"""Admin: backups of one model (``write:<model>`` or ``admin``): take one as a background job, list those taken.
Restoring is an operator's command (``run_training.py --restore``), not a route."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Depends

from core.jobs import JobKind
from pipeline.backup import list_backups

from api.deps import CatalogueDep, SettingsDep, require_admin
from api.jobs import JobManager
from api.routes.jobs import accepted, get_jobs
from api.schemas import BackupInfo, JobAccepted, error_responses

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(401, 403, 404, 408, 413, 429, 503))


@router.post("/{model}/backups", response_model=JobAccepted, status_code=202, responses=error_responses(409),
             summary="Queue a backup of the model, taken while it serves and accepts edits (see GET /jobs)")
async def start_backup(model: str, catalogue: CatalogueDep,
                       jobs: JobManager = Depends(get_jobs)) -> JobAccepted:
    catalogue.model(model).require()
    return await to_thread.run_sync(accepted, jobs, JobKind.BACKUP, model, {})


@router.get("/{model}/backups", response_model=list[BackupInfo], summary="The model's backups, newest first")
async def backups(model: str, catalogue: CatalogueDep,
                  settings: SettingsDep) -> list[BackupInfo]:
    catalogue.model(model)
    found = await to_thread.run_sync(list_backups, settings.backups_dir, model)
    return [BackupInfo(**{k: v for k, v in b.items() if k != "path"}) for b in found]
