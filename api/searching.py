"""Nearest-neighbour search over one served model, with filters applied inside the store's search,
turned into SearchHit rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np

from core.errors import BadRequestError
from fastapi import Request

from core.query_log import QueryRecord
from core.store import Filter, Hit, Product

from api.loaded import ServedModel
from api.schemas import SearchHit


@dataclass(frozen=True)
class Filters:
    top_k: int = 10
    min_score: float | None = None
    category: str | None = None
    exclude_id: str | None = None
    equals: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    offset: int = 0  # a later page: this many best hits are skipped

    def for_store(self) -> Filter:
        return Filter(category=self.category, equals=self.equals, ranges=self.ranges,
                      exclude_ids=(self.exclude_id,) if self.exclude_id is not None else ())

    @property
    def columns(self) -> set[str]:
        return set(self.equals) | set(self.ranges)


def check_columns(model: ServedModel, filters: Filters) -> None:
    """A filter on a column the model does not have is a client mistake (400), named with the choices."""
    if not filters.columns:
        return
    known = model.require().columns()
    unknown = sorted(filters.columns - set(known))
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise BadRequestError(f"model {model.name!r} has no filterable column {unknown[0]!r}; filterable: {listed}")
    wrong = sorted(c for c in filters.ranges if known[c] != "number")
    if wrong:
        raise BadRequestError(f"column {wrong[0]!r} of model {model.name!r} is not numeric: use an equality filter")


def query_vector(model: ServedModel, clip_vector: np.ndarray) -> np.ndarray:
    """Raw CLIP query -> the space the index lives in (through the model's head, if any)."""
    query = np.asarray(clip_vector, dtype=np.float32).reshape(1, -1)
    return model.head.apply(query) if model.head is not None else query


def _one_faiss_thread() -> None:
    """FAISS searches single-threaded: one query gains little from OpenMP, and concurrent ones would
    fight torch for the cores. The OpenMP setting is per calling thread, hence on every search."""
    import faiss

    faiss.omp_set_num_threads(1)


def nearest(model: ServedModel, vector: np.ndarray, filters: Filters) -> list[Hit]:
    """Hits, best first, after filters: the page from ``offset``. ``vector`` is already in index space."""
    store = model.require()
    _one_faiss_thread()
    want = filters.offset + filters.top_k  # a page further down: search that deep, then slice
    found = store.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), want, filters.for_store())[0]
    if filters.min_score is not None:
        found = [h for h in found if h.score >= filters.min_score]
    return found[filters.offset:want]


def image_url(base_url: str, model: str, product: Product) -> str | None:
    """Where a client fetches the product's picture: our cached preview, else a remote original."""
    if product.preview_cache:
        return f"{base_url}/{model}/products/{quote(product.id, safe='')}/image"
    preview = product.preview_image
    return preview if preview.startswith(("http://", "https://")) else None


def to_hits(model: ServedModel, found: list[Hit], base_url: str, *, tag_model: bool = False,
            first_rank: int = 1) -> list[SearchHit]:
    hits = []
    for rank, hit in enumerate(found, start=first_rank):
        p = hit.product
        hits.append(SearchHit(rank=rank, id=p.id, title=p.title, category=p.category or None,
                              score=round(float(hit.score), 6), preview_image=p.preview_image or None,
                              image_url=image_url(base_url, model.name, p), model=model.name if tag_model else None,
                              extra=dict(p.extra)))
    return hits


def merge_rankings(per_model: list[list[SearchHit]], top_k: int) -> list[SearchHit]:
    """One ranking across models by score (scores are cosine similarity in every model)."""
    merged = sorted((h for hits in per_model for h in hits), key=lambda h: -h.score)[:top_k]
    return [h.model_copy(update={"rank": i}) for i, h in enumerate(merged, start=1)]


def log_search(request: Request, model: str, kind: str, filters: Filters, latency_ms: float,
               hits: list[SearchHit]) -> None:
    """One row in the query log (never the image or the text): returns at once, a thread writes it."""
    used = {"category": filters.category, "equals": filters.equals or None, "ranges": filters.ranges or None,
            "min_score": filters.min_score, "top_k": filters.top_k, "offset": filters.offset or None}
    request.app.state.query_log.record(QueryRecord(
        model=model, kind=kind, latency_ms=latency_ms, results=len(hits), top_ids=[h.id for h in hits[:10]],
        filters={k: v for k, v in used.items() if v is not None}))
