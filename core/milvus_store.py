"""The distributed ``CatalogueStore``: one Milvus collection per model, through pymilvus's MilvusClient.

The collection holds everything an API replica serves - the product fields (scalars, JSON for the
extra columns and their numeric values), the indexed vector and the raw CLIP vector - so replicas
keep no state of their own. A small ``<collection>__meta`` collection holds the store's generation,
head, filterable columns, categories, index description and calibration.

``IMAGESEARCH_MILVUS_URI`` is a file path (milvus-lite, embedded: one process at a time) or
``http://host:19530`` (a Milvus standalone or cluster, 2.3 and newer, with ``IMAGESEARCH_MILVUS_TOKEN``).
What the server cannot hold natively is laid out as ``core.milvus_schema`` says. Writes use Milvus's own
upsert and delete. Reads are Session-consistent (``core.milvus_consistency``): this process sees its own
writes at its next read, other processes' writes once the server has applied them (a time tick or two);
the API's watcher (``refresh``) makes sure of it within about a second. ``IMAGESEARCH_MILVUS_CONSISTENCY=
strong`` makes every read wait for every write instead. The vector index type follows the catalogue's
size, as the local store's does. The store opens no local database: the pipeline keeps its build state
(staged CSV rows, fetched images, view vectors) on the build machine itself (``pipeline.state``).

What Milvus cannot give: transactions across rows (a batch upsert is not atomic across processes,
but each row is, and a rerun repairs), and the generation is read-modify-written (two writers at the
same moment may bump it once; it only tells readers "something changed").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.ann import INDEX_JSON, IndexInfo, choose_index_type, ivf_nlist
from core.calibration import CALIBRATION_JSON, Calibration, TextEncoder, now_iso, stale
from core.config import Settings
from core.errors import CatalogueReplacedError, StoreError, StoreUnavailableError, require_module
from core.head import ProjectionHead
from core.milvus_deletes import Tombstones, machine_lock, side_collection
from core.milvus_consistency import Pending, recent_writes
from core.milvus_expr import expression, id_list, literal
from core.milvus_schema import FIELDS, Layout, catalogue_schema, clip_of, encode_row, has_views, probe, product_of
from core.sqlite_db import stage_ids
from core.store import (FILTER_COLUMN, Filter, Hit, Product, ProductVector, ServedIndex, Source, StoreStats,
                        is_number, next_stamp, outlasting_delete, product_digest, row_digest)
from core.types import Embeddings, IndexType, Metric
from utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

_FIELDS = FIELDS
_STATE = ("generation", "counts", "columns")  # the write state: one upsert writes all three
_WRITE_BATCH = 1000  # rows per upsert call (a gRPC message stays well under Milvus's 64 MB)
_ID_BATCH = 1000  # ids per "id in [...]" expression
_SCAN_BATCH = 16_384  # milvus-lite re-reads the collection per page: few, large pages
_MAX_TOPK = 16_384  # Milvus's limit on limit + offset
_CALIBRATION_SAMPLE = 2000
_MILVUS_INDEX = {IndexType.FLAT: "FLAT", IndexType.HNSW: "HNSW", IndexType.IVF: "IVF_FLAT",
                 # the quantised tiers: 8-bit scalar codes (4x smaller than raw vectors, exact enough to
                 # rank); milvus-lite has no IVF_PQ, so ivfpq is served as IVF_SQ8 too (see wanted_kind)
                 IndexType.IVFSQ: "IVF_SQ8", IndexType.IVFPQ: "IVF_SQ8"}
_KIND_OF = {v: k for k, v in _MILVUS_INDEX.items() if k != IndexType.IVFPQ}
_SERVED_KINDS = {k.value for k in _MILVUS_INDEX}
_NOT_LOADED = 101  # Milvus's CollectionNotLoaded (milvus-lite answers it too)
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()
_layouts: dict[str, Layout] = {}  # what each server takes natively, probed once per process


def collection_name(prefix: str, model: str) -> str:
    """A legal collection name for a model (letters, digits, underscores; distinct per model name)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", model)
    if safe != model:
        safe += "_" + hashlib.sha1(model.encode()).hexdigest()[:8]
    return (prefix + safe)[:200]


def milvus_uri(settings: Settings) -> str:
    """The configured URI: a server address as given, or a milvus-lite file (relative to the root)."""
    uri = settings.milvus_uri.strip()
    if re.match(r"^(https?|tcp|unix)://", uri):
        return uri
    path = Path(uri) if uri else settings.models_dir / "milvus.db"
    if not path.is_absolute():
        path = settings.root / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def redacted_uri(settings: Settings) -> str:
    """The URI for messages: no credentials (a user:password@ part is dropped)."""
    return re.sub(r"//[^/@]*@", "//", milvus_uri(settings))


def client(settings: Settings) -> Any:
    """One MilvusClient per (URI, token) in this process (gRPC channels are thread-safe)."""
    pymilvus = require_module("pymilvus", "IMAGESEARCH_STORE=milvus", "pymilvus (and milvus-lite for a local file)")
    uri, token = milvus_uri(settings), settings.milvus_token or ""
    with _clients_lock:
        found = _clients.get((uri, token))
        if found is None:
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # we report failures ourselves, once
            # an embedded milvus-lite serves gRPC inside this process and does not implement AllocTimestamp,
            # which pymilvus asks for after every create_index (then goes on): grpc logs each with a traceback
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
            try:
                found = _connect(pymilvus, uri, token)
            except Exception as exc:
                raise StoreUnavailableError(_connect_hint(settings, exc)) from None
            _clients[(uri, token)] = found
        return found


def _connect(pymilvus: Any, uri: str, token: str) -> Any:
    """A new client; tried twice, since a server may drop a fresh channel once (gRPC's GOAWAY)."""
    try:
        return pymilvus.MilvusClient(uri=uri, token=token)
    except Exception as exc:
        if "lock" in str(exc).lower():
            raise
        time.sleep(0.5)
        return pymilvus.MilvusClient(uri=uri, token=token)


