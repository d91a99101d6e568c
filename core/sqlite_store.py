"""The products table of the embedded store: metadata, vectors and the change log, in SQLite.

Each product row has a ``vid`` (the key its vector has in the derived index). A vector change
gives the product a new vid and records the old one in ``dead``; ``gen`` on both tables says in
which store generation that vector was added or removed (a metadata-only edit leaves it alone),
so an index tagged with a generation can replay exactly the rest.

Vectors are stored as float16 (``half`` = 1): half the bytes of float32, and the same top-10 for
999 of 1,000 results (measured on 1M clustered 512-d vectors). A database written by an earlier
release holds float32 rows (``half`` = 0); :meth:`ProductTable.upgrade` rewrites them on open, and
every read decodes either kind.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.lexical import TABLE as LEXICAL
from core.lexical import search_sql
from core.sqlite_db import Database, now, stage_ids
from core.store import (FILTER_COLUMN, Changes, Filter, Product, ProductVector, Source, StoreStats, column_kinds,
                        next_stamp, outlasting_delete, product_digest, row_digest)
from core.types import Embeddings

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('generation', '0'), ('schema', '2');
CREATE TABLE IF NOT EXISTS products(
    vid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    category TEXT NOT NULL DEFAULT '',
    images TEXT NOT NULL DEFAULT '[]',
    preview_image TEXT NOT NULL DEFAULT '',
    preview_cache TEXT,
    extra TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL,
    updated_at REAL NOT NULL,
    gen INTEGER NOT NULL,
    digest TEXT NOT NULL DEFAULT '',
    clip BLOB NOT NULL,
    vector BLOB,
    half INTEGER NOT NULL DEFAULT 0,
    view_caches TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS products_gen ON products(gen);
CREATE INDEX IF NOT EXISTS products_category ON products(category);
CREATE INDEX IF NOT EXISTS products_source ON products(source);
CREATE TABLE IF NOT EXISTS dead(vid INTEGER PRIMARY KEY, gen INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS dead_gen ON dead(gen);
CREATE TABLE IF NOT EXISTS columns(name TEXT PRIMARY KEY, kind TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_deletes(id TEXT PRIMARY KEY, row TEXT NOT NULL, at REAL NOT NULL);
"""

_PRODUCT_COLS = "id, title, category, images, preview_image, preview_cache, extra, source, updated_at, view_caches"
_VECTOR = "COALESCE(vector, clip)"
SCHEMA_VERSION = 2  # 2: float16 vectors
MAX_SQL_VARS = 30_000  # below SQLite's default limit of 32,766 bound parameters per statement
_UPGRADE_BATCH = 20_000  # rows rewritten per transaction by the float16 upgrade
_VACUUM_MAX_BYTES = 2 << 30  # after the upgrade, smaller files are compacted at once (seconds)

logger = logging.getLogger(__name__)


def blob(vector: np.ndarray) -> bytes:
    """A vector as stored: float16 (unit vectors lose nothing a ranking notices; see the module doc)."""
    return np.ascontiguousarray(vector, dtype=np.float16).tobytes()


