"""A catalogue collection's reads and writes through the process's Milvus client.

Every failing call becomes a ``StoreError`` (the API maps it to 503), every read is as fresh as this process's
own writes need (``core.milvus_consistency``: Bounded, answered at once, unless one of them could be missing),
and big asks are cut into batches Milvus takes (ids per expression, rows per upsert, rows per scan page).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from core.errors import StoreError
from core.milvus_consistency import Pending, recent_writes
from core.milvus_expr import id_list

logger = logging.getLogger(__name__)

_WRITE_BATCH = 1000  # rows per upsert call (a gRPC message stays well under Milvus's 64 MB)
_ID_BATCH = 1000  # ids per "id in [...]" expression
SCAN_BATCH = 16_384  # milvus-lite re-reads the collection per page: few, large pages
_NOT_LOADED = 101  # Milvus's CollectionNotLoaded (milvus-lite answers it too)


def milvus_call(model: str, fn: Any, *args: Any, on_not_loaded: Callable[[], None] | None = None, **kw: Any) -> Any:
    """Run a Milvus call for ``model``, turning its failures into StoreError (the API maps it to 503);
    ``on_not_loaded`` is told when the failure is a collection that is not loaded."""
    try:
        return fn(*args, **kw)
    except StoreError:
        raise
    except Exception as exc:
        if getattr(exc, "code", None) == _NOT_LOADED and type(exc).__module__.startswith("pymilvus"):
            if on_not_loaded is not None:
                on_not_loaded()
            logger.warning("%s: Milvus collection not loaded: %s", model, exc)
            raise StoreError(model, "the catalogue's Milvus collection is not loaded (its index is being "
                                    "rebuilt, or the Milvus server restarted); retry shortly") from None
        if type(exc).__module__.startswith(("pymilvus", "grpc", "milvus_lite")):
            logger.warning("%s: Milvus call failed: %s", model, exc)
            raise StoreError(model, f"the Milvus store failed ({type(exc).__name__}); see the server log") from None
        raise


class Collection:
    """One catalogue collection (``name``) of ``model``, through ``client``. Thread-safe."""

    def __init__(self, client: Any, model: str, name: str, uri: str, *, strong: bool) -> None:
        self.client, self.model, self.name = client, model, name
        self.writes = recent_writes(uri, name)
        self.strong = strong  # IMAGESEARCH_MILVUS_CONSISTENCY=strong: every read waits for every write
        self.released = False  # a call found the collection not loaded: the store's refresh loads it again
        self._known = False

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run a Milvus call on this collection (see :func:`milvus_call`)."""
        return milvus_call(self.model, fn, *args, on_not_loaded=self._not_loaded, **kw)

    def _not_loaded(self) -> None:
        self.released = True

    def exists(self) -> bool:
        """Whether the collection exists (remembered once it does: only ``drop`` removes it)."""
        if not self._known:
            self._known = bool(self.call(self.client.has_collection, self.name))
        return self._known

    def fast(self) -> str:
        """The consistency level of a read that needs none of this process's writes."""
        return "Strong" if self.strong else "Bounded"

    def read(self, pending: Pending, fn: Any, *args: Any, strong: bool = False, **kw: Any) -> Any:
        """A read (search, count, query) that shows this process's writes: Strong when configured or asked,
        or while a write of this process to that collection is ``pending`` (which it then covers); else
        Bounded, answered at once."""
        token = pending.token()
        if not (self.strong or strong or token is not None):
            return self.call(fn, *args, consistency_level="Bounded", **kw)
        found = self.call(fn, *args, consistency_level="Strong", **kw)
        pending.confirm(token)
        return found

    def count(self, *, strong: bool = False) -> int:
        """Rows in the collection, exactly (a ``count(*)`` query: the collection statistics' row count leaves
        out rows not flushed yet and keeps deleted ones), this process's writes included; ``strong``: every
        process's writes."""
        if not self.exists():
            return 0
        rows = self.read(self.writes.rows, self.client.query, self.name, filter="", output_fields=["count(*)"],
                         strong=strong)
        return int(rows[0]["count(*)"]) if rows else 0

    def rows(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """The rows of ``ids`` that exist (with ``id`` and ``updated_at`` besides ``fields``): read fast, and
        again with Strong consistency where the fast answer misses one of this process's recent writes."""
        if not ids or not self.exists():
            return []
        out: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(ids))
        wanted = list(dict.fromkeys([*fields, "id", "updated_at"]))
        for start in range(0, len(unique), _ID_BATCH):
            chunk = unique[start:start + _ID_BATCH]
            expr = f"id in {id_list(chunk)}"
            rows = self.call(self.client.query, self.name, filter=expr, output_fields=wanted,
                             consistency_level=self.fast())
            if not self.writes.shows(chunk, rows):
                rows = self.read(self.writes.rows, self.client.query, self.name, filter=expr, output_fields=wanted,
                                 strong=True)
            out.extend(rows)
        return out

    def scan(self, fields: list[str], expr: str = "") -> Iterator[list[dict[str, Any]]]:
        """Every row's ``fields``, a batch at a time (a query iterator: bounded memory at any size). The count
        before it reads Strong while this process has writes pending (the iterator does not wait for them)."""
        if not self.count():
            return
        it = self.call(self.client.query_iterator, self.name, batch_size=SCAN_BATCH, filter=expr,
                       output_fields=fields)
        try:
            while True:
                rows = self.call(it.next)
                if not rows:
                    return
                yield list(rows)
        finally:
            it.close()

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write ``rows`` (whole rows, by id), a batch per call."""
        for start in range(0, len(rows), _WRITE_BATCH):
            self.call(self.client.upsert, self.name, rows[start:start + _WRITE_BATCH])

    def delete(self, ids: Sequence[str], only: str = "") -> None:
        """Delete the rows of ``ids`` (those that also match ``only``, an expression starting " and ...")."""
        for start in range(0, len(ids), _ID_BATCH):
            self.call(self.client.delete, self.name, filter=f"id in {id_list(ids[start:start + _ID_BATCH])}{only}")
