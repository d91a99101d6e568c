"""SQLite plumbing shared by the catalogue store and the pipeline's build state: one file per model,
WAL, a connection per thread for readers, one serialised writer, and disk-full as a typed error."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from core.errors import CatalogueReplacedError, StorageFullError, StoreError

T = TypeVar("T")
_BACKUP_PAGES = 4096  # pages per backup step (32 MB at 8 KiB pages)

_BUSY_TIMEOUT_MS = 60_000  # a pipeline batch may hold the write lock for a while; edits wait, not fail


def _is_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "full" in text or "no space" in text or getattr(exc, "sqlite_errorcode", 0) == 13


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Database:
    """One SQLite file. Readers get a connection of their own thread (WAL: they never wait for the
    writer); writes go through :meth:`write`, one transaction at a time in this process, and SQLite's
    file lock (``BEGIN IMMEDIATE``) serialises them with other processes.

    The file it opened is remembered: once a restore has put another file at the path (a folder swapped
    in), :meth:`replaced` says so and no new connection is opened onto the new file, so this process keeps
    reading one catalogue - the old one, through its open connections - until it reloads the model."""

    def __init__(self, path: Path, schema: str, name: str = "") -> None:
        self.path = Path(path)
        self.name = name or self.path.parent.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._writer: sqlite3.Connection | None = None
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.identity: tuple[int, int] | None = None
        with self._write_lock:
            for _ in range(3):  # a restore swapping the file in while it opens: open the one now there
                before = _identity(self.path)
                writer = self._connect()
                self.identity = _identity(self.path)
                if before is None or before == self.identity:
                    break
                self._discard(writer)
            self._writer = writer
            try:
                writer.executescript(schema)  # CREATE ... IF NOT EXISTS: idempotent across processes
            except sqlite3.Error as exc:
                raise self._error(exc, "set-up") from None

    def replaced(self) -> bool:
        """True when the file at the path is no longer the one this database opened (a restore swapped it)."""
        return self.identity is not None and _identity(self.path) != self.identity

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
        if self.identity is not None and _identity(self.path) != self.identity:
            conn.close()  # a connection onto the restored file beside the old one's index: serve neither half
            raise CatalogueReplacedError(self.name)
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

    def backup(self, target: Path, read: Callable[[sqlite3.Connection], T],
               progress: Callable[[int, int], None] | None = None) -> T:
        """Copy the database to ``target`` (a new file) with SQLite's online backup API, a few thousand pages a
        step, while other connections and processes go on reading and writing. The copy is of one
        generation: it runs inside one read transaction (WAL: writers never wait for it, and it never
        restarts), and ``read`` runs in that same transaction, so what it returns (the generation, counts)
        describes the copy exactly."""
        source = self._connect()
        dest = sqlite3.connect(target, isolation_level=None)
        try:
            source.execute("BEGIN")
            found = read(source)  # the read transaction's snapshot starts here; the backup steps share it
            source.backup(dest, pages=_BACKUP_PAGES, sleep=0,
                          progress=(lambda _s, left, total: progress(total - left, total)) if progress else None)
            source.rollback()
        except sqlite3.Error as exc:
            raise self._error(exc, "backup") from None
        finally:
            dest.close()
            self._discard(source)
        return found

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