def _unit(x: np.ndarray) -> np.ndarray:
    """Rounding to float16 moves a unit vector's length by about 1e-4: restore it, so inner products stay
    cosines (a near-tie keeps the order a cosine engine such as Milvus gives it)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def unblob_one(data: bytes, half: int) -> np.ndarray:
    if half:
        return _unit(np.frombuffer(data, dtype=np.float16).astype(np.float32))
    return np.frombuffer(data, dtype=np.float32)


def unblob(rows: Sequence[tuple[bytes, int]], dim: int | None = None) -> Embeddings:
    """float32 vectors from stored (blob, half) pairs: float16 rows, or float32 ones not yet upgraded."""
    if not rows:
        return np.zeros((0, dim or 0), dtype=np.float32)
    if all(half for _, half in rows):  # the usual case: one buffer, one conversion
        return _unit(np.frombuffer(b"".join(b for b, _ in rows), dtype=np.float16).reshape(len(rows), -1)
                     .astype(np.float32))
    return np.stack([unblob_one(b, half) for b, half in rows]).astype(np.float32, copy=False)


def _json_path(column: str) -> str:
    """A literal JSON path for an extra column. Only names matching FILTER_COLUMN get here, so it
    can sit in SQL text (which expression indexes need); nothing a user types is spliced unchecked."""
    if not FILTER_COLUMN.fullmatch(column):
        raise ValueError(f"column {column!r} cannot be filtered on")
    return "'$.\"" + column + "\"'"


def _extra_expr(column: str, kind: str) -> str:
    expr = f"json_extract(extra, {_json_path(column)})"
    return f"CAST({expr} AS REAL)" if kind == "number" else expr


def _row_to_product(row: sqlite3.Row | tuple[Any, ...]) -> Product:
    pid, title, category, images, preview, preview_cache, extra, source, updated, views = row[:10]
    return Product(id=pid, title=title, category=category or "", images=tuple(json.loads(images)),
                   preview_image=preview or "", preview_cache=preview_cache, extra=json.loads(extra),
                   source=Source(source), updated_at=updated, view_caches=tuple(json.loads(views)))


def _plain_number(text: str) -> bool:
    """True for text the numeric equality filter reads as a number (``float``: no thousands separators)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _chunks(items: Sequence[Any], size: int = MAX_SQL_VARS) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _view_caches(conn: sqlite3.Connection, rows: list[tuple[int, list[str]]]) -> list[tuple[str, int]]:
    """(view caches as JSON, vid) for the rows with a cached image, from the pipeline's image records."""
    refs = list({r for _, images in rows for r in images})
    cached: dict[str, str] = {}
    for chunk in _chunks(refs):
        cached.update(conn.execute(f"SELECT ref, cache FROM images WHERE status='ok' AND cache IS NOT NULL AND "
                                   f"ref IN ({','.join('?' * len(chunk))})", list(chunk)).fetchall())
    return [(json.dumps([cached.get(r, "") for r in images]), vid) for vid, images in rows
            if any(r in cached for r in images)]


