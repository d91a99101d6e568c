"""A built model's products and vectors, read out of its catalogue store for the quality tools.

One snapshot gives the rows and their vectors in vid order (the catalogue order rankings break ties
by), so they stay aligned even while the API or the pipeline writes. Memory is the vector matrix plus
three small per-row lists; no dict per product.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

from core.catalogue_store import open_store
from core.config import Settings
from core.errors import MissingInputError
from core.head import ProjectionHead
from core.local_store import LocalStore
from core.model_config import ModelSpec
from core.sqlite_store import store_path
from core.types import Embeddings

_ROWS = "SELECT id, category, preview_cache FROM products ORDER BY vid"


@dataclass(frozen=True)
class StoredProducts:
    """Row-aligned ids, categories ('' when none), cached preview paths and vectors of one model."""

    ids: list[str]
    categories: list[str]
    preview_cache: list[str | None]
    vectors: Embeddings
    head: ProjectionHead | None

    def __len__(self) -> int:
        return len(self.ids)


def open_built_store(settings: Settings, spec: ModelSpec) -> LocalStore:
    """The model's store (a changed head.safetensors re-projects it on open); MissingInputError when the
    model has never been built or holds no product. A missing store is not created."""
    folder = spec.paths(settings).models
    if not store_path(folder).is_file() and not (folder / "metadata.jsonl").is_file():
        raise MissingInputError(spec.name, f"no catalogue; build the model first (python run_training.py {spec.name})")
    store = open_store(settings, spec, open_index=False)
    if not store.count():
        store.close()
        raise MissingInputError(spec.name, "the catalogue holds no product; build the model first "
                                           f"(python run_training.py {spec.name})")
    return store


def read_products(store: LocalStore, *, clip: bool = False) -> StoredProducts:
    """Every product's id, category, preview and vector (as indexed, or the raw CLIP one with ``clip``)."""
    ids: list[str] = []
    categories: list[str] = []
    previews: list[str | None] = []
    with store.db.snapshot() as conn:
        for pid, category, preview in conn.execute(_ROWS):
            ids.append(str(pid))
            categories.append(str(category or ""))
            previews.append(preview)
        vectors = _vectors(store, conn, len(ids), clip)
    return StoredProducts(ids, categories, previews, vectors, store.head)


def _vectors(store: LocalStore, conn: sqlite3.Connection, n: int, clip: bool) -> Embeddings:
    """The snapshot's vectors in vid order, filled into one preallocated matrix."""
    batches = store.table.iter_vectors(conn, column="clip") if clip else store.table.iter_vectors(conn)
    out: Embeddings | None = None
    filled = 0
    for _vids, batch in batches:
        if out is None:
            out = np.empty((n, batch.shape[1]), dtype=np.float32)
        out[filled:filled + len(batch)] = batch
        filled += len(batch)
    if out is None or filled != n:
        raise MissingInputError(store.name, f"the store listed {n} products but gave {filled} vectors")
    return out
