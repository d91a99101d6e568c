"""What the Milvus store keeps beside a model's collection so that no write undoes a newer one: the API's
deletes (``<collection>__deleted``: id, the deleted CSV row's digest, when; created on the first delete), a
write lock shared by every process of this machine, and the check that picks which of a batch's products
a write may replace (``plan_writes``).

Milvus has no transactions and no conditional writes. The lock makes a write's check (is the product still
the version read? was it deleted?) and the write one step for every process on this machine (an API, its job
workers, the pipeline). A delete writes its tombstone before it removes the row, and a CSV write checks the
tombstones again after it wrote, removing what a delete on another machine took meanwhile; only an update
made on another machine between a conditional write's check and its write (milliseconds) can still be lost.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
import dataclasses
from pathlib import Path
from typing import Any

from core.errors import StoreError
from core.milvus_expr import id_list
from core.lexical import LexicalConfig
from core.milvus_schema import Layout, encode_row, has_views
from core.store import ProductVector, Source, next_stamp, outlasting_delete, product_digest

_ID_BATCH = 1000
_SCAN_BATCH = 16_384
WRITE_LOCK = ".milvus-write.lock"
LOCK_TIMEOUT_S = 60.0  # as long as SQLite waits for its write lock in the local store


@contextmanager
def machine_lock(folder: Path, name: str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An exclusive lock on ``folder/.milvus-write.lock`` (released by the OS if the process dies); StoreError
    when another process has held it for ``timeout`` seconds (a hung writer must not hang every other)."""
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(folder / WRITE_LOCK, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(name, f"another process has held {folder / WRITE_LOCK} for {timeout:g} s; "
                                           "retry shortly") from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def side_collection(client: Any, name: str, *, wait: bool = True, **fields: tuple[str, dict[str, Any]]) -> bool:
    """Create (unless it exists) and load a small collection of scalar ``fields`` (name -> (DataType name,
    options)) beside a model's, with the one vector field Milvus requires (2-d, unused). ``wait=False``: a new
    collection's load is only started (loading takes seconds on a Milvus server; writes need none, and the
    catalogue's own collection can be created meanwhile); returns True when the caller must still wait for it
    (``client.load_collection(name)``) before its first read."""
    if client.has_collection(name):
        client.load_collection(name)
        return False
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for field, (kind, options) in fields.items():
        schema.add_field(field, getattr(DataType, kind), **options)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    params = client.prepare_index_params()
    params.add_index(field_name="v", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema)
    client.create_index(name, params)
    client.load_collection(name, _async=not wait)
    return not wait


class Tombstones:
    """The ``<collection>__deleted`` collection, through the store's client and its error-mapping ``call``."""

    def __init__(self, client: Any, collection: str, call: Callable[..., Any]) -> None:
        self.client, self.name, self._call = client, collection + "__deleted", call
        self._known = False

    def _exists(self) -> bool:
        if not self._known:
            self._known = bool(self._call(self.client.has_collection, self.name))
        return self._known

    def _create(self) -> None:
        side_collection(self.client, self.name, id=("VARCHAR", {"is_primary": True, "max_length": 1024}),
                        row=("VARCHAR", {"max_length": 64}), at=("DOUBLE", {}))

    def get(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> the deleted row's digest ('' unknown), for those of ``ids`` that have a tombstone."""
        if not ids or not self._exists():
            return {}
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _ID_BATCH):
            rows = self._call(self.client.query, self.name, filter=f"id in {id_list(unique[start:start + _ID_BATCH])}",
                              output_fields=["id", "row"], consistency_level="Strong")
            found.update((str(r["id"]), str(r["row"])) for r in rows)
        return found

    def put(self, rows: Mapping[str, str]) -> None:
        if not rows:
            return
        if not self._exists():
            self._call(self._create)
            self._known = True
        at = time.time()
        data = [{"id": pid, "row": row, "at": at, "v": [0.0, 0.0]} for pid, row in rows.items()]
        for start in range(0, len(data), _ID_BATCH):
            self._call(self.client.upsert, self.name, data[start:start + _ID_BATCH])

    def drop(self, ids: Sequence[str]) -> None:
        if not ids or not self._exists():
            return
        for start in range(0, len(ids), _ID_BATCH):
            self._call(self.client.delete, self.name, filter=f"id in {id_list(list(ids[start:start + _ID_BATCH]))}")

    def ids(self) -> Iterator[list[str]]:
        """Every tombstone's id, a batch at a time."""
        if not self._exists():
            return
        it = self._call(self.client.query_iterator, self.name, batch_size=_SCAN_BATCH, filter="",
                        output_fields=["id"])
        try:
            while rows := self._call(it.next):
                yield [str(r["id"]) for r in rows]
        finally:
            it.close()


@dataclasses.dataclass
class WritePlan:
    """What an upsert writes: whole rows, the (source, category) of the rows they replace, the tombstones the
    write ends, and those whose deleted row it came to know (id -> the row's digest)."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    removed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    ended: list[str] = dataclasses.field(default_factory=list)
    resolved: dict[str, str] = dataclasses.field(default_factory=dict)


def plan_writes(latest: Mapping[str, ProductVector], current: Mapping[str, dict[str, Any]],
                deleted: Mapping[str, str], keep_api: bool, layout: Layout, lexical: LexicalConfig) -> WritePlan:
    """Which of ``latest`` (id -> item) to write over the ``current`` rows (with ``source``, ``digest``,
    ``category``, ``updated_at``, ``images``) and ``deleted``'s tombstones: not one edited or deleted since a
    conditional write read it, not an API product under the CSV (``keep_api``), not one a delete outlasts, not
    an unchanged one (a row of an earlier release without its views' cache names is changed by learning them)."""
    plan = WritePlan()
    for pid, it in latest.items():
        old = current.get(pid)
        if it.if_version is not None and (old is None or old["updated_at"] != it.if_version):
            continue  # edited or deleted since it was read: the newer write stands
        if old is not None and keep_api and old["source"] == Source.API.value:
            continue
        if pid in deleted:
            kept = outlasting_delete(deleted[pid], it, keep_api)
            if kept is not None:
                if kept != deleted[pid]:
                    plan.resolved[pid] = kept
                continue
            plan.ended.append(pid)
        digest = it.digest or product_digest(it)
        if old is not None and (old["source"], old["digest"]) == (it.product.source.value, digest) and \
                (has_views(old) or not it.product.view_caches):  # a row of an earlier release learns them
            continue
        plan.rows.append(encode_row(it, digest, next_stamp(old["updated_at"] if old else None), layout,
                                    lexical))
        if old is not None:
            plan.removed.append((old["source"], old["category"]))
    return plan