class ProductTable:
    """SQL over the products table; writes run inside a transaction the caller holds."""

    def __init__(self, db: Database, max_columns: int = 64) -> None:
        self.db = db
        self.max_columns = max_columns
        self._told = False

    # --- writes (called with the write connection, inside one transaction) ---------------------
    @staticmethod
    def bump(conn: sqlite3.Connection) -> int:
        gen = int(conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0]) + 1
        conn.execute("UPDATE meta SET value=? WHERE key='generation'", (str(gen),))
        return gen

    def upsert(self, conn: sqlite3.Connection, gen: int, items: Sequence[ProductVector], *,
               keep_api: bool, keep_time: bool = False) -> int:
        """Write ``items``; returns how many rows changed. Unchanged digests are skipped, and so are what
        ``CatalogueStore.upsert`` keeps (API products and API deletes under ``keep_api``, a superseded
        ``if_version``): the checks read the rows inside this transaction, so no write slips in between.
        ``keep_time`` keeps each product's own ``updated_at`` (a copy of another store), else it is now (and
        later than the version it replaces)."""
        ids = [it.product.id for it in items]
        current: dict[str, tuple[int, str, str, float, bool]] = {}
        deleted: dict[str, str] = {}
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            for vid, pid, source, digest, updated, views in conn.execute(
                    f"SELECT vid, id, source, digest, updated_at, view_caches <> '[]' FROM products "
                    f"WHERE id IN ({marks})", list(chunk)):
                current[pid] = (vid, source, digest, updated, bool(views))
            deleted.update(conn.execute(f"SELECT id, row FROM api_deletes WHERE id IN ({marks})", list(chunk)))
        changed = 0
        self._note_columns(conn, items)
        for it in items:
            old = current.get(it.product.id)
            if it.if_version is not None and (old is None or old[3] != it.if_version):
                continue  # edited or deleted since it was read: the newer write stands
            if old is not None and keep_api and old[1] == Source.API.value:
                continue
            if it.product.id in deleted and self._kept_deleted(conn, it, deleted[it.product.id], keep_api):
                continue
            digest = it.digest or product_digest(it)
            if old is not None and old[2] == digest and old[1] == it.product.source.value and \
                    (old[4] or not it.product.view_caches):  # a row that never had them learns them
                continue
            changed += 1
            when = it.product.updated_at if keep_time and it.product.updated_at else \
                next_stamp(old[3] if old else None)
            self._write_row(conn, gen, when, it, old[0] if old else None, digest)
        return changed

    @staticmethod
    def _kept_deleted(conn: sqlite3.Connection, it: ProductVector, row: str, keep_api: bool) -> bool:
        """True when an API delete keeps ``it`` out (``outlasting_delete``); else its tombstone goes."""
        kept = outlasting_delete(row, it, keep_api)
        if kept is None:
            conn.execute("DELETE FROM api_deletes WHERE id=?", (it.product.id,))
        elif kept != row:
            conn.execute("UPDATE api_deletes SET row=? WHERE id=?", (kept, it.product.id))
        return kept is not None

    @staticmethod
    def _write_row(conn: sqlite3.Connection, gen: int, stamp: float, it: ProductVector, old_vid: int | None,
                   digest: str) -> None:
        p = it.product
        meta = (p.title, p.category, json.dumps(list(p.images)), p.preview_image, p.preview_cache,
                json.dumps(dict(p.extra), ensure_ascii=False), p.source.value, stamp, gen, digest,
                json.dumps(list(p.view_caches)))
        clip, vector = blob(it.clip), None if it.vector is None else blob(it.vector)
        if old_vid is not None:
            same = conn.execute("SELECT clip = ? AND vector IS ? FROM products WHERE vid=?",
                                (clip, vector, old_vid)).fetchone()[0]
            if same:  # metadata only: the vector, its vid and ``gen`` (when it was indexed) stay
                conn.execute("UPDATE products SET title=?, category=?, images=?, preview_image=?, preview_cache=?,"
                             " extra=?, source=?, updated_at=?, digest=?, view_caches=? WHERE vid=?",
                             (*meta[:8], *meta[9:], old_vid))
                return
            conn.execute("DELETE FROM products WHERE vid=?", (old_vid,))
            conn.execute("INSERT OR REPLACE INTO dead VALUES (?, ?, ?)", (old_vid, gen, stamp))
        conn.execute("INSERT INTO products (id, title, category, images, preview_image, preview_cache, extra,"
                     " source, updated_at, gen, digest, view_caches, clip, vector, half)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
                     (p.id, *meta, clip, vector))

    def _note_columns(self, conn: sqlite3.Connection, items: Sequence[ProductVector]) -> None:
        """Track each filterable extra column and whether all its values are numbers; index it. Past
        ``max_columns`` a new column stays plain metadata (an index each would slow every write)."""
        kinds = column_kinds(items)
        if not kinds:
            return
        known = dict(conn.execute("SELECT name, kind FROM columns").fetchall())
        refused = []
        for key, kind in kinds.items():
            old = known.get(key)
            if old == kind or old == "text":
                continue
            if old is None and len(known) >= self.max_columns:
                refused.append(key)
                continue
            known[key] = kind
            conn.execute("INSERT OR REPLACE INTO columns VALUES (?, ?)", (key, kind))
            name = "x_" + "".join(c if c.isalnum() else "_" for c in key) + ("_n" if kind == "number" else "_t")
            conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON products({_extra_expr(key, kind)})')
        if refused:  # said once per process (an API client sending ever new keys would flood the log)
            logger.log(logging.DEBUG if self._told else logging.WARNING, "%s: new extra columns (%s) kept but not "
                       "filterable: %d columns already are (IMAGESEARCH_MAX_FILTER_COLUMNS)", self.db.name,
                       ", ".join(refused[:5]), self.max_columns)
            self._told = True

    @staticmethod
    def delete(conn: sqlite3.Connection, gen: int, ids: Sequence[str], *, remember: bool = True) -> int:
        """Remove ``ids``; with ``remember`` each removed product leaves a tombstone with its CSV row's digest
        ('' for an API product: see ``CatalogueStore.delete``)."""
        removed, stamp = 0, now()
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT vid, {_PRODUCT_COLS} FROM products WHERE id IN ({marks})",
                                list(chunk)).fetchall()
            conn.executemany("INSERT OR REPLACE INTO dead VALUES (?, ?, ?)", [(r[0], gen, stamp) for r in rows])
            if remember:
                products = [_row_to_product(r[1:]) for r in rows]
                conn.executemany("INSERT OR REPLACE INTO api_deletes VALUES (?, ?, ?)", [
                    (p.id, row_digest(p) if p.source == Source.CSV else "", stamp) for p in products])
            conn.execute(f"DELETE FROM products WHERE id IN ({marks})", list(chunk))
            removed += len(rows)
        return removed

    def lexical(self, match: str, k: int, flt: Filter | None) -> list[tuple[int, Product, float]]:
        """(vid, product, BM25 relevance) of the products whose words match the FTS5 expression ``match`` and
        that ``flt`` admits, best first (``core.lexical``)."""
        if flt is not None and flt.empty:
            return []
        where, params = self.where(flt)
        sql = search_sql(f"products.vid, {_PRODUCT_COLS}", where)
        rows = self.db.reader().execute(sql, [match, k] if not where else [match, *params, k])
        return [(r[0], _row_to_product(r[1:11]), float(r[11])) for r in rows]

    def word_vids(self, match: str, flt: Filter | None, limit: int) -> np.ndarray | None:
        """vids of the products whose words match the FTS5 expression ``match`` and that ``flt`` admits, unranked
        (no BM25: reading a match is cheap, ranking it is not), or None when more than ``limit`` do."""
        if flt is not None and flt.empty:
            return np.zeros(0, dtype=np.int64)
        where, params = self.where(flt)
        sql = (f"SELECT rowid FROM {LEXICAL} WHERE {LEXICAL} MATCH ? LIMIT ?" if not where else
               f"SELECT products.vid FROM {LEXICAL} JOIN products ON products.vid = {LEXICAL}.rowid "
               f"WHERE {LEXICAL} MATCH ? AND {where} LIMIT ?")
        rows = self.db.reader().execute(sql, [match, *params, limit + 1])
        vids = np.fromiter((r[0] for r in rows), dtype=np.int64)
        return None if len(vids) > limit else vids

    def identified(self, value: str, columns: Sequence[str], flt: Filter | None) -> list[tuple[int, Product]]:
        """(vid, product) of the product whose id is ``value``, then those whose identifier ``columns`` hold it
        exactly (each an indexed lookup: the id's unique index, the columns' expression indexes)."""
        flt = flt or Filter()
        if flt.empty:
            return []
        found: dict[int, Product] = {}
        where, params = self.where(flt)
        sql = f"SELECT vid, {_PRODUCT_COLS} FROM products WHERE id = ?" + (f" AND {where}" if where else "")
        found.update((r[0], _row_to_product(r[1:])) for r in self.db.reader().execute(sql, [value, *params]))
        kinds = self.columns()
        for column in columns:
            if column in flt.equals or (kinds.get(column) == "number" and not _plain_number(value)):
                continue
            where, params = self.where(replace(flt, equals={**flt.equals, column: value}))
            found.update((r[0], _row_to_product(r[1:])) for r in self.db.reader().execute(
                f"SELECT vid, {_PRODUCT_COLS} FROM products WHERE {where} LIMIT 10", params))
        return list(found.items())

    def deleted_ids(self, ids: Sequence[str]) -> list[str]:
        found: set[str] = set()
        conn = self.db.reader()
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            found.update(r[0] for r in conn.execute(f"SELECT id FROM api_deletes WHERE id IN ({marks})", list(chunk)))
        return [i for i in ids if i in found]

    @staticmethod
    def set_vectors(conn: sqlite3.Connection, gen: int, vids: np.ndarray, clips: Embeddings,
                    vectors: Embeddings | None) -> None:
        """Replace the vectors of existing rows in place (a new head re-projects every row; None: no head)."""
        conn.executemany("UPDATE products SET clip=?, vector=?, half=1, gen=? WHERE vid=?",
                         [(blob(c), None if vectors is None else blob(vectors[i]), gen, int(v))
                          for i, (v, c) in enumerate(zip(vids, clips, strict=True))])

    def upgrade(self, name: str) -> int:
        """Rewrite float32 vectors of a database from an earlier release as float16, a batch per
        transaction (a kill resumes where it stopped; readers decode both meanwhile), then compact a
        small file. Returns how many rows were rewritten."""
        conn = self.db.reader()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(products)")}
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if "half" in columns and row is not None and int(row[0]) >= SCHEMA_VERSION:
            return 0
        with self.db.write() as w:
            if "half" not in {r[1] for r in w.execute("PRAGMA table_info(products)")}:
                w.execute("ALTER TABLE products ADD COLUMN half INTEGER NOT NULL DEFAULT 0")
        done, last = 0, -1
        while True:
            with self.db.write() as w:
                rows = w.execute("SELECT vid, clip, vector FROM products WHERE vid > ? AND half = 0 ORDER BY vid "
                                 "LIMIT ?", (last, _UPGRADE_BATCH)).fetchall()
                if not rows:
                    w.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    break
                w.executemany("UPDATE products SET clip=?, vector=?, half=1 WHERE vid=?", [
                    (blob(unblob_one(clip, 0)), None if vec is None else blob(unblob_one(vec, 0)), vid)
                    for vid, clip, vec in rows])
            last, done = rows[-1][0], done + len(rows)
            if done % 500_000 < _UPGRADE_BATCH:
                logger.info("%s: %d vectors rewritten as float16 so far", name, done)
        if done:
            self._compact_after_upgrade(name, done)
        return done

    def add_view_caches(self, name: str) -> int:
        """Give a database of an earlier release its products' view caches: the column, filled from the
        pipeline's image records in the same file, a batch per transaction (a kill resumes where it stopped).
        Returns how many products got theirs."""
        conn = self.db.reader()
        if "view_caches" in {r[1] for r in conn.execute("PRAGMA table_info(products)")} and \
                conn.execute("SELECT 1 FROM meta WHERE key='view_caches_from'").fetchone() is None:
            return 0
        with self.db.write() as w:
            if "view_caches" not in {r[1] for r in w.execute("PRAGMA table_info(products)")}:
                w.execute("ALTER TABLE products ADD COLUMN view_caches TEXT NOT NULL DEFAULT '[]'")
                w.execute("INSERT OR REPLACE INTO meta VALUES ('view_caches_from', '-1')")
            last = int(w.execute("SELECT value FROM meta WHERE key='view_caches_from'").fetchone()[0])
            records = w.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='images'").fetchone()
        done = 0
        while True:
            with self.db.write() as w:
                rows = w.execute("SELECT vid, images FROM products WHERE vid > ? ORDER BY vid LIMIT ?",
                                 (last, _UPGRADE_BATCH // 4)).fetchall()
                if not rows:
                    w.execute("DELETE FROM meta WHERE key='view_caches_from'")
                    break
                found = _view_caches(w, [(vid, json.loads(images)) for vid, images in rows]) if records else []
                w.executemany("UPDATE products SET view_caches=? WHERE vid=?", found)
                last, done = rows[-1][0], done + len(found)
                w.execute("UPDATE meta SET value=? WHERE key='view_caches_from'", (str(last),))
        if done:
            logger.info("%s: %d products given their cached views' names", name, done)
        return done

    def _compact_after_upgrade(self, name: str, done: int) -> None:
        size = self.db.path.stat().st_size
        if size > _VACUUM_MAX_BYTES:  # VACUUM copies the whole file: too long (and too much disk) to do unasked
            logger.warning("%s: %d vectors rewritten as float16; %s keeps its size (%.1f GB) and reuses the freed "
                           "pages for new rows (sqlite3 %s VACUUM, while nothing else runs, returns them to the disk)",
                           name, done, self.db.path.name, size / 1e9, self.db.path)
            return
        with self.db.write_connection() as conn:
            conn.execute("VACUUM")  # in WAL mode the copy lands in the log; the checkpoint shrinks the file
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        logger.info("%s: %d vectors rewritten as float16; %s compacted from %.1f to %.1f MB", name, done,
                    self.db.path.name, size / 1e6, self.db.path.stat().st_size / 1e6)

    # --- reads ---------------------------------------------------------------------------------
    def generation(self, conn: sqlite3.Connection | None = None) -> int:
        conn = conn or self.db.reader()
        return int(conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def head(self, conn: sqlite3.Connection | None = None) -> str | None:
        """The sha256 of the head the stored indexed vectors were projected through (None: no head)."""
        row = (conn or self.db.reader()).execute("SELECT value FROM meta WHERE key='head'").fetchone()
        return str(row[0]) if row is not None and row[0] else None

    @staticmethod
    def set_head(conn: sqlite3.Connection, sha: str | None) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (sha or "",))

    def get(self, ids: Sequence[str]) -> list[Product]:
        found: dict[str, Product] = {}
        conn = self.db.reader()
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {_PRODUCT_COLS} FROM products WHERE id IN ({marks})", list(chunk)):
                found[row[0]] = _row_to_product(row)
        return [found[i] for i in ids if i in found]

    def by_vids(self, vids: Sequence[int], flt: Filter | None = None) -> dict[int, Product]:
        """Live products among ``vids`` (a dead or filtered-out vid is simply absent)."""
        if not len(vids):
            return {}
        where, params = self.where(flt)
        marks = ",".join("?" * len(vids))
        sql = f"SELECT vid, {_PRODUCT_COLS} FROM products WHERE vid IN ({marks})" + (f" AND {where}" if where else "")
        return {row[0]: _row_to_product(row[1:]) for row in self.db.reader().execute(sql, [*map(int, vids), *params])}

    def vectors(self, ids: Sequence[str], *, clip: bool = False) -> Embeddings:
        col = "clip" if clip else _VECTOR
        found: dict[str, tuple[bytes, int]] = {}
        conn = self.db.reader()
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for pid, data, half in conn.execute(f"SELECT id, {col}, half FROM products WHERE id IN ({marks})",
                                                list(chunk)):
                found[pid] = (data, half)
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return unblob([found[i] for i in ids])

    def vectors_by_vid(self, vids: Sequence[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        conn = self.db.reader()
        for chunk in _chunks([int(v) for v in vids]):
            marks = ",".join("?" * len(chunk))
            for vid, b, half in conn.execute(f"SELECT vid, {_VECTOR}, half FROM products WHERE vid IN ({marks})",
                                             list(chunk)):
                out[vid] = unblob_one(b, half)
        return out

    def dims(self, conn: sqlite3.Connection | None = None) -> tuple[int, int] | None:
        """(CLIP vector width, indexed vector width) from one stored row; None for an empty store."""
        row = (conn or self.db.reader()).execute(
            "SELECT length(clip), length(COALESCE(vector, clip)), half FROM products LIMIT 1").fetchone()
        if row is None:
            return None
        width = 2 if row[2] else 4
        return int(row[0]) // width, int(row[1]) // width

    def columns(self, conn: sqlite3.Connection | None = None) -> dict[str, str]:
        return dict((conn or self.db.reader()).execute("SELECT name, kind FROM columns ORDER BY name").fetchall())

    def where(self, flt: Filter | None) -> tuple[str, list[Any]]:
        """SQL condition and parameters for a filter (values are always bound, never spliced)."""
        if flt is None:
            return "", []
        conds: list[str] = []
        params: list[Any] = []
        if flt.category is not None:
            conds.append("category = ?")
            params.append(flt.category)
        known = self.columns() if (flt.equals or flt.ranges) else {}
        for column, value in flt.equals.items():
            conds.append(f"{_extra_expr(column, 'text')} = ?" if known.get(column) != "number"
                         else f"{_extra_expr(column, 'number')} = ?")
            params.append(value if known.get(column) != "number" else float(value))
        for column, (lo, hi) in flt.ranges.items():
            expr = _extra_expr(column, "number")
            conds.append(f"{_extra_expr(column, 'text')} <> ''")
            if lo is not None:
                conds.append(f"{expr} >= ?")
                params.append(lo)
            if hi is not None:
                conds.append(f"{expr} <= ?")
                params.append(hi)
        if flt.exclude_ids:
            conds.append(f"id NOT IN ({','.join('?' * len(flt.exclude_ids))})")
            params.extend(flt.exclude_ids)
        return " AND ".join(conds), params

    def matching(self, flt: Filter, limit: int) -> np.ndarray | None:
        """vids of every product the filter admits, or None when more than ``limit`` do. Only vids are
        read: an indexed filter is answered from its covering index, without touching the rows."""
        where, params = self.where(flt)
        rows = self.db.reader().execute(f"SELECT vid FROM products WHERE {where} LIMIT ?", [*params, limit + 1])
        vids = np.fromiter((r[0] for r in rows), dtype=np.int64)
        return None if len(vids) > limit else vids

    def changes_since(self, generation: int, conn: sqlite3.Connection | None = None) -> Changes:
        conn = conn or self.db.reader()
        gen = self.generation(conn)
        added = conn.execute(f"SELECT vid, {_VECTOR}, half FROM products WHERE gen > ?", (generation,)).fetchall()
        removed = [v for (v,) in conn.execute("SELECT vid FROM dead WHERE gen > ?", (generation,))]
        return Changes(generation=gen, added_keys=np.array([r[0] for r in added], dtype=np.int64),
                       added_vectors=unblob([(r[1], r[2]) for r in added]),
                       removed_keys=np.array(removed, dtype=np.int64))

    def iter_vectors(self, conn: sqlite3.Connection, batch: int = 50_000,
                     column: str = _VECTOR) -> Iterator[tuple[np.ndarray, Embeddings]]:
        """Every (vid, vector) in vid order, ``batch`` rows at a time (bounded memory)."""
        last = -1
        while True:
            rows = conn.execute(f"SELECT vid, {column}, half FROM products WHERE vid > ? ORDER BY vid LIMIT ?",
                                (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield np.array([r[0] for r in rows], dtype=np.int64), unblob([(r[1], r[2]) for r in rows])

    def iter_ids(self, conn: sqlite3.Connection, batch: int,
                 column: str | None = None) -> Iterator[tuple[list[str], Embeddings]]:
        """Every (id, vector) in vid order, ``batch`` rows at a time."""
        last = -1
        while True:
            rows = conn.execute(f"SELECT vid, id, {column or _VECTOR}, half FROM products WHERE vid > ? ORDER BY vid "
                                "LIMIT ?", (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [r[1] for r in rows], unblob([(r[2], r[3]) for r in rows])

    @staticmethod
    def ids_of(conn: sqlite3.Connection, vids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        for chunk in _chunks(list(vids)):
            marks = ",".join("?" * len(chunk))
            out.update(conn.execute(f"SELECT vid, id FROM products WHERE vid IN ({marks})", list(chunk)).fetchall())
        return out

    def sample_vectors(self, conn: sqlite3.Connection, n: int, seed: int) -> tuple[np.ndarray, Embeddings]:
        """A seeded random sample of up to ``n`` (vid, vector) rows."""
        vids = np.fromiter((v for (v,) in conn.execute("SELECT vid FROM products")), dtype=np.int64)
        if len(vids) > n:
            vids = np.sort(np.random.default_rng(seed).choice(vids, size=n, replace=False))
        out_vids, out_vecs = [], []
        for chunk in _chunks(vids.tolist()):
            marks = ",".join("?" * len(chunk))
            for vid, b, half in conn.execute(f"SELECT vid, {_VECTOR}, half FROM products WHERE vid IN ({marks})",
                                             chunk):
                out_vids.append(vid)
                out_vecs.append((b, half))
        return np.array(out_vids, dtype=np.int64), unblob(out_vecs)

    def stats(self) -> StoreStats:
        conn = self.db.reader()
        by_source = dict(conn.execute("SELECT source, count(*) FROM products GROUP BY source").fetchall())
        cats = dict(conn.execute("SELECT category, count(*) FROM products WHERE category <> '' "
                                 "GROUP BY category ORDER BY category").fetchall())
        return StoreStats(products=sum(by_source.values()), by_source=by_source, categories=cats,
                          columns=self.columns(conn), generation=self.generation(conn))

    def count(self) -> int:
        return int(self.db.reader().execute("SELECT count(*) FROM products").fetchone()[0])

    @staticmethod
    def missing(conn: sqlite3.Connection, keep: Iterator[str] | None, sources: Sequence[Source]) -> list[str]:
        """Ids of ``sources`` not in ``keep``; the set difference runs in SQLite (a temporary table), so no
        Python object per product is held. With ``Source.API`` the tombstones of ids not in ``keep`` go."""
        stage_ids(conn, keep or ())
        marks = ",".join("?" * len(sources))
        rows = conn.execute(f"SELECT id FROM products WHERE source IN ({marks}) AND id NOT IN "
                            "(SELECT id FROM keep_ids)", [s.value for s in sources]).fetchall()
        if Source.API in sources:
            conn.execute("DELETE FROM api_deletes WHERE id NOT IN (SELECT id FROM keep_ids)")
        conn.execute("DELETE FROM keep_ids")
        return [r[0] for r in rows]


def store_path(models_dir: Path) -> Path:
    return Path(models_dir) / "catalogue.db"
