"""SQLite plumbing shared by the catalogue store and the pipeline's build state: one file per model,
WAL, a connection per thread for readers, one serialised writer, and disk-full as a typed error."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from core.errors import StorageFullError, StoreError

_BUSY_TIMEOUT_MS = 60_000  # a pipeline batch may hold the write lock for a while; edits wait, not fail


def _is_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "full" in text or "no space" in text or getattr(exc, "sqlite_errorcode", 0) == 13


class Database:
    """One SQLite file. Readers get a connection of their own thread (WAL: they never wait for the
    writer); writes go through :meth:`write`, one transaction at a time in this process, and SQLite's
    file lock (``BEGIN IMMEDIATE``) serialises them with other processes."""

    def __init__(self, path: Path, schema: str, name: str = "") -> None:
        self.path = Path(path)
        self.name = name or self.path.parent.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._writer: sqlite3.Connection | None = None
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        with self._write_lock:
            self._writer = self._connect()
            try:
                self._writer.executescript(schema)  # CREATE ... IF NOT EXISTS: idempotent across processes
            except sqlite3.Error as exc:
                raise self._error(exc, "set-up") from None

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            # before the first table is created: 8 KiB pages hold three 2 KB vector rows where 4 KiB pages
            # hold one (measured 4.3 KB a product at 512-d with the default); a no-op on an existing file
            conn.execute("PRAGMA page_size=8192")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged edit survives a power cut
            conn.execute("PRAGMA cache_size=-65536")  # 64 MB page cache per connection
        except sqlite3.Error as exc:
            raise self._error(exc, "open") from None
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (autocommit: each statement sees the latest commit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees one consistent state of the file."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.rollback()
            self._discard(conn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; committed when the block ends, rolled back if it raises."""
        with self._write_lock:
            if self._writer is None:
                self._writer = self._connect()
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error(exc, "lock") from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc, "write") from None
                raise

    @contextmanager
    def write_connection(self) -> Iterator[sqlite3.Connection]:
        """The writer connection outside a transaction (VACUUM cannot run inside one), other writes of this
        process held off meanwhile."""
        with self._write_lock:
            if self._writer is None:
                self._writer = self._connect()
            try:
                yield self._writer
            except sqlite3.Error as exc:
                raise self._error(exc, "write") from None

    def _error(self, exc: sqlite3.Error, action: str) -> StoreError:
        if _is_full(exc):
            return StorageFullError(self.name, f"the disk holding {self.path.parent} is full ({exc})")
        return StoreError(self.name, f"catalogue database {action} failed: {exc}")

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    def close(self) -> None:
        with self._connections_lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            with suppress(sqlite3.Error):
                conn.close()
        self._writer = None
        self._local = threading.local()


def now() -> float:
    return round(time.time(), 3)


def stage_ids(conn: sqlite3.Connection, ids: Iterable[str], table: str = "keep_ids") -> None:
    """Fill the temporary table ``table`` (id TEXT PRIMARY KEY) with ``ids``, 10,000 rows at a time, so a
    set difference against it runs in SQLite and no Python object per id is held."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}(id TEXT PRIMARY KEY)")
    conn.execute(f"DELETE FROM {table}")
    batch: list[tuple[str]] = []
    for pid in ids:
        batch.append((pid,))
        if len(batch) >= 10_000:
            conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?)", batch)
            batch = []
    conn.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?)", batch)
