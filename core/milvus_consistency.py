"""Read-your-writes on Milvus without a server time tick on every read.

A Milvus server makes a write visible once its time tick has passed it (200 ms by default). A Strong read
waits for that (200-400 ms); a Bounded read answers at once (a few ms) with what the server has applied:
every write older than its graceful time (5 s by default) and, on a healthy server, all but the last tick
or two. Once a Strong read has returned, later reads of any level show every write made before it (a
server answers from the point it has applied, which only moves on). pymilvus's Session level cannot stand
in: Milvus 2.3 returns no timestamp for a delete, so a Session read does not wait for one.

So the store reads Bounded and reads Strong only where this process's own writes could be missing:

- searches, counts and scans read Strong while this process has a write to the collection that no Strong
  read has covered yet ("pending"), then fast again;
- point reads by id (``get``, ``vectors``, a write's look at the rows it replaces) read Bounded and check
  the answer against the ids this process wrote in the last ``WINDOW_S`` seconds (each with its row's
  ``updated_at`` stamp, or deleted): only when it misses one of them do they read again, Strong. An edit
  therefore never waits for the edit before it;
- the write state (generation, counts, filterable columns) is read Bounded and taken from this process's own
  last write when the server does not show that yet (its generation is not higher); the other meta values
  read Strong while one this process wrote is pending.

``WINDOW_S`` outlasts Milvus's default graceful time. One ``RecentWrites`` per collection per process: every
store object on that collection shares it, as they share the pymilvus client.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

WINDOW_S = 10.0
_MAX_IDS = 100_000  # ids remembered at most; past it, point reads read Strong for a window (a big batch)
_registry: dict[tuple[str, str], RecentWrites] = {}
_registry_lock = threading.Lock()


def recent_writes(uri: str, collection: str) -> RecentWrites:
    """What this process wrote lately to one collection."""
    with _registry_lock:
        return _registry.setdefault((uri, collection), RecentWrites())


class Pending:
    """Writes no Strong read has covered yet: ``token()`` before a Strong read, ``confirm(token)`` after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written = 0
        self._covered = 0

    def wrote(self) -> None:
        with self._lock:
            self._written += 1

    def token(self) -> int | None:
        """None when nothing is pending; else what a Strong read started now covers."""
        with self._lock:
            return self._written if self._written > self._covered else None

    def confirm(self, token: int | None) -> None:
        if token is not None:
            with self._lock:
                self._covered = max(self._covered, token)


class RecentWrites:
    """What this process wrote lately to one collection (and its meta collection). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows = Pending()
        self.meta = Pending()  # meta values other than the write state
        self._ids: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()  # id -> (when, stamp, present)
        self._strong_until = 0.0  # monotonic time until which point reads read Strong (ids were forgotten)
        self._state: tuple[float, dict[str, Any]] | None = None
        self._last_stamp = 0.0

    def stamp(self) -> float:
        """A write's ``updated_at``: wall-clock time, never below this process's previous stamp."""
        with self._lock:
            self._last_stamp = max(time.time(), self._last_stamp + 1e-6)
            return self._last_stamp

    def wrote(self, ids: Iterable[str], stamp: float, *, present: bool) -> None:
        """Rows this process just upserted (``present``) or deleted, with the write's stamp."""
        now = time.monotonic()
        with self._lock:
            for pid in ids:
                self._ids.pop(pid, None)
                self._ids[pid] = (now, stamp, present)
            while len(self._ids) > _MAX_IDS:
                self._ids.popitem(last=False)
                self._strong_until = now + WINDOW_S
        self.rows.wrote()

    def wrote_unstamped(self) -> None:
        """Rows were rewritten keeping their stamps: point reads read Strong for a window."""
        with self._lock:
            self._strong_until = time.monotonic() + WINDOW_S
        self.rows.wrote()

    def shows(self, ids: Sequence[str], rows: Sequence[dict[str, Any]]) -> bool:
        """True when ``rows`` (a fast read of ``ids``, with ``updated_at``) shows every write this process made
        to those ids lately: present with that stamp or a later one; absent, or re-added later, when deleted."""
        now = time.monotonic()
        with self._lock:
            while self._ids and now - next(iter(self._ids.values()))[0] >= WINDOW_S:
                self._ids.popitem(last=False)
            if now < self._strong_until:
                return False
            found = {str(r["id"]): float(r.get("updated_at") or 0.0) for r in rows} if self._ids else {}
            for pid in ids if self._ids else ():
                mine = self._ids.get(pid)
                if mine is None:
                    continue
                at = found.get(pid)
                if (at is None or at < mine[1]) if mine[2] else (at is not None and at <= mine[1]):
                    return False
        return True

    def wrote_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self._state = (time.monotonic(), dict(state))

    def newest_state(self, server: dict[str, Any]) -> dict[str, Any]:
        """The server's write state, or this process's last one where the server does not show a newer one
        (a higher generation). Only within the window: a collection dropped and made again elsewhere starts
        its generations over."""
        with self._lock:
            mine = self._state
        if mine is None or time.monotonic() - mine[0] >= WINDOW_S:
            return server
        if int(mine[1].get("generation", 0)) >= int(server.get("generation", 0)):
            return {**server, **mine[1]}
        return server
