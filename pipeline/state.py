"""The pipeline's working state, on the build machine: in the local store's catalogue file beside the products
(one file to back up and restore), or in ``models/<m>/build.db`` beside a store that keeps none (Milvus):

- ``csv_products``: the validated rows of products.csv (replaced whole by each validation run);
- ``images``: every image reference's download state (status, reason, cache file, the settings and
  the local file's size and mtime it was made under) - no marker file per image;
- ``views``: one CLIP vector per cached image and backbone, committed a batch at a time (float16, like the
  store's vectors; rows of an earlier release stay float32, ``half`` = 0, and decode as such).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.sqlite_db import Database, now
from core.sqlite_store import MAX_SQL_VARS, blob, unblob_one

if TYPE_CHECKING:
    from core.store import ModelStore

BUILD_DB = "build.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS csv_products(
    id TEXT PRIMARY KEY, row INTEGER NOT NULL, title TEXT NOT NULL, category TEXT NOT NULL,
    images TEXT NOT NULL, preview_image TEXT NOT NULL, extra TEXT NOT NULL, usable INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS csv_products_row ON csv_products(row);
CREATE TABLE IF NOT EXISTS images(
    ref TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT, detail TEXT, cache TEXT, width INTEGER,
    height INTEGER, bytes INTEGER, size INTEGER, mtime_ns INTEGER, settings TEXT, transient INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS images_cache ON images(cache);
CREATE INDEX IF NOT EXISTS images_status ON images(status);
CREATE TABLE IF NOT EXISTS views(cache TEXT NOT NULL, model_key TEXT NOT NULL, vector BLOB NOT NULL,
    half INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (cache, model_key));
CREATE TABLE IF NOT EXISTS state_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StagedProduct:
    id: str
    row: int
    title: str
    category: str
    images: list[str]
    preview_image: str
    extra: dict[str, Any]


@dataclass(frozen=True)
class ImageRecord:
    """One reference's outcome: ok with its cache entry, or failed with a reason."""

    ref: str
    status: str
    reason: str | None = None
    detail: str | None = None
    cache: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    size: int | None = None
    mtime_ns: int | None = None
    transient: bool = False


def _marks(n: int) -> str:
    return ",".join("?" * n)


