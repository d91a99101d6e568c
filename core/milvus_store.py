"""The distributed ``CatalogueStore``: one Milvus collection per model, through pymilvus's MilvusClient.

The collection holds everything an API replica serves - the product fields (scalars, JSON for the
extra columns and their numeric values), the indexed vector and the raw CLIP vector - so replicas
keep no state of their own. A small ``<collection>__meta`` collection holds the store's generation,
head, filterable columns, categories, index description and calibration.

``MilvusStore`` keeps the protocol's promises and the served index's description; the parts it is made of
each have a module: connections and collection names (``core.milvus_client``), the row layout
(``core.milvus_schema``), the collection's reads and writes (``core.milvus_collection``), read-your-writes
(``core.milvus_consistency``), the meta collection (``core.milvus_meta``), searches (``core.milvus_search``,
``core.milvus_expr``), the vector index (``core.milvus_index``), and what keeps a write from undoing a newer
one (``core.milvus_deletes``). Writes use Milvus's own upsert and delete. This process reads its own writes
at its next read, other processes' writes once the server has applied them (a time tick or two); the API's
watcher (``refresh``) makes sure of it within about a second. ``IMAGESEARCH_MILVUS_CONSISTENCY=strong``
makes every read wait for every write instead. The vector index type follows the catalogue's size, as the
local store's does. The store opens no local database: the pipeline keeps its build state (staged CSV
rows, fetched images, view vectors) on the build machine itself (``pipeline.state``).

What Milvus cannot give: transactions across rows (a batch upsert is not atomic across processes,
but each row is, and a rerun repairs), and the generation is read-modify-written (two writers at the
same moment may bump it once; it only tells readers "something changed").
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.ann import INDEX_JSON
from core.calibration import (CALIBRATION_JSON, Calibration, Sample, TextEncoder, ensure_calibration,
                              fit_calibration, now_iso)
from core.config import Settings
from core.errors import CatalogueReplacedError, StoreError
from core.head import ProjectionHead
from core.lexical import LexicalConfig, identifier_columns, identifier_text, query_words
from core.milvus_client import client, collection_name, milvus_uri, pointed
from core.milvus_collection import SCAN_BATCH, Collection, milvus_call
from core.milvus_deletes import Tombstones, machine_lock, plan_writes
from core.milvus_expr import expression, literal
from core.milvus_index import (MILVUS_INDEX, SERVED_KINDS, MilvusIndex, VectorIndex, add_vector_index, metric_name,
                               search_defaults, wanted_kind)
from core.milvus_meta import Meta
from core.milvus_schema import (FIELDS, WORDS, Layout, catalogue_schema, clip_of, index_words, known_layout,
                                 product_of, row_words, server_layout)
from core.milvus_search import sample_ids, search, search_words
from core.sqlite_db import stage_ids
from core.store import Filter, Hit, Product, ProductVector, ServedIndex, Source, StoreStats, row_digest
from core.types import Embeddings, IndexType
from utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

_CALIBRATION_SAMPLE = 2000


class MilvusStore:
    """A model's catalogue in one Milvus collection. Thread-safe (one client per process)."""

    damaged: str | None = None  # Milvus guards its own files: a failing call is a StoreError, not damage here

    def __init__(self, folder: Path, settings: Settings, *, name: str = "", index_type: IndexType | None = None,
                 head: ProjectionHead | None = None, open_index: bool = True, collection: str | None = None,
                 lexical: LexicalConfig | None = None) -> None:
        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.settings = settings
        self.lexical_config = lexical or LexicalConfig()
        self._index_type = index_type or settings.index_type
        self.client = client(settings)
        self.base = collection_name(settings.milvus_prefix, self.name)
        self._uri = milvus_uri(settings)
        # the collection holding the rows: the model's own, or the one a restore filled and pointed it to; a
        # restore names the one it fills (``collection``) before the model points there
        self._pinned = collection is not None
        self.collection: str = collection or milvus_call(self.name, pointed, self.client, self.base)
        self._io = Collection(self.client, self.name, self.collection, self._uri,
                              strong=settings.milvus_consistency == "strong")
        self._meta = Meta(self._io)
        self.meta_collection = self._meta.name
        self._vector_index = VectorIndex(self._io, self._meta, settings)
        self.head = head
        self._head = head.sha256 if head is not None else None
        self.text_encoder: TextEncoder | None = None
        self._lock = threading.RLock()
        self._index: MilvusIndex | None = None
        self._seen = -1
        self._epoch = 0  # moves whenever the served description is replaced (refresh installs only on its own)
        self._dim: int | None = None
        self._layout: Layout | None = None
        self._deleted = Tombstones(self.client, self.collection, self._io.call)
        self._meta.ensure()
        if self._io.exists():
            if self.lexical_note is not None:
                logger.info("%s: %s", self.name, self.lexical_note)
            self._io.call(self.client.load_collection, self.collection)  # a no-op where it is loaded already
            if self._meta.get("head") != (self._head or ""):
                if open_index:  # a serving process (a replica) never rewrites the shared collection
                    raise StoreError(self.name, "the Milvus collection was projected through another "
                                                "head.safetensors than this process has: adopt the head on the "
                                                f"build machine (python run_training.py {self.name}) and give "
                                                "every replica that same file")
                self.reproject(head)
        if open_index:
            self.open_index()

    def replaced(self) -> bool:
        """True once a restore has pointed the model at another collection than the one this store reads."""
        if self._pinned:
            return False
        try:
            now = pointed(self.client, self.base, load=False)
        except Exception:  # released by a server restart: load it and ask again
            now = self._io.call(pointed, self.client, self.base)
        return bool(now != self.collection)

    def restored(self, generation: int, calibration: Calibration | None) -> None:
        """A restore's last touch to the collection it filled: the backup's generation, and its calibration
        (whose text map a rebuild keeps when no text encoder is at hand)."""
        values: dict[str, Any] = {"generation": generation}
        if calibration is not None:
            values["calibration"] = calibration.to_json()
        self._meta.set(values)
        self._meta.forget()

    def _create(self, dim: int, clip_dim: int) -> None:
        layout = server_layout(self.client, self._uri, self.collection + "__probe")
        params = self.client.prepare_index_params()
        add_vector_index(params, IndexType.FLAT, 0, self.settings)
        if layout.clip_vector:  # Milvus loads a collection only with every vector field indexed
            params.add_index(field_name="clip", index_type="FLAT", metric_type=metric_name(self.settings.metric))
        index_words(params, layout)
        self.client.create_collection(self.collection, schema=catalogue_schema(layout, dim, clip_dim),
                                      index_params=params)
        self.client.load_collection(self.collection)
        # the collection is created with its (flat) vector index: that is the index's build time
        self._meta.set({"head": self._head or "", "dim": dim, "layout": layout.to_json(),
                        "lexical": self.lexical_config.signature,
                        "index": {"kind": IndexType.FLAT.value, "params": {}, "built_at": now_iso()}})
        self._layout, self._dim = layout, dim
        logger.info("%s: Milvus collection %s created (%d-dim vectors; CLIP vectors %s, images as a JSON %s, %s)",
                    self.name, self.collection, dim, "as a vector field" if layout.clip_vector else "in base64",
                    "array" if layout.json_arrays else "object",
                    "words by BM25" if layout.words else self.lexical_note)

    @property
    def layout(self) -> Layout:
        """How this collection holds CLIP vectors and image lists (fixed when it was created)."""
        if self._layout is None:
            self._layout = Layout.from_json(self._meta.get("layout", None))
        return self._layout

    # --- protocol: metadata ----------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        if self._dim is None:  # fixed once the collection exists
            dim = self._meta.get("dim", None)
            self._dim = int(dim) if dim else None
        return self._dim

    @property
    def live_index(self) -> MilvusIndex | None:
        return self._index

    def generation(self) -> int:
        return int(self._meta.get("generation", 0))

    def count(self, *, strong: bool = False) -> int:
        """Products in the collection, exactly, this process's writes included; ``strong``: every process's."""
        return self._io.count(strong=strong)

    def columns(self) -> dict[str, str]:
        """Filterable extra columns (re-read when the generation this process has seen moves on)."""
        with self._lock:
            seen = self._seen if self._seen >= 0 else None
            return dict(self._meta.cached("columns", seen, lambda: dict(sorted(self._meta.get("columns", {}).items()))))

    def stats(self) -> StoreStats:
        """Counts by source and category, kept in the meta collection by every write (no scan). Two
        processes writing the same moment may each miss the other's delta; the next build recounts."""
        by_source, cats = self._meta.counts()
        return StoreStats(products=self.count(), by_source=by_source, categories=cats, columns=self.columns(),
                          generation=self.generation())

    def recount(self) -> None:
        """Exact counts by source and category, from one scan (a build does this at its index phase)."""
        source: Counter[str] = Counter()
        category: Counter[str] = Counter()
        for rows in self._io.scan(["source", "category"]):
            source.update(r["source"] for r in rows)
            category.update(r["category"] for r in rows)
        with self._lock:
            self._meta.set_counts(source, category)

    def get(self, ids: Sequence[str]) -> list[Product]:
        found = {row["id"]: product_of(row) for row in self._io.rows(ids, FIELDS)}
        return [found[i] for i in ids if i in found]

    def vectors(self, ids: Sequence[str], *, clip: bool = False) -> Embeddings:
        field = "clip" if clip else "vector"
        found = {row["id"]: clip_of(row[field]) for row in self._io.rows(ids, ["id", field])}
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
        found = {row["id"]: row["vector"] for row in self._io.rows(missing, ["id", "vector"])} if missing else {}
        dim = self.dim or 0
        rows = [h.vector if h.vector is not None else found.get(h.product.id, np.zeros(dim)) for h in hits]
        return np.asarray(rows, dtype=np.float32).reshape(len(hits), -1) if rows else np.zeros((0, dim), np.float32)

    def scan_vectors(self, batch: int = SCAN_BATCH, *, clip: bool = False) -> Iterator[tuple[list[str], Embeddings]]:
        """Every (ids, vectors) batch of the catalogue, in no particular order."""
        field = "clip" if clip else "vector"
        for rows in self._io.scan(["id", field]):
            yield [r["id"] for r in rows], np.asarray([clip_of(r[field]) for r in rows], dtype=np.float32)

    def sample_vectors(self, n: int, seed: int) -> tuple[list[str], Embeddings]:
        """A seeded sample of up to ``n`` products: the neighbours of seeded random directions (no scan;
        spread over the catalogue, if not uniform)."""
        dim = self.dim
        total = self.count()
        if not dim or not total:
            return [], np.zeros((0, dim or 0), np.float32)
        ids = sample_ids(self.search, dim, total, n, seed)
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
            if not self._io.exists():
                first = items[0]
                self._io.call(self._create, np.asarray(first.indexed).shape[-1], np.asarray(first.clip).shape[-1])
            latest = {it.product.id: it for it in items}  # a batch naming an id twice: the last wins
            current = {r["id"]: r for r in self._io.rows(list(latest), ["id", "source", "digest", "category",
                                                                        "images"])}
            plan = plan_writes(latest, current, self._deleted.get(list(latest)), keep_api, self.layout,
                               self.lexical_config)
            self._deleted.put(plan.resolved)
            rows = plan.rows
            if not rows:
                return 0
            self._io.upsert(rows)
            self._io.writes.wrote((r["id"] for r in rows), min(r["updated_at"] for r in rows), present=True)
            self._deleted.drop(plan.ended)
            gen = self._commit(plan.removed, [(r["source"], r["category"]) for r in rows], [r["extra"] for r in rows])
            self._wrote(gen, len(rows) - len(plan.removed))
            late: list[str] = []
            if keep_api or any(it.if_version is not None for it in items):
                # a delete made on another machine after the check above has its tombstone there by now
                late = list(self._deleted.get([r["id"] for r in rows]))
                self._remove(late, remember=False)
        if self.replaced():  # written to a collection a restore has just replaced: lost with it, not acknowledged
            raise CatalogueReplacedError(self.name)
        return len(rows) - len(late)

    def _commit(self, removed: Sequence[tuple[str, str]], added: Sequence[tuple[str, str]],
                extras: Sequence[dict[str, Any]] = ()) -> int:
        """After a write: the next generation, with the counts and columns it moved (``Meta.commit``)."""
        return self._meta.commit(removed, added, extras, self.settings.max_filter_columns)

    def delete(self, ids: Sequence[str]) -> int:
        with self._writing():
            return self._remove(ids, remember=True)

    def _remove(self, ids: Sequence[str], *, remember: bool, sources: Sequence[Source] = ()) -> int:
        """Delete ``ids`` (only those of ``sources`` when given, checked by Milvus as it deletes); with
        ``remember`` each one's tombstone is written first, so a CSV write checking after its write sees it."""
        rows = [r for r in self._io.rows(ids, FIELDS) if not sources or r["source"] in {s.value for s in sources}]
        if remember:
            self._deleted.put({r["id"]: row_digest(product_of(r)) if r["source"] == Source.CSV.value else ""
                               for r in rows})
        present = [r["id"] for r in rows]
        stamp = self._io.writes.stamp()
        only = " and (" + " or ".join(f"source == {literal(s.value)}" for s in sources) + ")" if sources else ""
        self._io.delete(present, only)
        if present:
            self._io.writes.wrote(present, stamp, present=False)
            self._wrote(self._commit([(r["source"], r["category"]) for r in rows], []), -len(present))
            if self.replaced():  # removed from a collection a restore has just replaced: not acknowledged
                raise CatalogueReplacedError(self.name)
        return len(present)

    def deleted_ids(self, ids: Sequence[str]) -> list[str]:
        found = self._deleted.get(ids)
        return [i for i in ids if i in found]

    def delete_missing(self, keep: Iterator[str] | None, *, sources: Sequence[Source]) -> int:
        """Delete the products of ``sources`` whose id is not in ``keep``. The kept ids go to a temporary
        SQLite database on disk, so no Python object per product is held."""
        if not self._io.exists():
            return 0
        conn = sqlite3.connect("")  # a private temporary database on disk, gone when closed
        try:
            stage_ids(conn, keep or ())
            doomed: list[str] = []
            expr = " or ".join(f"source == {literal(s.value)}" for s in sources)
            for rows in self._io.scan(["id"], expr):
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
            if self._io.exists() and self._meta.get("head") != (sha or ""):
                out_dim = head.output_dim if head is not None else None
                if head is not None and dim is not None and out_dim is not None and out_dim != dim:
                    raise StoreError(self.name, f"head.safetensors gives {out_dim}-dim vectors but the Milvus "
                                                f"collection holds {dim}; copy the model again (--copy-store)")

                def project(rows: list[dict[str, Any]]) -> None:
                    clips = np.asarray([clip_of(r["clip"]) for r in rows], dtype=np.float32)
                    self._check_fits(head, clips.shape[1], dim)  # on the first batch: nothing written yet
                    vectors = head.apply(clips) if head is not None else clips
                    for row, vec in zip(rows, vectors, strict=True):
                        row["vector"] = np.asarray(vec, dtype=np.float32).tolist()

                self._rewrite_rows(project)
                self._meta.set({"head": sha or ""})
                gen = self._commit((), ())
                logger.info("%s: stored vectors re-projected through head %s", self.name, sha or "none")
            else:
                gen = self.generation()
        self.head, self._head = head, sha
        return gen

    def _rewrite_rows(self, edit: Callable[[list[dict[str, Any]]], None]) -> int:
        """Every row read whole, a batch at a time, changed in place by ``edit`` and upserted whole again
        (the BM25 vector is the server's); each row keeps its stamp, so point reads wait a while. Returns the
        number of rows rewritten."""
        fields = [*FIELDS, "digest", "num", "vector", "clip", *([WORDS] if self.layout.words else [])]
        rewritten = 0
        for rows in self._io.scan(fields):
            edit(rows)
            self._io.call(self.client.upsert, self.collection, rows)
            self._io.writes.wrote_unstamped()
            rewritten += len(rows)
        return rewritten

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
        if not self._io.exists():
            raise StoreError(self.name, "the catalogue is empty: nothing to search yet")
        expr = expression(flt, self.columns() if flt is not None and (flt.equals or flt.ranges) else {})
        return search(self._io, queries, k, expr, self._index, self.settings)

    # --- lexical ---------------------------------------------------------------------------------
    # Words are Milvus's own full-text search where the server has it (Milvus 2.5+, milvus-lite 3): each row's
    # folded words, a BM25 function and its sparse index (``core.milvus_schema``). Milvus 2.3 and 2.4 have none:
    # text search there is by picture and by exact ids and identifier columns, said in one line (the model's
    # /status and the log). Unlike the local index, the last word typed is not also a prefix.
    @property
    def lexical_note(self) -> str | None:
        """Why this store finds no words (None: it does). Before the collection exists: nothing to say yet. The
        server is not probed for it (replicas opening at once would race on the scratch collection): where this
        process has not probed it, both possible reasons are said."""
        if not self._io.exists() or self.layout.words:
            return None
        fallback = "text search finds by picture, and by exact ids and identifier columns"
        restore = (f"back the model up and restore it over itself (python run_training.py {self.name} --backup, "
                   "then --restore) to index them")
        server = known_layout(self._uri)
        if server is not None and not server.words:
            return f"words are not indexed: this Milvus server has no full-text search (Milvus 2.5+ has it); {fallback}"
        if server is not None:
            return f"words are not indexed: this Milvus collection was made before word search; {restore}; until " \
                   f"then {fallback}"
        return ("words are not indexed in this Milvus collection: the server has no full-text search (Milvus 2.5+ "
                f"has it), or the collection was made before word search ({restore}); {fallback}")

    def find_words(self, text: str, k: int, flt: Filter | None = None, vector: np.ndarray | None = None
                   ) -> list[Hit]:
        """The best ``k`` products by BM25 over the words of ``text`` (any of them; most matched first, as BM25
        sums them), among those ``flt`` admits; a hit's ``score`` is its BM25 relevance. None where the
        collection holds no words (``lexical_note`` says why). (``vector`` is not needed: Milvus's sparse index
        ranks common words without scoring every product that holds them.)"""
        words = query_words(text)
        if not words or (flt is not None and flt.empty) or not self._io.exists() or not self.layout.words:
            return []
        expr = expression(flt, self.columns() if flt is not None and (flt.equals or flt.ranges) else {})
        return search_words(self._io, " ".join(words), k, expr)

    def find_identifier(self, text: str, flt: Filter | None = None) -> list[Hit]:
        """The product whose id, or identifier column, is exactly ``text`` (a primary-key or scalar query)."""
        value = identifier_text(text)
        if value is None or (flt is not None and flt.empty) or not self._io.exists():
            return []
        columns = self.columns()
        base = flt or Filter()
        exprs = [f"id == {literal(value)}"]
        for column in identifier_columns(self.lexical_config, columns):
            if column not in base.equals and columns.get(column) != "number":
                exprs.append(expression(Filter(equals={column: value}), columns))
        where = expression(base, columns)
        expr = f"({' or '.join(f'({e})' for e in exprs)})" + (f" and ({where})" if where else "")
        rows = self._io.call(self.client.query, self.collection, filter=expr, output_fields=FIELDS, limit=10,
                             consistency_level=self._io.fast())
        return [Hit(product_of(row), 1.0) for row in rows]

    def _reindex_words(self) -> None:
        """Rewrite every row's words when model.json's text columns changed since they were written (the build
        machine's index phase does this; a batch at a time, each row whole, keeping its stamp)."""
        wanted = self.lexical_config.signature
        if not self.layout.words or self._meta.get("lexical", None) == wanted:
            return

        def reword(rows: list[dict[str, Any]]) -> None:
            for row in rows:
                row[WORDS] = row_words(row, self.lexical_config)

        rewritten = self._rewrite_rows(reword)
        self._meta.set({"lexical": wanted})
        logger.info("%s: words of %d products indexed again (model.json's text columns changed)", self.name,
                    rewritten)

    def lexical_bytes(self) -> int | None:
        return None

    # --- the index -------------------------------------------------------------------------------
    def wanted_kind(self, n: int) -> IndexType:
        return wanted_kind(n, self.settings, self._index_type)

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
            self._io.call(self.client.load_collection, self.collection)
            current = self._vector_index.kind()
            if current is None:
                return self.rebuild(save=True)
            self._install(self._describe(current, n))
            return self._index

    def _describe(self, kind: IndexType, n: int) -> MilvusIndex:
        return self._vector_index.describe(kind, n, dim=self.dim or 0, generation=self.generation(),
                                           head=self._head, wanted=self.wanted_kind(n))

    def rebuild(self, *, save: bool, tune_it: bool = True, progress: object = None) -> MilvusIndex:
        """Give the collection a vector index of the kind the catalogue's size calls for, covering every row:
        the rows written so far are flushed (sealed segments are what Milvus indexes), and an index of another
        kind or other build parameters is replaced; one that already fits is kept (Milvus indexes the
        segments sealed later itself), so no reader waits for nothing."""
        with self._lock:
            n = self.count()
            if not n:
                raise StoreError(self.name, "the catalogue is empty: nothing to index")
            self._reindex_words()
            kind = self.wanted_kind(n)
            params = self.client.prepare_index_params()
            build = add_vector_index(params, kind, n, self.settings)
            self._io.call(self.client.flush, self.collection)
            kept = self._vector_index.fits(kind, build)
            if not kept:
                self._vector_index.replace(params, kind)
            search = search_defaults(kind, self.settings)
            self._meta.set({"index": {"kind": kind.value, "params": {**build, **search}, "built_at": now_iso()}})
            live = self._describe(kind, n)
            self._install(live)
            logger.info("%s: Milvus %s index over %d products%s", self.name, MILVUS_INDEX[kind], n,
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
        if self._io.released:
            self._load_again()
        state = self._meta.many(["generation", "index"])
        gen, index = int(state.get("generation", 0)), state.get("index") or {}
        rebuilt = str(index.get("built_at") or "") != live.info.built_at and index.get("kind") in SERVED_KINDS
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
        self._io.call(self.client.load_collection, self.meta_collection)
        if self.base + "__meta" != self.meta_collection:  # the one holding the pointer to this collection
            self._io.call(self.client.load_collection, self.base + "__meta")
        if not self._meta.many(["rebuilding"], strong=True).get("rebuilding", False) and self._io.exists():
            self._io.call(self.client.load_collection, self.collection)
        self._io.released = False
        logger.info("%s: Milvus collections loaded again", self.name)

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

    # --- calibration (core.calibration; kept in the meta collection: replicas share it) ------------
    @property
    def calibration(self) -> Calibration | None:
        with self._lock:
            return self._meta.cached("calibration", self._seen, self._read_calibration)  # type: ignore[no-any-return]

    def _read_calibration(self) -> Calibration | None:
        raw = self._meta.get("calibration", None)
        return Calibration.from_json(raw) if raw else None

    def ensure_calibration(self) -> Calibration | None:
        """Refit the calibration when it is stale (``core.calibration.ensure_calibration``); None for an empty
        store."""
        return ensure_calibration(self)

    def calibrate(self, live: MilvusIndex) -> Calibration | None:
        """Fit the calibration (``core.calibration.fit_calibration``) from a sample, with Milvus's nearest
        neighbours; saved in Milvus and as ``calibration.json`` on the build machine."""
        ids, vectors = self.sample_vectors(_CALIBRATION_SAMPLE, self.settings.seed)

        def neighbours(queries: np.ndarray, own: np.ndarray) -> np.ndarray:
            out = np.full(len(queries), np.nan)
            for row, (hits, key) in enumerate(zip(self.search(queries, 2), own, strict=True)):
                other = [h.score for h in hits if h.product.id != ids[int(key)]]
                if other:
                    out[row] = other[0]
            return out

        sample = Sample(products=self.get(ids), vectors=vectors, keys=np.arange(len(ids), dtype=np.int64))
        return fit_calibration(self, live, sample, neighbours, self._save_calibration)

    def _save_calibration(self, cal: Calibration) -> None:
        self._meta.set({"calibration": cal.to_json()})
        self._meta.forget("calibration")
        write_json_atomic(self.folder / CALIBRATION_JSON, cal.to_json())

    def close(self) -> None:
        """Nothing of its own to release: the server connection is the process's (``close_clients``)."""


def _not_kept(conn: sqlite3.Connection, ids: list[str]) -> list[str]:
    """Those of ``ids`` not in the temporary ``keep_ids`` table."""
    marks = ",".join("?" * len(ids))
    kept = {i for (i,) in conn.execute(f"SELECT id FROM keep_ids WHERE id IN ({marks})", ids)}
    return [i for i in ids if i not in kept]
