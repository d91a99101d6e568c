"""Background jobs, persisted in SQLite (``checkpoints/jobs.db``) so they outlive an API restart: each job's
kind, model, parameters, status, progress, counts and errors, its attempts and its worker's pid."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.errors import StorageFullError, StoreError

logger = logging.getLogger(__name__)


class JobKind(StrEnum):
    REBUILD = "rebuild"
    EVALUATE = "evaluate"
    EMBED = "embed"
    BACKUP = "backup"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    task_id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, params TEXT NOT NULL,
    status TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, stage TEXT NOT NULL DEFAULT '',
    counts TEXT NOT NULL DEFAULT '{}', errors TEXT NOT NULL DEFAULT '[]', attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER, created_at REAL NOT NULL, started_at REAL, finished_at REAL);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
"""
_COLS = ("task_id, kind, model, params, status, progress, stage, counts, errors, attempts, pid, created_at, "
         "started_at, finished_at")


@dataclass
class Job:
    task_id: str
    kind: JobKind
    model: str
    params: dict[str, Any]
    status: JobStatus
    progress: float = 0.0
    stage: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    attempts: int = 0
    pid: int | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


def _job(row: tuple[Any, ...]) -> Job:
    return Job(task_id=row[0], kind=JobKind(row[1]), model=row[2], params=json.loads(row[3]),
               status=JobStatus(row[4]), progress=row[5], stage=row[6], counts=json.loads(row[7]),
               errors=json.loads(row[8]), attempts=row[9], pid=row[10], created_at=row[11], started_at=row[12],
               finished_at=row[13])


class JobStore:
    """Every method opens its own short connection: the API and job workers share the file. A file that
    cannot be opened (a full disk) makes each call raise StorageFullError until it can; nothing else stops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ready = False
        try:
            with self._session():
                pass
        except StoreError as exc:
            logger.warning("background jobs unavailable for now: %s", exc.message)

    def _conn(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            if not self._ready:
                conn.executescript(_SCHEMA)
                self._ready = True
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """A short connection; an SQLite or file failure (a full disk) becomes StorageFullError."""
        try:
            conn = self._conn()
            try:
                yield conn
            finally:
                conn.close()
        except (sqlite3.Error, OSError) as exc:
            raise StorageFullError("", f"the jobs database {self.path} cannot be written ({exc}); free some "
                                       "space on its disk") from None

    def _one(self, sql: str, params: tuple[Any, ...]) -> None:
        with self._session() as conn, conn:
            conn.execute(sql, params)

    def create(self, kind: JobKind, model: str, params: dict[str, Any]) -> Job:
        job = Job(task_id=uuid.uuid4().hex, kind=kind, model=model, params=params, status=JobStatus.QUEUED,
                  created_at=time.time())
        self._one(f"INSERT INTO jobs ({_COLS}) VALUES ({','.join('?' * 14)})",
                  (job.task_id, job.kind.value, model, json.dumps(params), job.status.value, 0.0, "", "{}", "[]",
                   0, None, job.created_at, None, None))
        return job

    def get(self, task_id: str) -> Job | None:
        with self._session() as conn:
            row = conn.execute(f"SELECT {_COLS} FROM jobs WHERE task_id = ?", (task_id,)).fetchone()
        return _job(row) if row else None

    def recent(self, *, limit: int = 50, statuses: tuple[JobStatus, ...] = ()) -> list[Job]:
        where = f"WHERE status IN ({','.join('?' * len(statuses))})" if statuses else ""
        with self._session() as conn:
            rows = conn.execute(f"SELECT {_COLS} FROM jobs {where} ORDER BY created_at DESC LIMIT ?",
                                (*[s.value for s in statuses], limit)).fetchall()
        return [_job(r) for r in rows]

    def started(self, task_id: str, pid: int) -> None:
        self._one("UPDATE jobs SET status = ?, pid = ?, attempts = attempts + 1, started_at = ? WHERE task_id = ?",
                  (JobStatus.RUNNING.value, pid, time.time(), task_id))

    def progress(self, task_id: str, progress: float, stage: str, counts: dict[str, Any]) -> None:
        self._one("UPDATE jobs SET progress = ?, stage = ?, counts = ? WHERE task_id = ?",
                  (progress, stage, json.dumps(counts), task_id))

    def set_status(self, task_id: str, status: JobStatus, *, errors: list[str] | None = None) -> None:
        finished = time.time() if status.finished else None
        if errors is None:
            self._one("UPDATE jobs SET status = ?, finished_at = ? WHERE task_id = ?",
                      (status.value, finished, task_id))
        else:
            self._one("UPDATE jobs SET status = ?, finished_at = ?, errors = ? WHERE task_id = ?",
                      (status.value, finished, json.dumps(errors[-50:]), task_id))

    def finish_if(self, task_id: str, expected: JobStatus, status: JobStatus, errors: list[str]) -> bool:
        """Move from ``expected`` to ``status`` only if nobody changed it meanwhile."""
        with self._session() as conn, conn:
            n = conn.execute("UPDATE jobs SET status = ?, finished_at = ?, errors = ? WHERE task_id = ? "
                             "AND status = ?", (status.value, time.time() if status.finished else None,
                                                json.dumps(errors[-50:]), task_id, expected.value)).rowcount
        return bool(n)