class BuildState:
    def __init__(self, db: Database, *, owned: bool = False) -> None:
        self.db = db
        self._owned = owned  # closed with the state (else it is the store's, closed with the store)
        with db.write() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if "half" not in {row[1] for row in conn.execute("PRAGMA table_info(views)")}:  # an earlier release's
                conn.execute("ALTER TABLE views ADD COLUMN half INTEGER NOT NULL DEFAULT 0")

    @classmethod
    def of(cls, store: ModelStore) -> BuildState:
        """The build state kept beside ``store``: in the local store's own file, else in ``build.db`` in the
        model's folder (opened, and made, only here: a serving process never needs it)."""
        from core.local_store import LocalStore

        if isinstance(store, LocalStore):
            return cls(store.db)
        return cls(Database(store.folder / BUILD_DB, "", store.name), owned=True)

    @classmethod
    def kept(cls, store: ModelStore) -> BuildState | None:
        """The build state where this machine keeps one for ``store``; None on a machine that never built the
        model (an API replica of a Milvus catalogue keeps no database, and none is made for it)."""
        from core.local_store import LocalStore

        if not isinstance(store, LocalStore) and not (store.folder / BUILD_DB).is_file():
            return None
        return cls.of(store)

    def close(self) -> None:
        if self._owned:
            self.db.close()

    # --- staged CSV rows ----------------------------------------------------------------------------
    def replace_staged(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM csv_products")

    @staticmethod
    def previous_row(conn: sqlite3.Connection, pid: str) -> int | None:
        row = conn.execute("SELECT row FROM csv_products WHERE id=?", (pid,)).fetchone()
        return None if row is None else int(row[0])

    @staticmethod
    def stage(conn: sqlite3.Connection, products: Sequence[StagedProduct]) -> None:
        conn.executemany("INSERT OR REPLACE INTO csv_products VALUES (?,?,?,?,?,?,?,0)", [
            (p.id, p.row, p.title, p.category, json.dumps(p.images), p.preview_image,
             json.dumps(p.extra, ensure_ascii=False)) for p in products])

    def staged(self, batch: int = 2000) -> Iterator[list[StagedProduct]]:
        """The staged products in CSV order, ``batch`` at a time."""
        last = -1
        conn = self.db.reader()
        while True:
            rows = conn.execute("SELECT id, row, title, category, images, preview_image, extra FROM csv_products "
                                "WHERE row > ? ORDER BY row LIMIT ?", (last, batch)).fetchall()
            if not rows:
                return
            last = rows[-1][1]
            yield [StagedProduct(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6])) for r in rows]

    def mark_usable(self, ids: Sequence[str]) -> None:
        with self.db.write() as conn:
            conn.executemany("UPDATE csv_products SET usable=1 WHERE id=?", [(i,) for i in ids])

    def usable_ids(self) -> Iterator[str]:
        for (pid,) in self.db.reader().execute("SELECT id FROM csv_products WHERE usable=1"):
            yield pid

    def refs(self, batch: int = 10_000) -> Iterator[list[str]]:
        """Every distinct image reference of the staged products, ``batch`` at a time."""
        cursor = self.db.reader().execute(
            "SELECT value FROM csv_products, json_each(csv_products.images) UNION "
            "SELECT preview_image FROM csv_products WHERE preview_image <> ''")
        while rows := cursor.fetchmany(batch):
            yield [r[0] for r in rows]

    def first_rows(self, refs: Sequence[str]) -> dict[str, int]:
        """ref -> the first CSV row that names it, for a few refs (a report's examples): one scan of the
        staged rows, made only when something failed."""
        if not refs:
            return {}
        chunk = list(refs)[:MAX_SQL_VARS]
        rows = self.db.reader().execute(
            "SELECT ref, min(row) FROM (SELECT value AS ref, row FROM csv_products, json_each(csv_products.images) "
            "UNION ALL SELECT preview_image, row FROM csv_products) "
            f"WHERE ref IN ({_marks(len(chunk))}) GROUP BY ref", chunk).fetchall()
        return {ref: int(row) for ref, row in rows}

    # --- images -------------------------------------------------------------------------------------
    def images(self, refs: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cols = ("ref", "status", "reason", "detail", "cache", "width", "height", "bytes", "size", "mtime_ns",
                "settings", "transient")
        conn = self.db.reader()
        for start in range(0, len(refs), MAX_SQL_VARS):
            chunk = list(refs[start:start + MAX_SQL_VARS])
            for row in conn.execute(f"SELECT {', '.join(cols)} FROM images WHERE ref IN ({_marks(len(chunk))})", chunk):
                out[row[0]] = dict(zip(cols, row, strict=True))
        return out

    def record(self, records: Iterable[ImageRecord], settings_key: str) -> None:
        stamp = now()
        with self.db.write() as conn:
            conn.executemany("INSERT OR REPLACE INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", [
                (r.ref, r.status, r.reason, r.detail, r.cache, r.width, r.height, r.bytes, r.size, r.mtime_ns,
                 settings_key, int(r.transient), stamp) for r in records])

    def failed_refs(self) -> Iterator[str]:
        """The staged products' refs whose last download failed, in order."""
        cursor = self.db.reader().execute(
            "SELECT ref FROM images WHERE status='failed' AND ref IN (SELECT value FROM csv_products, "
            "json_each(csv_products.images) UNION SELECT preview_image FROM csv_products) ORDER BY ref")
        while rows := cursor.fetchmany(5000):
            yield from (r[0] for r in rows)

    # --- views --------------------------------------------------------------------------------------
    def views_todo(self, model_key: str, batch: int) -> Iterator[list[str]]:
        """Cache files of downloaded images that have no vector for ``model_key`` yet."""
        cursor = self.db.reader().execute(
            "SELECT DISTINCT cache FROM images WHERE status='ok' AND cache IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM views WHERE views.cache = images.cache AND views.model_key = ?)", (model_key,))
        while rows := cursor.fetchmany(batch):
            yield [r[0] for r in rows]

    def count_views_todo(self, model_key: str) -> int:
        """How many distinct cached images of the staged products (views and previews) have no vector for
        ``model_key`` yet: the embedding's total (one scan, once per build)."""
        row = self.db.reader().execute(
            "SELECT count(DISTINCT images.cache) FROM images JOIN (SELECT j.value AS ref FROM csv_products, "
            "json_each(csv_products.images) AS j UNION SELECT preview_image FROM csv_products) AS staged "
            "ON images.ref = staged.ref WHERE images.status='ok' AND images.cache IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM views WHERE views.cache = images.cache AND views.model_key = ?)", (model_key,)).fetchone()
        return int(row[0]) if row else 0

    def views_missing(self, refs: Sequence[str], model_key: str) -> list[str]:
        """The distinct cache files of ``refs`` (downloaded ones) that have no vector for ``model_key`` yet."""
        out: dict[str, None] = {}
        conn = self.db.reader()
        for start in range(0, len(refs), MAX_SQL_VARS - 1):
            chunk = list(refs[start:start + MAX_SQL_VARS - 1])
            for (cache,) in conn.execute(
                    "SELECT cache FROM images WHERE status='ok' AND cache IS NOT NULL "
                    f"AND ref IN ({_marks(len(chunk))}) AND NOT EXISTS (SELECT 1 FROM views "
                    "WHERE views.cache = images.cache AND views.model_key = ?)", [*chunk, model_key]):
                out[cache] = None
        return list(out)

    def save_views(self, model_key: str, caches: Sequence[str], vectors: np.ndarray) -> None:
        with self.db.write() as conn:
            conn.executemany("INSERT OR REPLACE INTO views VALUES (?,?,?,1)", [
                (c, model_key, blob(v)) for c, v in zip(caches, vectors, strict=True)])

    def view_vectors(self, refs: Sequence[str], model_key: str) -> dict[str, tuple[str, np.ndarray]]:
        """ref -> (cache file, vector) for the refs that downloaded and were embedded."""
        out: dict[str, tuple[str, np.ndarray]] = {}
        conn = self.db.reader()
        for start in range(0, len(refs), MAX_SQL_VARS):
            chunk = list(refs[start:start + MAX_SQL_VARS])
            for ref, cache, vector, half in conn.execute(
                    "SELECT images.ref, images.cache, views.vector, views.half FROM images JOIN views "
                    "ON views.cache = images.cache AND views.model_key = ? "
                    f"WHERE images.status='ok' AND images.ref IN ({_marks(len(chunk))})",
                    [model_key, *chunk]):
                out[ref] = (cache, unblob_one(vector, half))
        return out

    # --- meta ---------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.reader().execute("SELECT value FROM state_meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put_meta(self, key: str, value: str) -> None:
        with self.db.write() as conn:
            self.set_meta(conn, key, value)

    @staticmethod
    def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute("INSERT OR REPLACE INTO state_meta VALUES (?, ?)", (key, value))

