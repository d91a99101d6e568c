"""SQLite plumbing shared by the catalogue store and the pipeline's build state: one file per model,
WAL, a connection per thread for readers, one serialised writer, and disk-full as a typed error."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from core.errors import CatalogueReplacedError, CorruptStoreError, StorageFullError, StoreError

logger = logging.getLogger(__name__)
T = TypeVar("T")
_BACKUP_PAGES = 4096  # pages per backup step (32 MB at 8 KiB pages)

_BUSY_TIMEOUT_MS = 60_000  # a pipeline batch may hold the write lock for a while; edits wait, not fail
QUICK_CHECK_MAX_BYTES = 1 << 30  # files up to this size get PRAGMA quick_check on open (about a second per GB)
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _is_full(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "full" in text or "no space" in text or getattr(exc, "sqlite_errorcode", 0) == 13


def _cannot_write(exc: sqlite3.Error) -> bool:
    """An open that failed because nothing can be written there (a full disk SQLite meets as an I/O error on
    the shared-memory file, or a read-only file system), not because the file is bad."""
    text = str(exc).lower()
    return _is_full(exc) or "disk i/o error" in text or "readonly" in text or "read-only" in text


def is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    return isinstance(exc, sqlite3.DatabaseError) and (
        (code is not None and code & 0xFF in _CORRUPT_CODES) or "malformed" in text or "not a database" in text)


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

    A file that cannot be opened for writing (a full disk, a read-only mount) is opened read-only, so what
    is there keeps being served: ``read_only`` is then True and each write first tries to open it for
    writing again, raising StorageFullError while it still cannot. A damaged file raises CorruptStoreError
    (on open, from ``PRAGMA quick_check`` for files up to QUICK_CHECK_MAX_BYTES, or from the first read
    that meets the damage; ``damaged`` then says so).

    The file it opened is remembered: once a restore has put another file at the path (a folder swapped
    in), :meth:`replaced` says so and no new connection is opened onto the new file, so this process keeps
    reading one catalogue - the old one, through its open connections - until it reloads the model."""

    def __init__(self, path: Path, schema: str, name: str = "") -> None:
        self.path = Path(path)
        self.name = name or self.path.parent.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.read_only = False
        self._ro_mode = ""
        self.damaged: str | None = None
        self._schema = schema
        self._local = threading.local()
        self._epoch = 0  # bumped when read-only connections give way to writable ones
        self._write_lock = threading.RLock()
        self._writer: sqlite3.Connection | None = None
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.identity: tuple[int, int] | None = None
        with self._write_lock:
            try:
                self._writer = self._open_writer()
            except sqlite3.Error as exc:
                if not (_cannot_write(exc) and self.path.is_file() and self.path.stat().st_size):
                    raise self._error(exc, "open") from None
                self._open_read_only(exc)
        self._check()

    def _open_writer(self) -> sqlite3.Connection:
        for _ in range(3):  # a restore swapping the file in while it opens: open the one now there
            before = _identity(self.path)
            writer = self._connect()  # a full disk fails here already: WAL mode needs its shared-memory file
            self.identity = _identity(self.path)
            if before is None or before == self.identity:
                break
            self._discard(writer)
        return self._with_schema(writer)

    def replaced(self) -> bool:
        """True when the file at the path is no longer the one this database opened (a restore swapped it)."""
        return self.identity is not None and _identity(self.path) != self.identity

    def _writable(self) -> sqlite3.Connection:
        return self._with_schema(self._connect())

    def _with_schema(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        try:
            conn.executescript(self._schema)  # CREATE ... IF NOT EXISTS: idempotent across processes
        except sqlite3.Error:
            self._discard(conn)
            raise
        return conn

    def _open_read_only(self, cause: sqlite3.Error) -> None:
        """Serve the file as it is: ``mode=ro`` reads the WAL too; where even that fails (no shared-memory file
        can be made), ``immutable=1`` reads the main file alone, which holds everything once the WAL is empty."""
        self.identity = self.identity or _identity(self.path)
        wal = self.path.with_name(self.path.name + "-wal")
        modes = ["mode=ro"] + (["immutable=1"] if not wal.is_file() or not wal.stat().st_size else [])
        for mode in modes:
            try:
                conn = self._connect(mode)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error:
                continue
            self.read_only, self._ro_mode = True, mode
            self._discard(conn)
            logger.warning("%s: %s cannot be written (%s): opened read-only, serving what it holds", self.name,
                           self.path, cause)
            return
        raise self._error(cause, "open")

    def _connect(self, mode: str = "") -> sqlite3.Connection:
        if mode:
            conn = sqlite3.connect(f"file:{quote(str(self.path))}?{mode}", uri=True, timeout=_BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if not mode:
                # before the first table is created: 8 KiB pages hold three 2 KB vector rows where 4 KiB pages
                # hold one (measured 4.3 KB a product at 512-d with the default); a no-op on an existing file
                conn.execute("PRAGMA page_size=8192")
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged edit survives a power cut
            conn.execute("PRAGMA cache_size=-65536")  # 64 MB page cache per connection
        except sqlite3.Error:
            conn.close()
            raise
        if self.identity is not None and _identity(self.path) != self.identity:
            conn.close()  # a connection onto the restored file beside the old one's index: serve neither half
            raise CatalogueReplacedError(self.name)
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _reader_connect(self) -> sqlite3.Connection:
        try:
            return self._connect(self._ro_mode if self.read_only else "")
        except sqlite3.Error as exc:
            # not remembered as damage: the connections already open may still read a file replaced under them
            raise self._error(exc, "open", remember=False) from None

    def _check(self) -> None:
        """PRAGMA quick_check on a file small enough to check in about a second; larger ones are found
        damaged by the first read that meets the damage."""
        try:
            if self.path.stat().st_size > QUICK_CHECK_MAX_BYTES:
                return
            found = self.reader().execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.Error as exc:
            raise self.failure(exc, "check") from None
        if found is not None and str(found[0]).lower() != "ok":
            raise self._corrupt(str(found[0]))

    def reader(self) -> sqlite3.Connection:
        """This thread's read connection (autocommit: each statement sees the latest commit)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "epoch", 0) != self._epoch:
            conn = self._reader_connect()
            self._local.conn, self._local.epoch = conn, self._epoch
        return conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement inside sees one consistent state of the file."""
        conn = self._reader_connect()
        try:
            conn.execute("BEGIN")
            yield conn
        except sqlite3.DatabaseError as exc:
            raise self.failure(exc, "read") from None
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
        source = self._reader_connect()
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
            if self.read_only:
                self._writable_again()
            if self._writer is None:
                try:
                    self._writer = self._connect()
                except sqlite3.Error as exc:
                    raise self._error(exc, "open") from None
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

    def refresh(self) -> None:
        """A read-only file whose disk has room again becomes writable (and its readers see new writes)."""
        if self.read_only:
            with self._write_lock, suppress(StoreError):
                self._writable_again()

    def _writable_again(self) -> None:
        try:
            conn = self._writable()
        except sqlite3.Error as exc:
            raise StorageFullError(self.name, f"the disk holding {self.path.parent} is full or cannot be written "
                                              f"({exc}): the catalogue is served read-only until there is room "
                                              "again") from None
        self._writer, self.read_only = conn, False
        self._epoch += 1  # readers reconnect: an immutable=1 reader would never see a write
        logger.info("%s: %s can be written again", self.name, self.path)

    def failure(self, exc: sqlite3.Error, action: str) -> StoreError:
        """The typed error for an SQLite error met while reading or writing (damage, a full disk, the rest)."""
        return self._error(exc, action)

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

    def _error(self, exc: sqlite3.Error, action: str, *, remember: bool = True) -> StoreError:
        if is_corrupt(exc):
            return self._corrupt(str(exc), remember=remember)
        if _is_full(exc):
            return StorageFullError(self.name, f"the disk holding {self.path.parent} is full ({exc})")
        return StoreError(self.name, f"catalogue database {action} failed: {exc}")

    def _corrupt(self, detail: str, *, remember: bool = True) -> CorruptStoreError:
        detail = " ".join(detail.replace("*", " ").split())  # quick_check's report spans lines
        message = (f"{self.path} is damaged (SQLite: {detail}): restore it from a backup, or move it away and "
                   f"rebuild with python run_training.py {self.name} (products added through the API since the last "
                   "build are then lost)")
        if remember:
            self.damaged = message
        return CorruptStoreError(self.name, message)

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
