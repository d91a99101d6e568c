"""The job manager: queued jobs start as worker processes (one at a time per model, ``max_running`` in
all), their exit is noticed, cancellation kills the worker's process group, and at start-up every job the
last API process left running is adopted (its worker still alive), re-queued (the work is resumable) or,
after ``job_max_attempts`` runs, marked failed. Nothing is lost: the jobs live in SQLite."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.config import PROJECT_ROOT, Settings
from core.errors import (BackupInProgressError, BuildInProgressError, ImageSearchError, JobNotFoundError,
                         JobQueueFullError)
from core.jobs import Job, JobKind, JobStatus, JobStore

from api.job_worker import SETTINGS_ENV

logger = logging.getLogger(__name__)

_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)
_EXCLUSIVE = (JobKind.REBUILD, JobKind.EMBED)  # jobs that write the catalogue: one per model at a time
_RETRY_AFTER_S = 30  # a full queue: about the time an evaluation takes on a small catalogue
_SHORT_EMBED = 1000  # products an embed job may name and still pass long jobs
_AGED_S = 600.0  # a long job waiting this long starts before short ones that came later


def _short(job: Job) -> bool:
    """Embedding a few products takes seconds; a rebuild, an evaluation or a backup takes minutes."""
    return job.kind == JobKind.EMBED and len(job.params.get("ids") or ()) <= _SHORT_EMBED


def _alive_worker(pid: int | None, task_id: str) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return task_id.encode() in cmdline and b"api.job_worker" in cmdline


class JobManager:
    def __init__(self, settings: Settings, *, max_running: int = 1, poll_s: float = 0.2) -> None:
        self.settings = settings
        self.store = JobStore(settings.jobs_path)
        self.max_running = max_running
        self._poll = poll_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> None:
        try:
            self._recover()
        except ImageSearchError as exc:  # the jobs database cannot be opened now (a full disk): retried later
            logger.warning("jobs not recovered at start: %s", exc.message)
        self._thread = threading.Thread(target=self._run, name="jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop managing; running workers go on (the next API process adopts or resumes their jobs)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    # requests
    def submit(self, kind: JobKind, model: str, params: dict[str, object]) -> Job:
        with self._lock:
            busy = [j for j in self.store.recent(limit=1000, statuses=_ACTIVE) if j.model == model]
            if kind == JobKind.BACKUP and any(j.kind == JobKind.BACKUP for j in busy):
                raise BackupInProgressError(model)  # a backup reads while others write: only one at a time
            if kind in _EXCLUSIVE and any(j.kind in _EXCLUSIVE for j in busy):
                raise BuildInProgressError(model)  # one build (or embedding) per model, queued or running
            waiting = sum(j.status == JobStatus.QUEUED for j in busy)
            if waiting >= self.settings.job_queue_max:
                raise JobQueueFullError(model, waiting, _RETRY_AFTER_S)
            return self.store.create(kind, model, params)

    def waiting(self) -> list[Job]:
        """Queued jobs in the order they start: short ones (embedding a few products) before long ones
        (rebuilds, evaluations, backups), oldest first within each; a job waiting over _AGED_S counts as short."""
        now = time.time()
        queued = self.store.recent(limit=1000, statuses=(JobStatus.QUEUED,))
        return sorted(queued, key=lambda j: (not (_short(j) or now - j.created_at > _AGED_S), j.created_at))

    def get(self, task_id: str) -> Job:
        job = self.store.get(task_id)
        if job is None:
            raise JobNotFoundError(task_id)
        return job

    def cancel(self, task_id: str) -> Job:
        with self._lock:
            job = self.get(task_id)
            if job.status == JobStatus.QUEUED:
                self.store.set_status(task_id, JobStatus.CANCELLED)
            elif job.status == JobStatus.RUNNING:
                self.store.set_status(task_id, JobStatus.CANCELLING)
                self._kill(task_id, job.pid)
        return self.get(task_id)

    # the loop
    def _run(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                with self._lock:
                    self._reap()
                    self._launch()
            except ImageSearchError as exc:  # e.g. the jobs database on a full disk: quiet until it is back
                logger.debug("job manager: %s", exc.message)
            except Exception:
                logger.exception("job manager: loop error")

    def _recover(self) -> None:
        for job in self.store.recent(limit=10_000, statuses=(JobStatus.RUNNING, JobStatus.CANCELLING)):
            if _alive_worker(job.pid, job.task_id) and job.pid is not None:
                self._adopted[job.task_id] = job.pid
                logger.info("job %s: worker %d still running, adopted", job.task_id, job.pid)
            else:
                self._interrupted(job)

    def _interrupted(self, job: Job) -> None:
        if job.status == JobStatus.CANCELLING:
            self.store.set_status(job.task_id, JobStatus.CANCELLED)
        elif job.attempts < self.settings.job_max_attempts:
            logger.warning("job %s: interrupted (attempt %d), queued again to resume", job.task_id, job.attempts)
            self.store.set_status(job.task_id, JobStatus.QUEUED,
                                  errors=[*job.errors, f"attempt {job.attempts} interrupted; resumed"])
        else:
            self.store.set_status(job.task_id, JobStatus.FAILED,
                                  errors=[*job.errors, f"interrupted {job.attempts} times; given up"])

    def _reap(self) -> None:
        for task_id, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[task_id]
                self._finished(task_id, proc.returncode)
        for task_id, pid in list(self._adopted.items()):
            if not _alive_worker(pid, task_id):
                del self._adopted[task_id]
                self._finished(task_id, None)

    def _finished(self, task_id: str, code: int | None) -> None:
        job = self.store.get(task_id)
        if job is None or job.status.finished:
            return  # the worker recorded its own outcome
        if job.status == JobStatus.CANCELLING:
            self.store.set_status(task_id, JobStatus.CANCELLED)
        else:  # killed from outside, or crashed before it could say
            logger.warning("job %s: worker ended with %s without an outcome", task_id, code)
            self._interrupted(job)

    def _launch(self) -> None:
        running = {j.model for j in self.store.recent(limit=1000, statuses=(JobStatus.RUNNING, JobStatus.CANCELLING))}
        for job in self.waiting():
            if len(self._procs) + len(self._adopted) >= self.max_running:
                return
            if job.model in running:
                continue
            self._spawn(job)
            running.add(job.model)

    def _spawn(self, job: Job) -> None:
        env = {**os.environ, SETTINGS_ENV: self.settings.model_dump_json(exclude={"api_key", "api_keys"})}
        proc = subprocess.Popen([sys.executable, "-m", "api.job_worker", str(self.store.path), job.task_id],
                                cwd=PROJECT_ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._procs[job.task_id] = proc
        self.store.started(job.task_id, proc.pid)
        logger.info("job %s (%s %s): worker %d started", job.task_id, job.kind, job.model, proc.pid)

    def _kill(self, task_id: str, pid: int | None) -> None:
        if pid and _alive_worker(pid, task_id):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)


def job_json(job: Job) -> dict[str, object]:
    data: dict[str, object] = json.loads(json.dumps(job.__dict__, default=str))
    return data
