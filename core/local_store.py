"""The embedded ``CatalogueStore``: SQLite is the truth, a FAISS index is derived from it.

On open the index is loaded and catches up on the store's changes since its generation; a missing
or damaged one is rebuilt from the stored vectors. Writes commit to SQLite first (durable when the
call returns) and are then applied to the index in place. Other processes' writes are picked up
by :meth:`LocalStore.refresh`.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from core.ann import (INDEX_JSON, LiveIndex, build, choose_index_type, exact_top, needs_training, train_size,
                      tune)
from core.calibration import (CALIBRATION_JSON, Calibration, Sample, TextEncoder, ensure_calibration,
                              fit_calibration, save_calibration)
from core.config import Settings
from core.errors import CatalogueReplacedError, StorageFullError, StoreError, disk_full
from core.head import ProjectionHead
from core.lexical import LexicalConfig, identifier_columns, identifier_text, in_step, index_bytes, indexed_texts, \
    match_expression, matched_words, query_words
from core.lexical import rebuild as rebuild_lexical
from core.sqlite_db import Database
from core.sqlite_store import SCHEMA, ProductTable, store_path
from core.store import Changes, Filter, Hit, Product, ProductVector, ServedIndex, Source, StoreStats
from core.types import Embeddings, IndexType, Metric

logger = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])

_MAX_FETCH = 8192  # widest candidate list an over-fetching (broad-filter) search asks the index for
_TUNE_QUERIES = 200
_IVFPQ_MIN_TRAIN = 5_000  # 6-bit codes: 64 centroids x 39 points; and more vectors than dimensions
_IVF_MIN_TRAIN = 100
_CALIBRATION_SAMPLE = 2000  # products whose pairs fit the image map (every pair among them)


def _guarded(method: _F) -> _F:
    """Reads that meet a damaged file (or another SQLite failure) raise the store's typed error, never a bare
    sqlite3 exception (a 500): the database records the damage, which /health then reports."""

    @functools.wraps(method)
    def wrapper(self: LocalStore, *args: Any, **kw: Any) -> Any:
        try:
            return method(self, *args, **kw)
        except sqlite3.DatabaseError as exc:
            raise self.db.failure(exc, "read") from None

    return cast(_F, wrapper)


class LocalStore:
    """SQLite + FAISS under ``models/<m>/``. Thread-safe; many readers, one writer at a time."""

    def __init__(self, folder: Path, settings: Settings, *, name: str = "", index_type: IndexType | None = None,
                 head: ProjectionHead | None = None, open_index: bool = True,
                 lexical: LexicalConfig | None = None) -> None:
        self.folder = Path(folder)
        self.name = name or self.folder.name
        self.settings = settings
        self._index_type = index_type or settings.index_type
        self.db = Database(store_path(self.folder), SCHEMA, self.name)
        # the folder this store opened, by a file descriptor: if a restore swaps another folder in under the
        # name, what this store still writes (a compaction's index, a calibration) lands in its own folder,
        # never in the restored model's
        self._own, fd = _pinned(self.folder)
        if fd is not None:
            weakref.finalize(self, os.close, fd)  # the descriptor lives as long as this store
        self.table = ProductTable(self.db, settings.max_filter_columns)
        self.table.upgrade(self.name)  # float32 vectors of an earlier release become float16
        self.table.add_view_caches(self.name)  # and its products learn their cached views' names
        self.lexical_config = lexical or LexicalConfig()
        self._ensure_lexical()
        self._index: LiveIndex | None = None
        self._index_lock = threading.RLock()  # serialises index maintenance (apply, rebuild), not searches
        self.head = head
        self._head = head.sha256 if head is not None else None
        self.text_encoder: TextEncoder | None = None  # set by whoever can run the CLIP text tower
        self._calibration: tuple[object, Calibration | None] = (None, None)  # (file signature, map)
        if self.table.head() != self._head:
            self.reproject(head)
        if open_index:
            self.open_index()

    # --- protocol: metadata ----------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        live = self._index
        if live is not None:
            return live.info.dim
        dims = self.table.dims()
        return None if dims is None else dims[1]

    @property
    def live_index(self) -> LiveIndex | None:
        return self._index

    @property
    def damaged(self) -> str | None:
        """What is wrong with the catalogue's file, once a check or a read found it damaged."""
        return self.db.damaged

    @_guarded
    def generation(self) -> int:
        return self.table.generation()

    @_guarded
    def count(self) -> int:
        return self.table.count()

    @_guarded
    def stats(self) -> StoreStats:
        return self.table.stats()

    @_guarded
    def get(self, ids: Sequence[str]) -> list[Product]:
        return self.table.get(ids)

    @_guarded
    def hit_vectors(self, hits: Sequence[Hit]) -> Embeddings:
        keys = np.array([h.key for h in hits], dtype=np.int64)
        if len(keys) and (keys >= 0).all():
            return self._subset_vectors(keys)
        return self.table.vectors([h.product.id for h in hits])

    @_guarded
    def columns(self) -> dict[str, str]:
        return self.table.columns()

    @_guarded
    def vectors(self, ids: Sequence[str], *, clip: bool = False) -> Embeddings:
        return self.table.vectors(ids, clip=clip)

    @_guarded
    def changes_since(self, generation: int) -> Changes:
        return self.table.changes_since(generation)

    def replaced(self) -> bool:
        """True once a restore has put another catalogue in this store's folder (reload the model)."""
        return self.db.replaced()

    def _written(self) -> None:
        """After a commit: a write that landed in a catalogue a restore has just replaced is lost with it, so
        it must not be acknowledged."""
        if self.db.replaced():
            raise CatalogueReplacedError(self.name)
        self.refresh()

    # --- protocol: writes ------------------------------------------------------------------------
    def upsert(self, items: Sequence[ProductVector], *, keep_api: bool = False) -> int:
        with self.db.write() as conn:
            gen = self.table.bump(conn)
            written = self.table.upsert(conn, gen, items, keep_api=keep_api)
        self._written()
        return written

    def delete(self, ids: Sequence[str]) -> int:
        with self.db.write() as conn:
            gen = self.table.bump(conn)
            removed = self.table.delete(conn, gen, ids)
        self._written()
        return removed

    @_guarded
    def deleted_ids(self, ids: Sequence[str]) -> list[str]:
        return self.table.deleted_ids(ids)

    def delete_missing(self, keep: Iterator[str] | None, *, sources: Sequence[Source]) -> int:
        """Delete the products of ``sources`` whose id is not in ``keep`` (None keeps none)."""
        with self.db.write() as conn:
            doomed = self.table.missing(conn, keep, sources)
            if doomed:
                gen = self.table.bump(conn)
                self.table.delete(conn, gen, doomed, remember=False)
        if doomed:
            self._written()
        return len(doomed)

    def reproject(self, head: ProjectionHead | None) -> int:
        """Re-derive every indexed vector from its stored CLIP vector through ``head`` (or drop them
        when None: the index then holds CLIP vectors), in one transaction that records the head."""
        sha = head.sha256 if head is not None else None
        dims = self.table.dims()
        if head is not None and dims is not None and head.input_dim != dims[0]:
            raise StoreError(self.name, f"head.safetensors takes {head.input_dim}-dim vectors but the catalogue's "
                                        f"CLIP vectors have {dims[0]}; remove it or fine-tune again")
        with self.db.write() as conn:
            gen = self.table.bump(conn)
            changed = self.table.head(conn) != sha
            if changed:
                for vids, clips in self.table.iter_vectors(conn, column="clip"):
                    self.table.set_vectors(conn, gen, vids, clips, head.apply(clips) if head is not None else None)
                self.table.set_head(conn, sha)
                logger.info("%s: stored vectors re-projected through head %s", self.name, sha or "none")
        self.head, self._head = head, sha
        with self._index_lock:
            self._index = None  # every vector changed: the next open rebuilds
            if changed:
                # a saved index of an earlier head (head A -> B -> A) would pass the head check and then
                # "catch up" by adding every re-projected row again: duplicates. It is stale either way.
                (self._own / INDEX_JSON).unlink(missing_ok=True)
        return gen

    # --- protocol: search ------------------------------------------------------------------------
    @_guarded
    def search(self, queries: Embeddings, k: int, flt: Filter | None = None) -> list[list[Hit]]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if flt is not None and flt.empty:
            return [[] for _ in queries]
        if flt is not None and flt.selective:
            vids = self.table.matching(flt, self.settings.filter_exact_max)
            if vids is not None:
                live = self._index
                vectors = self._subset_vectors(vids)
                shortlist = live.rescore_factor if live is not None and not live.lossy else 0
                return [self._exact(q, k, vids, vectors, shortlist) for q in queries]
        return [self._approximate(q, k, flt) for q in queries]

    # --- lexical: the products by their words (core.lexical) ---------------------------------------
    lexical_note: str | None = None  # the local store has its own full-text index: nothing to say

    def _ensure_lexical(self) -> None:
        """Build the lexical index when it is missing, built for other columns or out of step (one SQL
        statement over the rows, in one transaction: a kill leaves the old state, the next open redoes it)."""
        if in_step(self.db.reader(), self.lexical_config):
            return
        if self.db.read_only:  # a full disk: served as it is, words included only once built
            if self.db.reader().execute("SELECT 1 FROM sqlite_master WHERE name='lexical'").fetchone() is None:
                self.lexical_note = "words are not indexed yet: the catalogue is read-only (a full disk?)"
            return
        with self.db.write() as conn:
            if not in_step(conn, self.lexical_config):
                rebuild_lexical(conn, self.lexical_config)
                logger.info("%s: lexical index built over %d products", self.name,
                            conn.execute("SELECT count(*) FROM products").fetchone()[0])

    @_guarded
    def find_words(self, text: str, k: int, flt: Filter | None = None, vector: np.ndarray | None = None
                   ) -> list[Hit]:
        """Products holding every word of ``text`` (the last typed one also as a prefix), or, where none holds
        them all, those holding some; best BM25 first; a hit's ``score`` is its BM25 relevance (higher: better).
        With the query's ``vector``, words held by more than ``words_ranked_max`` products ("red", "mug") are
        not ranked by BM25 over them all (a microsecond a product: 100 ms for a word 100k of 1M products hold),
        which would say little anyway: those products are ranked by the picture (:meth:`_by_picture`)."""
        words = query_words(text)
        if not words or self.lexical_note is not None:
            return []
        for every in (True, False) if len(words) > 1 else (True,):  # any word is asked only where none has all
            match = match_expression(words, every=every)
            if vector is not None:  # how many hold them, first (reading a match is cheap, ranking it is not)
                ranked = self.settings.words_ranked_max
                held = self.table.word_vids(match, flt, max(ranked, self.settings.filter_exact_max))
                if held is None or len(held) > ranked:
                    return self._by_picture(words, every, held, k, flt, vector)
                if not len(held):
                    continue
            rows = self.table.lexical(match, k, flt)
            if rows:
                return [Hit(product, score, key=vid) for vid, product, score in rows]
        return []

    def _by_picture(self, words: list[str], every: bool, held: np.ndarray | None, k: int, flt: Filter | None,
                    vector: np.ndarray) -> list[Hit]:
        """The best ``k`` by their picture (cosine with ``vector``) of the products holding ``words`` (all of them
        or, not ``every``, any): each of the ``held`` ones scored exactly where they are known (at most
        ``filter_exact_max``), else the picture's nearest products that hold them (a bounded, widening look)."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if held is not None:
            live = self._index
            shortlist = live.rescore_factor if live is not None and not live.lossy else 0
            return self._exact(query, k, held, self._subset_vectors(held), shortlist)
        config = self.lexical_config

        def holds(p: Product) -> bool:
            found = matched_words(words, indexed_texts(p.title, p.category, p.extra, config))
            return len(found) == len(words) if every else bool(found)

        fetch = max(4 * k, 64)
        while True:
            hits = self.search(query[None], fetch, flt)[0]
            kept = [h for h in hits if holds(h.product)]
            if len(kept) >= k or len(hits) < fetch or fetch >= _MAX_FETCH:
                return kept[:k]
            fetch = min(4 * fetch, _MAX_FETCH)

    @_guarded
    def find_identifier(self, text: str, flt: Filter | None = None) -> list[Hit]:
        """The products whose id, or an identifier column's value (sku, barcode...), is exactly ``text``."""
        value = identifier_text(text)
        if value is None:
            return []
        columns = identifier_columns(self.lexical_config, self.table.columns())
        return [Hit(product, 1.0, key=vid) for vid, product in self.table.identified(value, columns, flt)]

    @_guarded
    def lexical_bytes(self) -> int | None:
        """The lexical index's size on disk."""
        return index_bytes(self.db.reader())

    def _subset_vectors(self, vids: np.ndarray) -> Embeddings:
        """The subset's vectors: from the index in memory where it holds them (exactly for flat, HNSW and
        IVF, as 8-bit codes for IVF-SQ8), else - or for a vid it has not caught up on yet - from the store."""
        live = self._index
        if live is not None and not live.lossy and len(vids):
            found = live.reconstruct(vids)
            if found is not None:
                return found
        stored = self.table.vectors_by_vid(vids.tolist())
        dim = self.dim or 0
        return np.stack([stored.get(int(v), np.zeros(dim, np.float32)) for v in vids]) if len(vids) else \
            np.zeros((0, dim), np.float32)

    def _exact(self, query: np.ndarray, k: int, vids: np.ndarray, vectors: Embeddings, shortlist: int = 0
               ) -> list[Hit]:
        """A selective filter: score every admitted product (the subset is small). With ``shortlist`` (the
        vectors are 8-bit codes) the best ``shortlist * k`` are scored again from the stored vectors."""
        if not len(vids):
            return []
        scores = self._scores(vectors, query)
        top = np.argsort(-scores, kind="stable")[:k * max(1, shortlist)]
        picked, picked_scores = vids[top], scores[top]
        if shortlist:
            picked_scores, picked = self._rerank(query, picked)
            picked, picked_scores = picked[:k], picked_scores[:k]
        rows = self.table.by_vids(picked.tolist())
        return [Hit(rows[int(v)], float(s), int(v)) for v, s in zip(picked, picked_scores, strict=True)
                if int(v) in rows]

    def _scores(self, vectors: Embeddings, query: np.ndarray) -> np.ndarray:
        # einsum, not BLAS: a few thousand rows take well under a millisecond on one core, while a
        # threaded BLAS call spin-waits against torch and FAISS on a busy machine (measured at 1M
        # products, 0.1% filter: 28 ms p50 over HTTP with matmul, 2.7 ms without)
        if self.settings.metric == Metric.COSINE:
            scores = np.einsum("ij,j->i", vectors, query)
        else:
            diff = vectors - query
            scores = 1.0 - np.einsum("ij,ij->i", diff, diff) / 2.0
        return np.asarray(np.clip(scores, -1.0, 1.0), dtype=np.float32)

    def _approximate(self, query: np.ndarray, k: int, flt: Filter | None) -> list[Hit]:
        """The index's candidates, read back from the store (which drops dead and filtered-out vids),
        widening until ``k`` survive or the index has nothing more to give."""
        live = self.require_index()
        extra = len(flt.exclude_ids) if flt is not None else 0
        slack = 1.0 + live.dead / max(1, live.ntotal)
        want = int((k + extra) * slack) + (4 if live.dead else 0)
        if flt is not None and flt.selective:
            want = max(want, 4 * k + 16)
        fetch, widen = min(live.ntotal, max(want, live.rescore_factor * k)), 1
        while True:
            scores, vids = live.search(query[None], fetch, widen)
            if live.rescore_factor:
                scores, vids = self._rerank(query, vids[0])
            else:
                scores, vids = scores[0], vids[0]
            keep = vids >= 0
            keep[keep] = _first_seen(vids[keep])  # HNSW may hold a replayed vid twice
            rows = self.table.by_vids(vids[keep].tolist(), flt)
            hits = [Hit(rows[int(v)], float(s), int(v)) for v, s in zip(vids[keep], scores[keep], strict=True)
                    if int(v) in rows]
            if len(hits) >= k or fetch >= min(live.ntotal, _MAX_FETCH):
                return hits[:k]
            fetch, widen = min(live.ntotal, fetch * 4, _MAX_FETCH), widen * 2

    def _rerank(self, query: np.ndarray, vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for a quantised index's candidates, from the stored vectors, best first."""
        vids = vids[vids >= 0]
        stored = self.table.vectors_by_vid(vids.tolist())
        keep = np.array([v for v in vids.tolist() if v in stored], dtype=np.int64)
        if not len(keep):
            return np.zeros(0, dtype=np.float32), keep
        scores = self._scores(np.stack([stored[int(v)] for v in keep]), query)
        order = np.argsort(-scores, kind="stable")
        return scores[order].astype(np.float32), keep[order]

    # --- the derived index -----------------------------------------------------------------------
    def require_index(self) -> LiveIndex:
        live = self._index
        if live is None:
            live = self.open_index()
        if live is None:
            raise StoreError(self.name, "the catalogue is empty: nothing to search yet")
        return live

    @_guarded
    def open_index(self) -> LiveIndex | None:
        """Load the saved index and catch it up, or rebuild it from the store when it is missing,
        damaged or of another kind than the catalogue's size calls for. None for an empty store."""
        with self._index_lock:
            if self._index is not None:
                return self._index
            live = self._load_saved()
            if live is not None:
                self._catch_up(live)
            elif self.count():
                live = self.rebuild(save=False)
                try:
                    self.save(live)
                    self.calibrate(live)
                except StoreError as exc:  # a full disk, say: serve from memory; the next start (or build) saves it
                    logger.warning("%s: index rebuilt in memory but not saved: %s", self.name, exc.message)
            self._index = live
            return live

    def _load_saved(self) -> LiveIndex | None:
        if not (self._own / INDEX_JSON).is_file():
            return None
        try:
            live = LiveIndex.load(self._own)
        except Exception as exc:  # FAISS raises RuntimeError on a torn file; JSON ValueError
            logger.warning("%s: saved index unreadable (%s): rebuilding it from the store", self.name, exc)
            return None
        expected = self.wanted_kind(self.count())
        if live.info.head != self._head or live.info.metric != self.settings.metric or live.kind != expected:
            logger.info("%s: saved %s index (head %s) does not fit (%s, head %s): rebuilding", self.name,
                        live.kind, live.info.head, expected, self._head)
            return None
        if live.info.generation > self.generation():
            logger.warning("%s: saved index is newer than the store (restored backup?): rebuilding", self.name)
            return None
        return live

    def wanted_kind(self, n: int) -> IndexType:
        kind = choose_index_type(n, self.settings) if self._index_type == IndexType.AUTO else self._index_type
        # a forced quantised index needs enough vectors to train (FAISS aborts the process on too few)
        if kind == IndexType.IVFPQ and n < _IVFPQ_MIN_TRAIN:
            kind = IndexType.IVF
        if kind in (IndexType.IVF, IndexType.IVFSQ) and n < _IVF_MIN_TRAIN:
            kind = IndexType.FLAT
        return kind

    def _catch_up(self, live: LiveIndex) -> bool:
        if self.table.generation() == live.generation:  # the watcher's usual case: one tiny read, no scans
            return False
        changes = self.table.changes_since(live.generation)
        if changes.generation == live.generation:
            return False
        live.apply(changes.generation, changes.added_keys, changes.added_vectors, changes.removed_keys)
        if changes.added_keys.size or changes.removed_keys.size:
            logger.info("%s: index caught up to generation %d (+%d, -%d)", self.name, changes.generation,
                        len(changes.added_keys), len(changes.removed_keys))
        return True

    @_guarded
    def refresh(self) -> bool:
        """Apply writes committed since the index's generation (ours or another process's)."""
        self.db.refresh()  # a store opened read-only (a full disk) becomes writable once there is room
        with self._index_lock:
            live = self._index
            if live is None:
                return False
            changed = self._catch_up(live)
        if changed and live.needs_compaction():
            threading.Thread(target=self._compact, name=f"compact-{self.name}", daemon=True).start()
        return changed

    def _compact(self) -> None:
        try:
            fresh = self.rebuild(save=True)
        except Exception:
            logger.exception("%s: background index compaction failed", self.name)
            return
        with self._index_lock:
            self._catch_up(fresh)
            self._index = fresh
        logger.info("%s: index compacted (%d tombstones dropped)", self.name, fresh.dead)

    def rebuild(self, *, save: bool, tune_it: bool = True, progress: object = None) -> LiveIndex:
        """A new index over one consistent snapshot of the store, tuned and saved; not installed."""
        with self.db.snapshot() as conn:
            gen = self.table.generation(conn)
            n = int(conn.execute("SELECT count(*) FROM products").fetchone()[0])
            if not n:
                raise StoreError(self.name, "the catalogue is empty: nothing to index")
            kind = self.wanted_kind(n)
            sample_vids, sample = self.table.sample_vectors(conn, train_size(kind, n) if needs_training(kind)
                                                            else _TUNE_QUERIES, self.settings.seed)
            live = build(lambda: self.table.iter_vectors(conn), sample, n, sample.shape[1], kind,
                         self.settings.metric, self.settings, generation=gen, head=self._head)
            tune_queries = min(_TUNE_QUERIES, n // 10, len(sample))
            if tune_it and kind != IndexType.FLAT and tune_queries >= 20:
                pick = np.random.default_rng(self.settings.seed).choice(len(sample), tune_queries, replace=False)
                queries, own = sample[pick], sample_vids[pick]
                truth = exact_top(self.table.iter_vectors(conn), queries, own)
                tune(live, queries, truth, own, self.settings,
                     rerank=(lambda q, v: self._rerank(q, v)) if live.rescore_factor else None)
        if save:
            self.save(live)
            self.calibrate(live)
        logger.info("%s: %s index over %d products built at generation %d", self.name, kind, n, gen)
        return live

    def save(self, live: LiveIndex) -> None:
        """Write ``live``'s files, checked against what was written; a failed write is a typed error (a full
        disk: StorageFullError) and leaves the previous index.json and its file as they were."""
        try:
            live.save(self._own)
        except OSError as exc:
            raise self._write_error(exc, "index") from None
        except ValueError as exc:
            raise StoreError(self.name, f"the index file did not read back as written ({exc}); check the disk "
                                        "holding it and run again") from None

    def _write_error(self, exc: OSError, what: str) -> StoreError:
        if disk_full(exc) is not None:
            return StorageFullError(self.name, f"the {what} could not be written: the disk holding {self.folder} "
                                               "is full; free some space and run again")
        return StoreError(self.name, f"the {what} could not be written to {self.folder} ({exc})")

    # --- calibration (core.calibration) ----------------------------------------------------------
    @property
    def calibration(self) -> Calibration | None:
        """The saved calibration, re-read when ``calibration.json`` is replaced (by another process too)."""
        from core.calibration import load_calibration

        signature = self._calibration_signature()
        seen, cached = self._calibration
        if signature != seen:
            cached = load_calibration(self._own) if signature is not None else None
            self._calibration = (signature, cached)
        return cached

    def _calibration_signature(self) -> object:
        try:
            st = (self._own / CALIBRATION_JSON).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def ensure_calibration(self) -> Calibration | None:
        """Refit the calibration when it is stale (``core.calibration.ensure_calibration``); None for an empty
        store."""
        return ensure_calibration(self)

    def calibrate(self, live: LiveIndex) -> Calibration | None:
        """Fit and save the calibration (``core.calibration.fit_calibration``) from a sample of the catalogue,
        with ``live``'s nearest neighbours. None when the catalogue is too small to have both relevant and
        irrelevant pairs."""
        with self.db.snapshot() as conn:
            vids, vectors = self.table.sample_vectors(conn, _CALIBRATION_SAMPLE, self.settings.seed)
        rows = self.table.by_vids(vids.tolist())
        keep = np.array([int(v) in rows for v in vids], dtype=bool)
        vids, vectors = vids[keep], vectors[keep]

        def neighbours(queries: np.ndarray, own: np.ndarray) -> np.ndarray:
            scores, found = live.search(queries, 2)
            if found.shape[1] < 2:  # a one-product index answers one column: there is no other product
                return np.full(len(queries), np.nan)
            other = np.where(found[:, 0] == own, scores[:, 1], scores[:, 0])
            return np.asarray(np.where((found >= 0).all(axis=1), other, np.nan))

        sample = Sample(products=[rows[int(v)] for v in vids], vectors=vectors, keys=vids)
        return fit_calibration(self, live, sample, neighbours, self._save_calibration)

    def _save_calibration(self, cal: Calibration) -> None:
        try:
            save_calibration(self._own, cal)
        except OSError as exc:
            self._calibration = (self._calibration_signature(), cal)  # served from memory meanwhile
            raise self._write_error(exc, "calibration") from None

    def install_index(self, live: ServedIndex) -> None:
        """Serve ``live`` (caught up first)."""
        assert isinstance(live, LiveIndex), "an index of another store"
        with self._index_lock:
            self._catch_up(live)
            self._index = live

    def save_index(self) -> None:
        with self._index_lock:
            if self._index is not None:
                self.save(self._index)

    def scan_vectors(self, batch: int = 50_000, *, clip: bool = False) -> Iterator[tuple[list[str], Embeddings]]:
        """Every product's (ids, vectors), ``batch`` at a time, over one consistent snapshot."""
        with self.db.snapshot() as conn:
            yield from self.table.iter_ids(conn, batch, column="clip" if clip else None)

    def sample_vectors(self, n: int, seed: int) -> tuple[list[str], Embeddings]:
        with self.db.snapshot() as conn:
            vids, vectors = self.table.sample_vectors(conn, n, seed)
            ids = self.table.ids_of(conn, vids.tolist())
        return [ids[int(v)] for v in vids], vectors

    def close(self) -> None:
        self.db.close()


def _pinned(folder: Path) -> tuple[Path, int | None]:
    """A path that names ``folder``'s directory itself, whatever is renamed over its name later (Linux:
    /proc/self/fd/<a descriptor of it>, with that descriptor, to keep open while the path is used);
    elsewhere the folder itself."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return folder, None
    pinned = Path(f"/proc/self/fd/{fd}")
    if not pinned.is_dir():
        os.close(fd)
        return folder, None
    return pinned, fd


def _first_seen(vids: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each vid (order kept)."""
    _, first = np.unique(vids, return_index=True)
    mask = np.zeros(len(vids), dtype=bool)
    mask[first] = True
    return mask