def close_clients(*, embedded_only: bool = False) -> None:
    """Close this process's Milvus connections and stop its embedded milvus-lite servers (which frees their
    files for another process); with ``embedded_only``, connections to a server stay open for others."""
    with _clients_lock:
        for key, found in list(_clients.items()):
            embedded = not re.match(r"^[a-z]+://", key[0])
            if embedded_only and not embedded:
                continue
            with contextlib.suppress(Exception):  # closing a dead connection: nothing to do
                found.close()
            if embedded:
                with contextlib.suppress(ImportError):
                    from milvus_lite.server_manager import server_manager_instance

                    server_manager_instance.release_server(key[0])
            del _clients[key]


POINTER_KEY = "collection"  # in <collection>__meta: the collection holding the model's rows since a restore
RESTORED_INFIX = "__r"  # <collection>__r<stamp>: a collection a restore filled


def _ensure_meta_collection(cl: Any, name: str) -> None:
    side_collection(cl, name, key=("VARCHAR", {"is_primary": True, "max_length": 64}),
                    value=("VARCHAR", {"max_length": 65_535}))


def _pointed(cl: Any, base: str, *, load: bool = True) -> str:
    """The collection holding a model's rows: the one ``<base>__meta`` points to after a restore, else ``base``."""
    meta = base + "__meta"
    if load:
        if not cl.has_collection(meta):
            return base
        cl.load_collection(meta)
    rows = cl.query(meta, filter=f"key == {literal(POINTER_KEY)}", output_fields=["value"], consistency_level="Strong")
    return str(json.loads(rows[0]["value"])) if rows else base


def resolve_collection(settings: Settings, model: str) -> str:
    """The collection that holds ``model``'s catalogue now (its own name, or the one a restore filled)."""
    base = collection_name(settings.milvus_prefix, model)
    try:
        return _pointed(client(settings), base)
    except StoreUnavailableError:
        raise
    except Exception as exc:
        raise StoreError(model, f"the Milvus store failed ({type(exc).__name__}); see the server log") from None


def switch_collection(settings: Settings, model: str, physical: str) -> str:
    """Point ``model`` at the collection ``physical`` (one upsert of one row: every process opening or
    refreshing the model sees the old collection or the new one, never a mix). Returns the previous one."""
    cl = client(settings)
    base = collection_name(settings.milvus_prefix, model)
    _ensure_meta_collection(cl, base + "__meta")
    before = _pointed(cl, base)
    cl.upsert(base + "__meta", [{"key": POINTER_KEY, "value": json.dumps(physical), "v": [0.0, 0.0]}])
    return before


def drop_collection(settings: Settings, model: str, physical: str) -> None:
    """Drop a collection a model no longer uses, with its meta collection (the model's own ``__meta`` stays:
    it holds the pointer)."""
    cl = client(settings)
    base = collection_name(settings.milvus_prefix, model)
    for name in (physical,) if physical == base else (physical, physical + "__meta"):
        if cl.has_collection(name):
            cl.drop_collection(name)


def stray_collections(settings: Settings, model: str) -> list[str]:
    """Collections restores of ``model`` filled that the model does not use (a restore killed half-way)."""
    cl = client(settings)
    base = collection_name(settings.milvus_prefix, model)
    current = _pointed(cl, base)
    prefix = base + RESTORED_INFIX
    return sorted(n for n in cl.list_collections()
                  if n.startswith(prefix) and not n.endswith("__meta") and n != current)


