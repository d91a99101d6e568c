"""Nearest-neighbour search over one loaded model, with filters, turned into SearchHit rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np

from api.loaded import LoadedModel
from api.schemas import SearchHit

_MAX_FETCH = 4096  # widest neighbour list fetched to satisfy a filter


@dataclass(frozen=True)
class Filters:
    top_k: int = 10
    min_score: float | None = None
    category: str | None = None
    exclude_id: str | None = None
    offset: int = 0


def query_vector(model: LoadedModel, clip_vector: np.ndarray) -> np.ndarray:
    """Raw CLIP query -> the space the index lives in (through the model's head, if any)."""
    query = np.asarray(clip_vector, dtype=np.float32).reshape(1, -1)
    return model.head.apply(query) if model.head is not None else query


def _accept(row: dict[str, Any], score: float, filters: Filters) -> bool:
    if filters.category is not None and str(row.get("category") or "") != filters.category:
        return False
    return filters.exclude_id is None or str(row.get("id")) != filters.exclude_id


def _one_faiss_thread() -> None:
    """FAISS searches single-threaded: one query gains little from OpenMP, and concurrent ones would
    fight torch for the cores. The OpenMP setting is per calling thread, hence on every search."""
    import faiss

    faiss.omp_set_num_threads(1)


def nearest(model: LoadedModel, vector: np.ndarray, filters: Filters) -> list[tuple[int, float]]:
    """(position, score) pairs, best first, after filters. ``vector`` is already in index space."""
    bundle = model.require_bundle()
    _one_faiss_thread()
    n = len(bundle.metadata)
    if n == 0 or (filters.category is not None and filters.category not in model.category_counts):
        return []
    filtered = filters.category is not None or filters.exclude_id is not None
    want = filters.offset + filters.top_k  # a page further down: search that deep, then slice
    k = min(n, want * 4 + 16 if filtered else want)
    while True:
        scores, positions = bundle.search(vector.reshape(1, -1), k)
        found: list[tuple[int, float]] = []
        for pos, score in zip(positions[0].tolist(), scores[0].tolist(), strict=True):
            if pos < 0 or (filters.min_score is not None and score < filters.min_score):
                continue
            if _accept(bundle.metadata[pos], score, filters):
                found.append((pos, score))
        exhausted = k >= min(n, _MAX_FETCH) or (filters.min_score is not None and scores[0][-1] < filters.min_score)
        if len(found) >= want or exhausted:
            return found[filters.offset:want]
        k = min(n, k * 4, _MAX_FETCH)


def image_url(base_url: str, model: str, row: dict[str, Any]) -> str | None:
    """Where a client fetches the product's picture: our cached preview, else a remote original."""
    if row.get("preview_cache"):
        return f"{base_url}/{model}/products/{quote(str(row.get('id')), safe='')}/image"
    preview = str(row.get("preview_image") or "")
    return preview if preview.startswith(("http://", "https://")) else None


def to_hits(model: LoadedModel, found: list[tuple[int, float]], base_url: str, *,
            tag_model: bool = False) -> list[SearchHit]:
    metadata = model.require_bundle().metadata
    hits = []
    for rank, (pos, score) in enumerate(found, start=1):
        row = metadata[pos]
        hits.append(SearchHit(rank=rank, id=str(row.get("id")), title=str(row.get("title") or ""),
                              category=row.get("category") or None, score=round(float(score), 6),
                              preview_image=row.get("preview_image"), image_url=image_url(base_url, model.name, row),
                              model=model.name if tag_model else None, extra=row.get("extra") or {}))
    return hits


def merge_rankings(per_model: list[list[SearchHit]], top_k: int) -> list[SearchHit]:
    """One ranking across models by score (scores are cosine similarity in every model)."""
    merged = sorted((h for hits in per_model for h in hits), key=lambda h: -h.score)[:top_k]
    return [h.model_copy(update={"rank": i}) for i, h in enumerate(merged, start=1)]
