"""A built model's products and vectors, read out of its catalogue store for the quality tools.

The store's scan gives ids and vectors a batch at a time (the local store: in vid order, the catalogue
order rankings break ties by); each batch's categories and previews are read with it. Memory is the
vector matrix plus three small per-row lists; no dict per product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.catalogue_store import open_store, store_exists
from core.config import Settings
from core.errors import MissingInputError
from core.head import ProjectionHead
from core.model_config import ModelSpec
from core.store import ModelStore
from core.types import Embeddings

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


def open_built_store(settings: Settings, spec: ModelSpec) -> ModelStore:
    """The model's store (a changed head.safetensors re-projects it on open); MissingInputError when the
    model has never been built or holds no product. A missing store is not created."""
    if not store_exists(settings, spec):
        raise MissingInputError(spec.name, f"no catalogue; build the model first (python run_training.py {spec.name})")
    store = open_store(settings, spec, open_index=False)
    if not store.count():
        store.close()
        raise MissingInputError(spec.name, "the catalogue holds no product; build the model first "
                                           f"(python run_training.py {spec.name})")
    return store


def read_products(store: ModelStore, *, clip: bool = False) -> StoredProducts:
    """Every product's id, category, preview and vector (as indexed, or the raw CLIP one with ``clip``),
    in the store's scan order (vid order for the local store)."""
    ids: list[str] = []
    categories: list[str] = []
    previews: list[str | None] = []
    chunks: list[Embeddings] = []
    for batch_ids, vectors in store.scan_vectors(clip=clip):
        found = {p.id: p for p in store.get(batch_ids)}  # a product deleted meanwhile keeps its vector
        for pid in batch_ids:
            product = found.get(pid)
            ids.append(pid)
            categories.append(product.category if product is not None else "")
            previews.append(product.preview_cache if product is not None else None)
        chunks.append(vectors)
    if not chunks:
        raise MissingInputError(store.name, "the catalogue holds no product; build the model first")
    return StoredProducts(ids, categories, previews, np.concatenate(chunks).astype(np.float32, copy=False), store.head)
