"""The query log: one SQLite row per search (model, query kind, filters, latency, result count, top ids;
never the query image or text), written by one background thread from a bounded queue so a search
never waits on the disk. Rows older than the retention are deleted as the writer goes."""

from __future__ import annotations

import json
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Settings

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    ts REAL NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, filters TEXT NOT NULL,
    latency_ms REAL NOT NULL, results INTEGER NOT NULL, top_ids TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS queries_ts ON queries (ts);
"""
_QUEUE_SIZE = 10_000
_TOP_IDS = 10
_PRUNE_EVERY_S = 3600.0


@dataclass(frozen=True)
class QueryRecord:
    model: str
    kind: str  # image | text | vector | similar
    latency_ms: float
    results: int
    top_ids: Sequence[str] = ()
    filters: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)
    return conn


class QueryLog:
    """``record`` never blocks: a full queue drops the row (counted in ``dropped``)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.query_log_enabled
        self.path = settings.query_log_path
        self.retention_s = settings.query_log_retention_days * 86400.0
        self.dropped = 0
        self._queue: queue.Queue[QueryRecord | None] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._flushed = threading.Condition()
        self._pending = 0

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="query-log", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
            self._thread = None

    def record(self, item: QueryRecord) -> None:
        if not self.enabled or self._thread is None:
            return
        with self._flushed:
            self._pending += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            self._done(1)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every recorded row is written (tests, shutdown)."""
        with self._flushed:
            return self._flushed.wait_for(lambda: self._pending == 0, timeout)

    def _done(self, count: int) -> None:
        with self._flushed:
            self._pending -= count
            self._flushed.notify_all()

    def _run(self) -> None:
        conn = _connect(self.path)
        # prune after the first batch whatever the clock says: time.monotonic() counts from boot, so "0.0" read
        # as "an hour ago" only on a machine up for an hour (a fresh CI box kept rows past the retention)
        last_prune = -math.inf
        try:
            while True:
                batch = [self._queue.get()]
                while len(batch) < 500 and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                rows = [r for r in batch if r is not None]
                self._write(conn, rows)
                if time.monotonic() - last_prune > _PRUNE_EVERY_S:
                    prune(conn, time.time() - self.retention_s)
                    last_prune = time.monotonic()
                self._done(len(rows))
                if len(rows) < len(batch):
                    return
        finally:
            conn.close()

    @staticmethod
    def _write(conn: sqlite3.Connection, rows: list[QueryRecord]) -> None:
        if not rows:
            return
        try:
            with conn:
                conn.executemany("INSERT INTO queries VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 [(r.ts, r.model, r.kind, json.dumps(r.filters, sort_keys=True), r.latency_ms,
                                   r.results, json.dumps(list(r.top_ids)[:_TOP_IDS])) for r in rows])
        except sqlite3.Error as exc:  # the log must never take searches down
            logger.warning("query log: %d rows lost: %s", len(rows), exc)


def prune(conn: sqlite3.Connection, before: float) -> int:
    with conn:
        return conn.execute("DELETE FROM queries WHERE ts < ?", (before,)).rowcount


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(path: Path, *, days: int, categories: Callable[[str, list[str]], dict[str, str]],
              now: float | None = None) -> list[dict[str, Any]]:
    """Per model and day (UTC): volume, p50/p95 latency, zero-result rate, most frequent categories (of the
    category filter, else of the top hit, looked up through ``categories(model, ids)``)."""
    if not path.is_file():
        return []
    since = (now or time.time()) - days * 86400.0
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = conn.execute("SELECT date(ts, 'unixepoch'), model, kind, filters, latency_ms, results, top_ids "
                            "FROM queries WHERE ts >= ? ORDER BY ts", (since,)).fetchall()
    finally:
        conn.close()
    groups: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1]), []).append(row)
    return [_day(day, model, items, categories) for (day, model), items in sorted(groups.items())]


def _day(day: str, model: str, items: list[tuple[Any, ...]],
         categories: Callable[[str, list[str]], dict[str, str]]) -> dict[str, Any]:
    latencies = sorted(float(r[4]) for r in items)
    firsts = [ids[0] for r in items if (ids := json.loads(r[6]))]
    known = categories(model, sorted(set(firsts)))
    counted: Counter[str] = Counter()
    for r in items:
        ids = json.loads(r[6])
        cat = json.loads(r[3]).get("category") or (known.get(ids[0]) if ids else None)
        if cat:
            counted[cat] += 1
    return {"day": day, "model": model, "queries": len(items),
            "kinds": dict(Counter(str(r[2]) for r in items)),
            "p50_ms": round(_percentile(latencies, 50), 3), "p95_ms": round(_percentile(latencies, 95), 3),
            "zero_result_rate": round(sum(1 for r in items if int(r[5]) == 0) / len(items), 4),
            "top_categories": [{"category": c, "queries": n} for c, n in counted.most_common(5)]}
