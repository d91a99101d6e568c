"""One background job, run in its own process by the API's job manager (``python -m api.job_worker DB TASK``):
the real pipeline, evaluation or embedding code, with progress and counts written to the jobs database.
Settings arrive as JSON in IMAGESEARCH_JOB_SETTINGS. A kill leaves nothing half-done that a rerun cannot
resume: the pipeline is resumable by construction and embedding upserts one product at a time."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from core.config import Settings
from core.errors import ImageSearchError
from core.jobs import Job, JobKind, JobStatus, JobStore
from core.model_config import ModelRegistry, ModelSpec

logger = logging.getLogger(__name__)
SETTINGS_ENV = "IMAGESEARCH_JOB_SETTINGS"


def _rebuild(job: Job, settings: Settings, spec: ModelSpec, jobs: JobStore) -> list[str]:
    from pipeline.runner import PhaseOutcome, run_model

    outcomes: list[PhaseOutcome] = []

    def counts() -> dict[str, Any]:
        return {o.phase.value: {"status": o.status.value, "ok": o.result.ok, "failed": o.result.num_failed}
                for o in outcomes}

    run_model(settings, spec, force=bool(job.params.get("force")), progress=False,
              drop_api_edits=bool(job.params.get("drop_api_edits")), outcomes=outcomes,
              starting=lambda i, n, phase: jobs.progress(job.task_id, i / n, phase.value, counts()))
    jobs.progress(job.task_id, 1.0, "done", counts())
    return []


def _evaluate(job: Job, settings: Settings, spec: ModelSpec, jobs: JobStore) -> list[str]:
    from training.evaluate import run_evaluation

    jobs.progress(job.task_id, 0.0, "evaluate", {})
    result = run_evaluation(settings, spec, progress=False)
    keep = {k: v for k, v in result.items() if isinstance(v, int | float | str) and not isinstance(v, bool)}
    jobs.progress(job.task_id, 1.0, "done", keep)
    return [str(n) for n in result.get("notes", [])]


def _embed(job: Job, settings: Settings, spec: ModelSpec, jobs: JobStore) -> list[str]:
    from PIL import Image

    from core.catalogue_store import open_store
    from core.store import ProductViews, product_vectors
    from core.encoder import ClipEncoder
    from pipeline.runner import model_lock

    ids = [str(i) for i in job.params.get("ids", [])]
    encoder = ClipEncoder.from_settings(settings, spec.backbone_for(settings))
    store = open_store(settings, spec, open_index=False)
    cache_dir = spec.paths(settings).image_cache
    errors: list[str] = []
    done = superseded = 0
    with model_lock(spec.paths(settings).models, spec.name):
        try:
            for n, pid in enumerate(ids):
                jobs.progress(job.task_id, n / max(1, len(ids)), "embed",
                              {"embedded": done, "failed": len(errors) - superseded, "superseded": superseded})
                found = store.get([pid])
                cached = list({ref: name for ref, name in zip(found[0].images, found[0].view_caches, strict=False)
                               if name}.values()) if found else []
                if not cached:
                    errors.append(f"{pid}: {'unknown product' if not found else 'no cached image'}")
                    continue
                images = []
                for name in cached:
                    with Image.open(cache_dir / name) as img:
                        images.append(img.convert("RGB"))
                # written only if nobody edited or deleted the product since it was read above
                views = ProductViews(found[0], encoder.encode_images(images), if_version=found[0].updated_at)
                if store.upsert(product_vectors([views], store.head)):
                    done += 1
                elif store.get([pid]) != found:
                    superseded += 1
                    errors.append(f"{pid}: edited or deleted while it was embedded; the newer write was kept")
                else:
                    done += 1  # embedded again to the very same vector: nothing to write
        finally:
            store.close()
    jobs.progress(job.task_id, 1.0, "done",
                  {"embedded": done, "failed": len(errors) - superseded, "superseded": superseded})
    return errors


def _backup(job: Job, settings: Settings, spec: ModelSpec, jobs: JobStore) -> list[str]:
    from pipeline.backup import backup_model

    jobs.progress(job.task_id, 0.0, "backup", {})
    report = backup_model(settings, spec, say=lambda line: jobs.progress(job.task_id, 0.5, line, {}))
    jobs.progress(job.task_id, 1.0, "done", {"backup": report.path.name, "generation": report.generation,
                                               "products": report.products, "bytes": report.bytes,
                                               "seconds": round(report.seconds, 2), "consistent": report.consistent})
    return [] if report.consistent else ["writes kept landing while Milvus was read: each product is as of some "
                                         "moment during the backup"]


_KINDS = {JobKind.REBUILD: _rebuild, JobKind.EVALUATE: _evaluate, JobKind.EMBED: _embed, JobKind.BACKUP: _backup}


def run(db: Path, task_id: str, settings: Settings) -> int:
    jobs = JobStore(db)
    job = jobs.get(task_id)
    if job is None:
        return 2
    try:
        spec = ModelRegistry.discover(settings).get(job.model)
        errors = _KINDS[job.kind](job, settings, spec, jobs)
    except ImageSearchError as exc:
        jobs.finish_if(task_id, JobStatus.RUNNING, JobStatus.FAILED, [*job.errors, exc.message])
        return 1
    except Exception as exc:
        logger.error("job %s failed:\n%s", task_id, traceback.format_exc())
        jobs.finish_if(task_id, JobStatus.RUNNING, JobStatus.FAILED, [*job.errors, f"{type(exc).__name__}: {exc}"])
        return 1
    jobs.finish_if(task_id, JobStatus.RUNNING, JobStatus.SUCCEEDED, [*job.errors, *errors])
    return 0


def main(argv: list[str]) -> int:
    from utils.logging_setup import setup_logging

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    setup_logging(settings.logs_dir, "jobs.log")
    return run(Path(argv[0]), argv[1], settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
