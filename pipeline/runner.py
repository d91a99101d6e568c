"""Runs phases in order for one model: skips those whose checkpoint still matches, times the rest."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from enum import StrEnum

from core.config import Settings
from core.errors import BuildInProgressError, ImageSearchError
from core.model_config import ModelSpec
from core.types import PhaseName
from pipeline.progress import phase_bars
from pipeline.base import (PIPELINE_VERSION, NothingUsableError, Phase, PhaseResult, PipelineContext, digest,
                           file_digest, read_checkpoint, write_checkpoint)

logger = logging.getLogger(__name__)


class PhaseStatus(StrEnum):
    RAN = "ran"
    SKIPPED = "skipped"
    INCOMPLETE = "incomplete"
    FAILED = "failed"


Starting = Callable[[int, int, PhaseName], None]  # (position, phases in the run, name), before each phase


@dataclass
class PhaseOutcome:
    phase: PhaseName
    status: PhaseStatus
    result: PhaseResult
    seconds: float
    error: str = ""


def default_phases(mode: str = "all") -> list[Phase]:
    """``data`` = validation + download, ``ml`` = extraction + index, ``all`` = the four."""
    from pipeline.download import DownloadPhase
    from pipeline.extraction import ExtractionPhase
    from pipeline.indexing import IndexPhase
    from pipeline.validation import ValidationPhase

    data: list[Phase] = [ValidationPhase(), DownloadPhase()]
    ml: list[Phase] = [ExtractionPhase(), IndexPhase()]
    return {"data": data, "ml": ml, "all": data + ml}[mode]


def phase_fingerprint(phase: Phase, ctx: PipelineContext) -> str:
    return digest({"pipeline_version": PIPELINE_VERSION, "phase": phase.name.value, **phase.fingerprint(ctx)})


def _can_skip(phase: Phase, ctx: PipelineContext, fingerprint: str) -> PhaseResult | None:
    checkpoint = read_checkpoint(ctx.paths.checkpoint(phase.name))
    if not checkpoint or checkpoint.get("fingerprint") != fingerprint:
        return None
    if not all(p.exists() for p in phase.outputs(ctx)):
        return None
    intact = getattr(phase, "intact", None)  # a phase whose outputs can be checked beyond their existence
    if intact is not None and not intact(ctx):
        return None
    return PhaseResult(ok=checkpoint.get("ok", 0), failed=Counter(checkpoint.get("failed", {})),
                       details=checkpoint.get("details", {}), examples=checkpoint.get("examples", {}))


def run_phases(ctx: PipelineContext, phases: list[Phase], *, force: bool = False,
               outcomes: list[PhaseOutcome] | None = None, starting: Starting | None = None) -> list[PhaseOutcome]:
    """Run ``phases`` in order. A phase error propagates (a bad run raises); items fail softly.
    Each phase's outcome is appended to ``outcomes`` as it ends, a failed one too (status ``failed``,
    with what it counted before it stopped), so a caller can summarise a run that raised. ``starting``
    (optional) is told each phase's position and name before it runs or is skipped."""
    outcomes = [] if outcomes is None else outcomes
    for i, phase in enumerate(phases):
        if starting is not None:
            starting(i, len(phases), phase.name)
        fingerprint = phase_fingerprint(phase, ctx)
        cached = None if force else _can_skip(phase, ctx, fingerprint)
        if cached is not None:
            logger.info("%s/%s: up to date, skipped", ctx.model, phase.name)
            outcomes.append(PhaseOutcome(phase.name, PhaseStatus.SKIPPED, cached, 0.0))
            continue
        logger.info("%s/%s: running", ctx.model, phase.name)
        start = time.perf_counter()
        try:
            with phase_bars():  # closed before anything else prints, also when the phase raises
                result = _run_phase(phase, ctx)
        except ImageSearchError as exc:
            partial = exc.partial if isinstance(exc, NothingUsableError) else PhaseResult()
            outcomes.append(PhaseOutcome(phase.name, PhaseStatus.FAILED, partial, time.perf_counter() - start,
                                         error=exc.message))
            raise
        seconds = time.perf_counter() - start
        if result.complete:
            if getattr(phase, "fingerprint_after_run", False):  # its fingerprint covers what the run left
                fingerprint = phase_fingerprint(phase, ctx)
            write_checkpoint(ctx.paths.checkpoint(phase.name), phase.name, fingerprint, result, seconds)
        status = PhaseStatus.RAN if result.complete else PhaseStatus.INCOMPLETE
        logger.info("%s/%s: %s in %.1fs, ok=%d failed=%s", ctx.model, phase.name, status, seconds,
                    result.ok, dict(result.failed))
        outcomes.append(PhaseOutcome(phase.name, status, result, seconds))
    return outcomes


def _run_phase(phase: Phase, ctx: PipelineContext) -> PhaseResult:
    try:
        return phase.run(ctx)
    except sqlite3.DatabaseError as exc:  # the build state's reads meet a damaged file as one typed error
        raise ctx.state().db.failure(exc, "read") from None


def run_model(settings: Settings, spec: ModelSpec, *, mode: str = "all", force: bool = False,
              progress: bool = True, drop_api_edits: bool = False, outcomes: list[PhaseOutcome] | None = None,
              starting: Starting | None = None) -> list[PhaseOutcome]:
    """Run the pipeline for one model. One run per model at a time, across processes. ``outcomes``
    (optional) collects the phases' outcomes as they end, also when the run raises; ``starting`` (optional)
    is told each phase's position and name as it starts (a background job's progress)."""
    ctx = PipelineContext(settings=settings, spec=spec, progress=progress, drop_api_edits=drop_api_edits)
    ctx.executor()  # one that cannot run (Ray not installed) says so before any phase runs, not halfway
    if mode != "data":  # a CLIP folder that is not there: said at once, not after the downloads
        from core.encoder import check_backbone_folder

        check_backbone_folder(spec.backbone_for(settings))
    with model_lock(ctx.paths.models, spec.name):
        try:
            done = run_phases(ctx, default_phases(mode), force=force, outcomes=outcomes, starting=starting)
        except ImageSearchError as exc:
            _record_failure(ctx, outcomes, exc.message)
            raise
        finally:
            ctx.close()
    failure_path(ctx.paths.checkpoints).unlink(missing_ok=True)
    return done


def failure_path(checkpoints: Path) -> Path:
    """Why the model's last build stopped (``--list`` shows it); removed by the next build that ends."""
    return checkpoints / "last_failure.json"


def _record_failure(ctx: PipelineContext, outcomes: list[PhaseOutcome] | None, message: str) -> None:
    from utils.atomic import write_json_atomic

    failed = [o.phase.value for o in outcomes or [] if o.status == PhaseStatus.FAILED]
    try:
        write_json_atomic(failure_path(ctx.paths.checkpoints), {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "phase": failed[-1] if failed else None,
            "error": message.splitlines()[-1] if message else "", "csv": file_digest(ctx.paths.csv)})
    except OSError as exc:  # a full disk must not hide the build's own error
        logger.warning("%s: could not record the failure: %s", ctx.model, exc)


@contextmanager
def model_lock(folder: Path, model: str) -> Iterator[None]:
    """An exclusive lock on the model's build (released by the OS if the process dies)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildInProgressError(model) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