def _connect_hint(settings: Settings, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    where = redacted_uri(settings)
    if "lock" in text.lower() or "Open local milvus failed" in text:
        return (f"the milvus-lite file {where} is open in another process (an API or a build); stop it, or run "
                f"a shared server (python -m milvus_lite server --data-dir DIR --port 19530) and set "
                f"IMAGESEARCH_MILVUS_URI=http://127.0.0.1:19530")
    if "milvus-lite is required" in text or "milvus_lite" in text:
        return "a local Milvus file needs milvus-lite, which is not installed: pip install -r requirements-scale.txt"
    return f"cannot reach Milvus at {where} ({type(exc).__name__}); check IMAGESEARCH_MILVUS_URI and the token"


@dataclass
class MilvusIndex:
    """What the API and the pipeline read of a served index (the local store's ``LiveIndex`` has the same)."""

    info: IndexInfo
    wanted: IndexType | None = None  # the kind the catalogue's size calls for, when it differs
    dead: int = 0
    lossy: bool = False

    @property
    def kind(self) -> IndexType:
        return self.info.kind

    @property
    def generation(self) -> int:
        return self.info.generation

    @property
    def ntotal(self) -> int:
        return self.info.count

    def needs_compaction(self) -> bool:
        """True when the index should be rebuilt: the catalogue has grown (or shrunk) into another kind.
        Milvus compacts its own segments; the build machine rebuilds, never a serving replica."""
        return self.wanted is not None and self.wanted != self.info.kind


class MilvusStore:
    """A model's catalogue in one Milvus collection. Thread-safe (one client per process)."""

    damaged: str | None = None  # Milvus guards its own files: a failing call is a StoreError, not damage here

    def __init__(self, folder: Path, settings: Settings, *, name: str = "", index_type: IndexType | None = None,
                 head: ProjectionHead | None = None, open_index: bool = True, collection: str | None = None) -> None:
        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.settings = settings
        self._index_type = index_type or settings.index_type
        self.client = client(settings)
        self.base = collection_name(settings.milvus_prefix, self.name)
        # the collection holding the rows: the model's own, or the one a restore filled and pointed it to; a
        # restore names the one it fills (``collection``) before the model points there
        self._pinned = collection is not None
        self.collection = collection or self._call(_pointed, self.client, self.base)
        self.meta_collection = self.collection + "__meta"
        self._uri = milvus_uri(settings)
        self._writes = recent_writes(self._uri, self.collection)
        self._strong = settings.milvus_consistency == "strong"
        self.head = head
        self._head = head.sha256 if head is not None else None
        self.text_encoder: TextEncoder | None = None
        self._lock = threading.RLock()
        self._index: MilvusIndex | None = None
        self._seen = -1
        self._epoch = 0  # moves whenever the served description is replaced (refresh installs only on its own)
        self._known = False
        self._dim: int | None = None
        self._layout: Layout | None = None
        self._released = False  # a call found the collection not loaded: refresh() loads it again
        self._meta_cache: dict[str, tuple[int, Any]] = {}
        self._deleted = Tombstones(self.client, self.collection, self._call)
        self._call(self._ensure_meta)
        if self._exists():
            self._call(self.client.load_collection, self.collection)  # a no-op where it is loaded already
            if self._meta("head") != (self._head or ""):
                if open_index:  # a serving process (a replica) never rewrites the shared collection
                    raise StoreError(self.name, "the Milvus collection was projected through another "
                                                "head.safetensors than this process has: adopt the head on the "
                                                f"build machine (python run_training.py {self.name}) and give "
                                                "every replica that same file")
                self.reproject(head)
        if open_index:
            self.open_index()

    # --- plumbing --------------------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run a Milvus call, turning its failures into StoreError (the API maps it to 503)."""
        try:
            return fn(*args, **kw)
        except StoreError:
            raise
        except Exception as exc:
            if getattr(exc, "code", None) == _NOT_LOADED and type(exc).__module__.startswith("pymilvus"):
                self._released = True
                logger.warning("%s: Milvus collection not loaded: %s", self.name, exc)
                raise StoreError(self.name, "the catalogue's Milvus collection is not loaded (its index is being "
                                            "rebuilt, or the Milvus server restarted); retry shortly") from None
            if type(exc).__module__.startswith(("pymilvus", "grpc", "milvus_lite")):
                logger.warning("%s: Milvus call failed: %s", self.name, exc)
                raise StoreError(self.name, f"the Milvus store failed ({type(exc).__name__}); "
                                            "see the server log") from None
            raise

    def _exists(self) -> bool:
        """Whether the collection exists (remembered once it does: only ``drop`` removes it)."""
        if not self._known:
            self._known = bool(self._call(self.client.has_collection, self.collection))
        return self._known

    def _ensure_meta(self) -> None:
        _ensure_meta_collection(self.client, self.meta_collection)

    def replaced(self) -> bool:
        """True once a restore has pointed the model at another collection than the one this store reads."""
        if self._pinned:
            return False
        try:
            now = _pointed(self.client, self.base, load=False)
        except Exception:  # released by a server restart: load it and ask again
            now = self._call(_pointed, self.client, self.base)
        return bool(now != self.collection)

    def restored(self, generation: int, calibration: Calibration | None) -> None:
        """A restore's last touch to the collection it filled: the backup's generation, and its calibration
        (whose text map a rebuild keeps when no text encoder is at hand)."""
        values: dict[str, Any] = {"generation": generation}
        if calibration is not None:
            values["calibration"] = calibration.to_json()
        self._set_meta(values)
        self._meta_cache.clear()

    def _read(self, pending: Pending, fn: Any, *args: Any, strong: bool = False, **kw: Any) -> Any:
        """A read (search, count, query) that shows this process's writes: Strong when configured or asked,
        or while a write of this process to that collection is ``pending`` (which it then covers); else
        Bounded, answered at once."""
        token = pending.token()
        if not (self._strong or strong or token is not None):
            return self._call(fn, *args, consistency_level="Bounded", **kw)
        found = self._call(fn, *args, consistency_level="Strong", **kw)
        pending.confirm(token)
        return found

    def _meta(self, key: str, default: Any = "") -> Any:
        return self._metas([key]).get(key, default)

    def _metas(self, keys: Sequence[str], *, strong: bool = False) -> dict[str, Any]:
        """Several meta values in one query (absent keys are left out), this process's own writes included: the
        write state alone is read fast and merged with this process's last one; ``strong`` reads every
        process's writes."""
        query = (self.meta_collection,)
        kw = {"filter": f"key in {id_list(keys)}", "output_fields": ["key", "value"]}
        if strong or any(k not in _STATE for k in keys):
            rows = self._read(self._writes.meta, self.client.query, *query, strong=strong, **kw)
        else:
            rows = self._call(self.client.query, *query, consistency_level=self._fast(), **kw)
        found = {str(r["key"]): json.loads(r["value"]) for r in rows}
        if any(k in _STATE for k in keys):
            merged = self._writes.newest_state({k: found[k] for k in _STATE if k in found})
            found.update({k: merged[k] for k in keys if k in _STATE and k in merged})
        return found

    def _fast(self) -> str:
        return "Strong" if self._strong else "Bounded"

    def _set_meta(self, values: dict[str, Any]) -> None:
        rows = [{"key": k, "value": json.dumps(v), "v": [0.0, 0.0]} for k, v in values.items()]
        self._call(self.client.upsert, self.meta_collection, rows)
        if any(k not in _STATE for k in values):
            self._writes.meta.wrote()

    def _commit(self, removed: Sequence[tuple[str, str]], added: Sequence[tuple[str, str]],
                extras: Sequence[dict[str, Any]] = ()) -> int:
        """After a write: the next generation, the (source, category) counts moved by the deltas and any new
        filterable column in ``extras``, written in one upsert (read fast: this process's last write state
        counts even where the server does not show it yet). Two processes writing in the same moment may each
        miss the other's delta (the generation still moves on); the next build recounts."""
        state = self._metas(_STATE)
        counts = state.get("counts") or {}
        source, category = Counter(counts.get("source") or {}), Counter(counts.get("category") or {})
        for sign, pairs in ((-1, removed), (1, added)):
            for src, cat in pairs:
                source[src] += sign
                category[cat] += sign
        gen = max(int(state.get("generation", 0)) + 1, 1)
        self._write_state({"generation": gen, "columns": _columns(dict(state.get("columns") or {}), extras,
                                                                        self.settings.max_filter_columns),
                           "counts": {"source": {k: v for k, v in source.items() if v > 0},
                                      "category": {k: v for k, v in category.items() if v > 0}}})
        return gen

    def _write_state(self, state: dict[str, Any]) -> None:
        self._set_meta(state)
        self._writes.wrote_state(state)
        self._meta_cache.pop("columns", None)

    def _bump(self) -> int:
        return self._commit((), ())

    def _create(self, dim: int, clip_dim: int) -> None:
        with _clients_lock:
            layout = _layouts.get(self._uri)
        if layout is None:
            layout = probe(self.client, self.collection + "__probe")
            with _clients_lock:
                _layouts[self._uri] = layout
        params = self.client.prepare_index_params()
        self._add_vector_index(params, IndexType.FLAT, 0)
        if layout.clip_vector:  # Milvus loads a collection only with every vector field indexed
            params.add_index(field_name="clip", index_type="FLAT", metric_type=self._metric())
        self.client.create_collection(self.collection, schema=catalogue_schema(layout, dim, clip_dim),
                                      index_params=params)
        self.client.load_collection(self.collection)
        # the collection is created with its (flat) vector index: that is the index's build time
        self._set_meta({"head": self._head or "", "dim": dim, "layout": layout.to_json(),
                        "index": {"kind": IndexType.FLAT.value, "params": {}, "built_at": now_iso()}})
        self._layout, self._dim = layout, dim
        logger.info("%s: Milvus collection %s created (%d-dim vectors; CLIP vectors %s, images as a JSON %s)",
                    self.name, self.collection, dim, "as a vector field" if layout.clip_vector else "in base64",
                    "array" if layout.json_arrays else "object")

    @property
    def layout(self) -> Layout:
        """How this collection holds CLIP vectors and image lists (fixed when it was created)."""
        if self._layout is None:
            self._layout = Layout.from_json(self._meta("layout", None))
        return self._layout

    def _metric(self) -> str:
        return "COSINE" if self.settings.metric == Metric.COSINE else "L2"

    def _add_vector_index(self, params: Any, kind: IndexType, n: int) -> dict[str, int]:
        build: dict[str, int] = {}
        if kind == IndexType.HNSW:
            build = {"M": self.settings.hnsw_m, "efConstruction": max(64, 2 * self.settings.hnsw_m)}
        elif kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
            build = {"nlist": ivf_nlist(max(n, 1))}
        params.add_index(field_name="vector", index_name="vector", index_type=_MILVUS_INDEX[kind],
                         metric_type=self._metric(), params=build)
        return build

    # --- protocol: metadata ----------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        if self._dim is None:  # fixed once the collection exists
            dim = self._meta("dim", None)
            self._dim = int(dim) if dim else None
        return self._dim

    @property
    def live_index(self) -> MilvusIndex | None:
        return self._index

    def generation(self) -> int:
        return int(self._meta("generation", 0))

    def count(self, *, strong: bool = False) -> int:
        """Products in the collection, exactly (a ``count(*)`` query: the collection statistics' row count
        leaves out rows not flushed yet and keeps deleted ones), this process's writes included; ``strong``:
        every process's writes."""
        if not self._exists():
            return 0
        rows = self._read(self._writes.rows, self.client.query, self.collection, filter="",
                          output_fields=["count(*)"], strong=strong)
        return int(rows[0]["count(*)"]) if rows else 0

    def columns(self) -> dict[str, str]:
        """Filterable extra columns (re-read when the generation this process has seen moves on)."""
        with self._lock:
            cached = self._meta_cache.get("columns")
            if cached is not None and cached[0] == self._seen and self._seen >= 0:
                return dict(cached[1])
            found = dict(sorted(self._meta("columns", {}).items()))
            self._meta_cache["columns"] = (self._seen, found)
            return dict(found)

    def stats(self) -> StoreStats:
        """Counts by source and category, kept in the meta collection by every write (no scan). Two
        processes writing the same moment may each miss the other's delta; the next build recounts."""
        counts = self._meta("counts", {}) or {}
        by_source = {k: int(v) for k, v in (counts.get("source") or {}).items() if int(v) > 0}
        cats = {k: int(v) for k, v in sorted((counts.get("category") or {}).items()) if k and int(v) > 0}
        return StoreStats(products=self.count(), by_source=by_source, categories=cats, columns=self.columns(),
                          generation=self.generation())

    def recount(self) -> None:
        """Exact counts by source and category, from one scan (a build does this at its index phase)."""
        source: Counter[str] = Counter()
        category: Counter[str] = Counter()
        for rows in self._scan(["source", "category"]):
            source.update(r["source"] for r in rows)
            category.update(r["category"] for r in rows)
        with self._lock:
            state = self._metas(_STATE)
            self._write_state({"generation": int(state.get("generation", 0)), "columns": state.get("columns") or {},
                               "counts": {"source": dict(source), "category": dict(category)}})

    def get(self, ids: Sequence[str]) -> list[Product]:
        found = {row["id"]: product_of(row) for row in self._rows(ids, _FIELDS)}
        return [found[i] for i in ids if i in found]

    def vectors(self, ids: Sequence[str], *, clip: bool = False) -> Embeddings:
        field = "clip" if clip else "vector"
        found = {row["id"]: clip_of(row[field]) for row in self._rows(ids, ["id", field])}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        dim = self.dim or 0
        return np.asarray([found[i] for i in ids], dtype=np.float32).reshape(len(ids), -1) if ids else \
            np.zeros((0, dim), np.float32)

    def hit_vectors(self, hits: Sequence[Hit]) -> Embeddings:
        """The vectors the search returned with its hits; a hit's product deleted since (another process)
        reads as a zero vector: a duplicate of nothing."""
        missing = [h.product.id for h in hits if h.vector is None]
        found = {row["id"]: row["vector"] for row in self._rows(missing, ["id", "vector"])} if missing else {}
        dim = self.dim or 0
        rows = [h.vector if h.vector is not None else found.get(h.product.id, np.zeros(dim)) for h in hits]
        return np.asarray(rows, dtype=np.float32).reshape(len(hits), -1) if rows else np.zeros((0, dim), np.float32)

    def _rows(self, ids: Sequence[str], fields: list[str]) -> list[dict[str, Any]]:
        """The rows of ``ids`` that exist (with ``id`` and ``updated_at`` besides ``fields``): read fast, and
        again with Strong consistency where the fast answer misses one of this process's recent writes."""
        if not ids or not self._exists():
            return []
        out: list[dict[str, Any]] = []
        unique = list(dict.fromkeys(ids))
        wanted = list(dict.fromkeys([*fields, "id", "updated_at"]))
        for start in range(0, len(unique), _ID_BATCH):
            chunk = unique[start:start + _ID_BATCH]
            expr = f"id in {id_list(chunk)}"
            rows = self._call(self.client.query, self.collection, filter=expr, output_fields=wanted,
                              consistency_level=self._fast())
            if not self._writes.shows(chunk, rows):
                rows = self._read(self._writes.rows, self.client.query, self.collection, filter=expr,
                                  output_fields=wanted, strong=True)
            out.extend(rows)
        return out

    def _scan(self, fields: list[str], expr: str = "") -> Iterator[list[dict[str, Any]]]:
        """Every row's ``fields``, a batch at a time (a query iterator: bounded memory at any size). The count
        before it reads Strong while this process has writes pending (the iterator does not wait for them)."""
        if not self.count():
            return
        it = self._call(self.client.query_iterator, self.collection, batch_size=_SCAN_BATCH, filter=expr,
                        output_fields=fields)
        try:
            while True:
                rows = self._call(it.next)
                if not rows:
                    return
                yield list(rows)
        finally:
            it.close()

    def scan_vectors(self, batch: int = _SCAN_BATCH, *, clip: bool = False) -> Iterator[tuple[list[str], Embeddings]]:
        """Every (ids, vectors) batch of the catalogue, in no particular order."""
        field = "clip" if clip else "vector"
        for rows in self._scan(["id", field]):
            yield [r["id"] for r in rows], np.asarray([clip_of(r[field]) for r in rows], dtype=np.float32)

    def sample_vectors(self, n: int, seed: int) -> tuple[list[str], Embeddings]:
        """A seeded sample of up to ``n`` products: the neighbours of seeded random directions (no scan;
        spread over the catalogue, if not uniform)."""
        dim = self.dim
        total = self.count()
        if not dim or not total:
            return [], np.zeros((0, dim or 0), np.float32)
        want = min(n, total)
        rng = np.random.default_rng(seed)
        picked: dict[str, None] = {}
        for _ in range(8):  # each round asks more directions for fewer neighbours each
            per = max(1, min(_MAX_TOPK, want // 32))
            directions = rng.normal(size=(max(1, 2 * (want - len(picked)) // per), dim)).astype(np.float32)
            for row in self.search(directions, per):
                picked.update((h.product.id, None) for h in row)
            if len(picked) >= want:
                break
        ids = sorted(picked)[:want] if len(picked) > want else sorted(picked)
        return ids, self.vectors(ids)

    # --- protocol: writes ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time in this process and on this machine (see ``core.milvus_deletes``)."""
        with self._lock, machine_lock(self.folder, self.name):
            yield

    def upsert(self, items: Sequence[ProductVector], *, keep_api: bool = False) -> int:
        if not items:
            return 0
        with self._writing():
            if not self._exists():
                first = items[0]
                self._call(self._create, np.asarray(first.indexed).shape[-1], np.asarray(first.clip).shape[-1])
            latest = {it.product.id: it for it in items}  # a batch naming an id twice: the last wins
            current = {r["id"]: r for r in self._rows(list(latest), ["id", "source", "digest", "category", "images"])}
            deleted = self._deleted.get(list(latest))
            layout, rows, removed, ended, resolved = self.layout, [], [], [], {}
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
                            resolved[pid] = kept
                        continue
                    ended.append(pid)
                digest = it.digest or product_digest(it)
                if old is not None and (old["source"], old["digest"]) == (it.product.source.value, digest) and \
                        (has_views(old) or not it.product.view_caches):  # a row of an earlier release learns them
                    continue
                rows.append(encode_row(it, digest, next_stamp(old["updated_at"] if old else None), layout))
                if old is not None:
                    removed.append((old["source"], old["category"]))
            self._deleted.put(resolved)
            if not rows:
                return 0
            for start in range(0, len(rows), _WRITE_BATCH):
                self._call(self.client.upsert, self.collection, rows[start:start + _WRITE_BATCH])
            self._writes.wrote((r["id"] for r in rows), min(r["updated_at"] for r in rows), present=True)
            self._deleted.drop(ended)
            gen = self._commit(removed, [(r["source"], r["category"]) for r in rows], [r["extra"] for r in rows])
            self._wrote(gen, len(rows) - len(removed))
            late: list[str] = []
            if keep_api or any(it.if_version is not None for it in items):
                # a delete made on another machine after the check above has its tombstone there by now
                late = list(self._deleted.get([r["id"] for r in rows]))
                self._remove(late, remember=False)
        if self.replaced():  # written to a collection a restore has just replaced: lost with it, not acknowledged
            raise CatalogueReplacedError(self.name)
        return len(rows) - len(late)

    def delete(self, ids: Sequence[str]) -> int:
        with self._writing():
            return self._remove(ids, remember=True)

    def _remove(self, ids: Sequence[str], *, remember: bool, sources: Sequence[Source] = ()) -> int:
        """Delete ``ids`` (only those of ``sources`` when given, checked by Milvus as it deletes); with
        ``remember`` each one's tombstone is written first, so a CSV write checking after its write sees it."""
        rows = [r for r in self._rows(ids, _FIELDS) if not sources or r["source"] in {s.value for s in sources}]
        if remember:
            self._deleted.put({r["id"]: row_digest(product_of(r)) if r["source"] == Source.CSV.value else ""
                               for r in rows})
        present = [r["id"] for r in rows]
        stamp = self._writes.stamp()
        only = " and (" + " or ".join(f"source == {literal(s.value)}" for s in sources) + ")" if sources else ""
        for start in range(0, len(present), _ID_BATCH):
            chunk = present[start:start + _ID_BATCH]
            self._call(self.client.delete, self.collection, filter=f"id in {id_list(chunk)}{only}")
        if present:
            self._writes.wrote(present, stamp, present=False)
            self._wrote(self._commit([(r["source"], r["category"]) for r in rows], []), -len(present))
            if self.replaced():  # removed from a collection a restore has just replaced: not acknowledged
                raise CatalogueReplacedError(self.name)
        return len(present)

    def deleted_ids(self, ids: Sequence[str]) -> list[str]:
        found = self._deleted.get(ids)
        return [i for i in ids if i in found]

    def _wrote(self, generation: int, added: int) -> None:
        """Our own write: the served description follows without a round trip; another process's writes are
        caught by :meth:`refresh`. Called under the lock."""
        live = self._index
        if live is not None:
            fresh = self._seen == live.generation and generation == self._seen + 1
            count = live.info.count + added if fresh else self.count()
            self._install(MilvusIndex(info=replace(live.info, generation=generation, count=count), wanted=live.wanted))

    def _install(self, live: MilvusIndex) -> None:
        """Serve ``live`` (under the lock): its generation is the one this process has seen."""
        self._index, self._seen = live, live.generation
        self._epoch += 1

    def delete_missing(self, keep: Iterator[str] | None, *, sources: Sequence[Source]) -> int:
        """Delete the products of ``sources`` whose id is not in ``keep``. The kept ids go to a temporary
        SQLite database on disk, so no Python object per product is held."""
        if not self._exists():
            return 0
        conn = sqlite3.connect("")  # a private temporary database on disk, gone when closed
        try:
            stage_ids(conn, keep or ())
            doomed: list[str] = []
            expr = " or ".join(f"source == {literal(s.value)}" for s in sources)
            for rows in self._scan(["id"], expr):
                doomed.extend(_not_kept(conn, [r["id"] for r in rows]))
            if Source.API in sources:  # the CSV is the whole truth: deletes of ids it does not hold are forgotten
                forgotten = [i for ids in self._deleted.ids() for i in _not_kept(conn, ids)]
                self._deleted.drop(forgotten)
        finally:
            conn.close()
        if not doomed:
            return 0
        with self._writing():  # only rows still of ``sources``: an API edit made meanwhile stays
            return self._remove(doomed, remember=False, sources=sources)

    def reproject(self, head: ProjectionHead | None) -> int:
        """Re-derive every indexed vector from its stored CLIP vector through ``head`` (None: the CLIP
        vector itself), batch by batch; records the head when done, so an interrupted run starts over."""
        sha = head.sha256 if head is not None else None
        dim = self.dim
        with self._lock:
            if self._exists() and self._meta("head") != (sha or ""):
                out_dim = head.output_dim if head is not None else None
                if head is not None and dim is not None and out_dim is not None and out_dim != dim:
                    raise StoreError(self.name, f"head.safetensors gives {out_dim}-dim vectors but the Milvus "
                                                f"collection holds {dim}; copy the model again (--copy-store)")
                for rows in self._scan(_FIELDS + ["digest", "num", "clip"]):
                    clips = np.asarray([clip_of(r["clip"]) for r in rows], dtype=np.float32)
                    self._check_fits(head, clips.shape[1], dim)  # on the first batch: nothing written yet
                    vectors = head.apply(clips) if head is not None else clips
                    for row, vec in zip(rows, vectors, strict=True):
                        row["vector"] = np.asarray(vec, dtype=np.float32).tolist()
                    self._call(self.client.upsert, self.collection, rows)
                    self._writes.wrote_unstamped()  # the rows keep their stamps: point reads wait a while
                self._set_meta({"head": sha or ""})
                gen = self._bump()
                logger.info("%s: stored vectors re-projected through head %s", self.name, sha or "none")
            else:
                gen = self.generation()
        self.head, self._head = head, sha
        return gen

    def _check_fits(self, head: ProjectionHead | None, clip_dim: int, dim: int | None) -> None:
        if head is not None and head.input_dim != clip_dim:
            raise StoreError(self.name, f"head.safetensors takes {head.input_dim}-dim vectors but the catalogue's "
                                        f"CLIP vectors have {clip_dim}; remove it or fine-tune again")
        if head is None and dim is not None and clip_dim != dim:
            raise StoreError(self.name, f"without a head the catalogue's {clip_dim}-dim CLIP vectors do not fit the "
                                        f"Milvus collection's {dim}-dim index; copy the model again (--copy-store)")

    # --- protocol: search ------------------------------------------------------------------------
    def search(self, queries: Embeddings, k: int, flt: Filter | None = None) -> list[list[Hit]]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if (flt is not None and flt.empty) or k <= 0:
            return [[] for _ in queries]
        if not self._exists():
            raise StoreError(self.name, "the catalogue is empty: nothing to search yet")
        expr = expression(flt, self.columns() if flt is not None and (flt.equals or flt.ranges) else {})
        found = self._read(self._writes.rows, self.client.search, self.collection, data=queries.tolist(),
                           anns_field="vector", limit=min(k, _MAX_TOPK), filter=expr,
                           output_fields=[*_FIELDS, "vector"],
                           search_params={"metric_type": self._metric(), "params": self._search_params(k)})
        # each hit carries its vector: near-duplicate collapsing needs no second read, which a product deleted
        # in between (by another process) would fail
        return [[Hit(product_of(h["entity"] | {"id": h["id"]}), self._score(float(h["distance"])),
                     vector=np.asarray(h["entity"]["vector"], dtype=np.float32)) for h in row]
                for row in found]

    def _search_params(self, k: int) -> dict[str, int]:
        live = self._index
        kind = live.kind if live is not None else IndexType.FLAT
        if kind == IndexType.HNSW:
            return {"ef": max(k, int(live.info.params.get("efSearch", self.settings.hnsw_ef_search)) if live else k)}
        if kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
            return {"nprobe": int(live.info.params.get("nprobe", self.settings.ivf_nprobe)) if live else 16}
        return {}

    def _score(self, distance: float) -> float:
        """Cosine similarity, as the local store reports it (L2 in Milvus is squared)."""
        return distance if self.settings.metric == Metric.COSINE else 1.0 - distance / 2.0

    # --- the index -------------------------------------------------------------------------------
    def wanted_kind(self, n: int) -> IndexType:
        kind = choose_index_type(n, self.settings) if self._index_type == IndexType.AUTO else self._index_type
        kind = IndexType.IVFSQ if kind == IndexType.IVFPQ else kind  # one IVF_SQ8 index serves both tiers
        return IndexType.FLAT if kind in (IndexType.IVF, IndexType.IVFSQ) and n < 1000 else kind

    def open_index(self) -> MilvusIndex | None:
        """The served index's description (the collection loaded). A missing vector index is built; one
        of another kind than the catalogue's size calls for is only flagged (``needs_compaction``): the
        build machine's index phase rebuilds it, so N replicas never rebuild a shared index at once.
        None for an empty store."""
        with self._lock:
            if self._index is not None:
                return self._index
            n = self.count()
            if not n:
                return None
            self._call(self.client.load_collection, self.collection)
            current = self._current_kind()
            if current is None:
                return self.rebuild(save=True)
            self._install(self._describe(current, n))
            return self._index

    def _index_fits(self, kind: IndexType, build: dict[str, int]) -> bool:
        """True when the collection's vector index is of ``kind`` with these build parameters."""
        found = self._vector_index()
        return (found is not None and _KIND_OF.get(str(found.get("index_type", "")).upper()) == kind
                and all(str(found.get(k)) == str(v) for k, v in build.items()))

    def _vector_index(self) -> dict[str, Any] | None:
        """The vector field's index as Milvus describes it; None when it has none (a failed call raises: an
        index that cannot be read is not one to build again)."""
        if not self._call(self.client.list_indexes, self.collection, field_name="vector"):
            return None
        return dict(self._call(self.client.describe_index, self.collection, "vector") or {})

    def _replace_index(self, params: Any, kind: IndexType) -> None:
        """Milvus changes an index only on a released collection: readers get 503 until it is loaded again,
        and must not load it themselves meanwhile (see _load_again)."""
        self._set_meta({"rebuilding": True})
        try:
            self._call(self.client.release_collection, self.collection)
            if self._current_kind() is not None:
                self._call(self.client.drop_index, self.collection, "vector")
            try:
                self._call(self.client.create_index, self.collection, params)
            except StoreError:
                # a long build can outlive its connection (a server that finds the client's keep-alive pings
                # too many drops it) and pymilvus then asks again: "index already exists", for this very index
                if self._current_kind() != kind:
                    raise
            self._call(self.client.load_collection, self.collection)
        finally:
            self._set_meta({"rebuilding": False})

    def _current_kind(self) -> IndexType | None:
        found = self._vector_index()
        return _KIND_OF.get(str(found.get("index_type", "")).upper()) if found else None

    def _describe(self, kind: IndexType, n: int) -> MilvusIndex:
        saved = self._meta("index", {}) or {}
        params = dict(saved.get("params") or {}) if saved.get("kind") == kind.value else {}
        if kind == IndexType.HNSW:
            params.setdefault("efSearch", self.settings.hnsw_ef_search)
        elif kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
            params.setdefault("nprobe", self.settings.ivf_nprobe)
        info = IndexInfo(kind=kind, dim=self.dim or 0, metric=self.settings.metric, generation=self.generation(),
                         count=n, head=self._head, params=params, tuning={"engine": "milvus",
                                                                         "index_type": _MILVUS_INDEX[kind]},
                         built_at=str(saved.get("built_at") or ""), file=self.collection)
        wanted = self.wanted_kind(n)
        return MilvusIndex(info=info, wanted=wanted if wanted != kind else None)

    def rebuild(self, *, save: bool, tune_it: bool = True, progress: object = None) -> MilvusIndex:
        """Give the collection a vector index of the kind the catalogue's size calls for, covering every row:
        the rows written so far are flushed (sealed segments are what Milvus indexes), and an index of another
        kind or other build parameters is replaced; one that already fits is kept (Milvus indexes the
        segments sealed later itself), so no reader waits for nothing."""
        with self._lock:
            n = self.count()
            if not n:
                raise StoreError(self.name, "the catalogue is empty: nothing to index")
            kind = self.wanted_kind(n)
            params = self.client.prepare_index_params()
            build = self._add_vector_index(params, kind, n)
            self._call(self.client.flush, self.collection)
            kept = self._index_fits(kind, build)
            if not kept:
                self._replace_index(params, kind)
            search = {"efSearch": self.settings.hnsw_ef_search} if kind == IndexType.HNSW else \
                {"nprobe": self.settings.ivf_nprobe} if kind != IndexType.FLAT else {}
            self._set_meta({"index": {"kind": kind.value, "params": {**build, **search}, "built_at": now_iso()}})
            live = self._describe(kind, n)
            self._install(live)
            logger.info("%s: Milvus %s index over %d products%s", self.name, _MILVUS_INDEX[kind], n,
                        " (the one in place fits)" if kept else "")
        if save:
            self.save_index()
            self.calibrate(live)
        return live

    def install_index(self, live: ServedIndex) -> None:
        assert isinstance(live, MilvusIndex), "an index of another store"
        with self._lock:
            self._index = live
            self._epoch += 1

    def save_index(self) -> None:
        """Recount by source and category, and leave ``index.json`` on the build machine too (what the
        pipeline's resume checks read)."""
        live = self._index
        if live is not None:
            self.recount()
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / INDEX_JSON, live.info.to_json())

    def refresh(self) -> bool:
        """Milvus serves other processes' writes itself; this updates the count and generation the status
        pages show when the generation moved, the index's description when another process rebuilt it (as
        another type, too: searches then use that type's parameters), and loads the collections again when
        a call found them not loaded (a restarted milvus-lite server leaves them released). Once it has
        seen another process's write (its generation), every later search of this process sees it: the
        count that follows reads with Strong consistency, and the server answers later reads from at least
        that point on. A write through this process while it reads wins: its description is the newer one."""
        with self._lock:
            live, epoch = self._index, self._epoch
        if live is None:
            return False
        if self._released:
            self._load_again()
        state = self._metas(["generation", "index"])
        gen, index = int(state.get("generation", 0)), state.get("index") or {}
        rebuilt = str(index.get("built_at") or "") != live.info.built_at and index.get("kind") in _SERVED_KINDS
        if gen == live.generation and not rebuilt:
            return False
        n = self.count(strong=True)
        fresh = self._describe(IndexType(index["kind"]), n) if rebuilt else \
            MilvusIndex(info=replace(live.info, generation=gen, count=n), wanted=live.wanted)
        with self._lock:
            if self._epoch == epoch:  # else a write (or another refresh) got in first
                self._install(fresh)
        return True

    def _load_again(self) -> None:
        """Load the collections after a server restart (Milvus reloads them itself; milvus-lite does not). The
        catalogue's is left alone while a rebuild holds it released on purpose: a rebuild raises its flag
        before it releases, and the flag is read only after a call saw the collection released."""
        self._call(self.client.load_collection, self.meta_collection)
        if self.base + "__meta" != self.meta_collection:  # the one holding the pointer to this collection
            self._call(self.client.load_collection, self.base + "__meta")
        if not self._metas(["rebuilding"], strong=True).get("rebuilding", False) and self._exists():
            self._call(self.client.load_collection, self.collection)
        self._released = False
        logger.info("%s: Milvus collections loaded again", self.name)

    # --- calibration (kept in the meta collection: replicas share it) -----------------------------
    @property
    def calibration(self) -> Calibration | None:
        with self._lock:
            gen = self._seen
            cached = self._meta_cache.get("calibration")
            if cached is not None and cached[0] == gen:
                return cached[1]  # type: ignore[no-any-return]
            raw = self._meta("calibration", None)
            cal = Calibration.from_json(raw) if raw else None
            self._meta_cache["calibration"] = (gen, cal)
            return cal

    def calibration_stale(self, live: MilvusIndex) -> bool:
        return stale(self.calibration, self._head, live.info.built_at, self.text_encoder is not None)

    def ensure_calibration(self) -> Calibration | None:
        live = self.open_index()
        if live is None:
            return None
        return self.calibrate(live) if self.calibration_stale(live) else self.calibration

    def calibrate(self, live: MilvusIndex) -> Calibration | None:
        """Fit the image (and text) maps from a sample, as the local store does; saved in Milvus and as
        ``calibration.json`` on the build machine."""
        from core.calibration import fit_image, text_map

        rng = np.random.default_rng(self.settings.seed)
        ids, vectors = self.sample_vectors(_CALIBRATION_SAMPLE, self.settings.seed)
        products = self.get(ids)
        categories = [p.category for p in products]
        keys = np.arange(len(ids), dtype=np.int64)

        def neighbours(queries: np.ndarray, own: np.ndarray) -> np.ndarray:
            out = np.full(len(queries), np.nan)
            for row, (hits, key) in enumerate(zip(self.search(queries, 2), own, strict=True)):
                other = [h.score for h in hits if h.product.id != ids[int(key)]]
                if other:
                    out[row] = other[0]
            return out

        try:
            image, method, pairs = fit_image(vectors, categories, keys, neighbours, rng)
        except ValueError as exc:
            logger.warning("%s: no calibration (%s): hits carry no match", self.name, exc)
            return None
        counts = {"image": pairs}
        text = text_map(self.text_encoder, self.head, self.calibration, self._head, [p.title for p in products],
                        vectors, categories, rng, counts)
        cal = Calibration(image=image, text=text, head=self._head, index_built_at=live.info.built_at,
                          generation=live.generation, method=method, pairs=counts, fitted_at=now_iso())
        self._set_meta({"calibration": cal.to_json()})
        self._meta_cache.pop("calibration", None)
        write_json_atomic(self.folder / CALIBRATION_JSON, cal.to_json())
        logger.info("%s: calibration fitted (%s pairs, image midpoint %.3f)", self.name, method, image.midpoint)
        return cal

    def close(self) -> None:
        """Nothing of its own to release: the server connection is the process's (``close_clients``)."""


def _not_kept(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    """Those of ``ids`` not in the temporary ``keep_ids`` table."""
    marks = ",".join("?" * len(ids))
    kept = {i for (i,) in conn.execute(f"SELECT id FROM keep_ids WHERE id IN ({marks})", ids)}
    return [i for i in ids if i not in kept]



def _columns(known: dict[str, str], extras: Sequence[dict[str, Any]], cap: int) -> dict[str, str]:
    """The filterable columns after a write of rows with these extra values: a new one is a number column
    while every value it has held is a number, text for good once one is not; up to ``cap`` columns (later
    new ones stay plain metadata, as in the local store)."""
    kinds = dict(known)
    for extra in extras:
        for key, value in extra.items():
            if value in (None, "") or not FILTER_COLUMN.fullmatch(key):
                continue
            if key not in kinds and len(kinds) >= cap:
                continue
            kind = "number" if kinds.get(key, "number") == "number" and is_number(value) else "text"
            kinds[key] = "text" if known.get(key) == "text" else kind
    return kinds
