"""Nearest-neighbour search over one served model, with filters applied inside the store's search,
turned into SearchHit rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar
from urllib.parse import quote

import numpy as np

from core.calibration import IMAGE, TEXT
from core.errors import BadRequestError
from fastapi import Request

from core.query_log import QueryRecord
from core.store import Filter, Hit, Product, typed_extra

from api.loaded import ServedModel
from api.schemas import SearchHit

_T = TypeVar("_T")
SORT_POOL = 100  # a sorted search orders this many best matches (after filters, min_match and dedupe)


@dataclass(frozen=True)
class Filters:
    top_k: int = 10
    min_score: float | None = None
    category: str | None = None
    exclude_id: str | None = None
    equals: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    offset: int = 0  # a later page: this many best hits are skipped
    min_match: float | None = None
    dedupe: bool = True  # collapse near-duplicates (cosine >= the model's threshold) into one hit
    kind: str = IMAGE  # what the query was: image or text (a client vector counts as image)
    sort: str | None = None  # None: by relevance; "price": the best matches by price, "-price": descending

    @property
    def sort_column(self) -> str | None:
        return self.sort.removeprefix("-") if self.sort else None

    def for_store(self) -> Filter:
        return Filter(category=self.category, equals=self.equals, ranges=self.ranges,
                      exclude_ids=(self.exclude_id,) if self.exclude_id is not None else ())

    @property
    def columns(self) -> set[str]:
        return set(self.equals) | set(self.ranges)


def check_columns(model: ServedModel, filters: Filters, *, sort: bool = True) -> None:
    """A filter (or, with ``sort``, a sort) on a column the model does not have is a client mistake (400),
    named with the choices."""
    wanted = filters.columns | ({filters.sort_column} if sort and filters.sort_column else set())
    if not wanted:
        return
    known = model.require().columns()
    unknown = sorted(wanted - set(known))
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


@dataclass(frozen=True)
class Found:
    """A store hit with its calibrated match (None without a calibration) and the near-duplicates
    collapsed into it."""

    hit: Hit
    match: float | None = None
    duplicates: tuple[str, ...] = ()

    @property
    def product(self) -> Product:
        return self.hit.product

    @property
    def score(self) -> float:
        return self.hit.score


_DEDUPE_FETCH = 3  # with dedupe, fetch this many times the page (plus a few) so collapsing still fills it


def duplicate_threshold(model: ServedModel) -> float:
    """The model's near-duplicate threshold (``ModelSpec.duplicate_threshold_for``)."""
    return model.spec.duplicate_threshold_for(model.require().settings)


def nearest(model: ServedModel, vector: np.ndarray, filters: Filters) -> list[Found]:
    """Hits, best first, after filters (and near-duplicates collapsed): the page from ``offset``. With a
    sort, the best ``SORT_POOL`` hits ordered by that column. ``vector`` is already in index space."""
    store = model.require()
    _one_faiss_thread()
    want = filters.offset + filters.top_k  # a page further down: search that deep, then slice
    depth = SORT_POOL if filters.sort else want  # a sorted search pages through one fixed pool
    fetch = depth * _DEDUPE_FETCH + 8 if filters.dedupe else depth
    hits = store.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), fetch, filters.for_store())[0]
    if filters.min_score is not None:
        hits = [h for h in hits if h.score >= filters.min_score]
    found = calibrated(model, hits, filters.kind)
    if filters.min_match is not None:
        found = [f for f in found if f.match is None or f.match >= filters.min_match]
    if filters.dedupe and len(found) > 1:
        found = collapse(found, store.hit_vectors([f.hit for f in found]), duplicate_threshold(model))
    if filters.sort:
        columns = store.columns()
        found = ordered(found[:depth], lambda f: typed_extra(f.product.extra, columns).get(filters.sort_column or ""),
                        descending=filters.sort.startswith("-"))
    return found[filters.offset:want]


def ordered(items: list[_T], value: Callable[[_T], object], *, descending: bool = False) -> list[_T]:
    """``items`` ordered by a column's value: numbers, then text (case-blind), then those without one; equal
    values keep their order (relevance)."""
    numbers: list[tuple[float, _T]] = []
    texts: list[tuple[str, _T]] = []
    missing: list[_T] = []
    for item in items:
        v = value(item)
        if isinstance(v, int | float) and not isinstance(v, bool):
            numbers.append((v, item))
        elif v is None or v == "":
            missing.append(item)
        else:
            texts.append((str(v).casefold(), item))
    # sorted(reverse=True) is stable too: equal values stay in relevance order
    return ([i for _, i in sorted(numbers, key=lambda p: p[0], reverse=descending)]
            + [i for _, i in sorted(texts, key=lambda p: p[0], reverse=descending)] + missing)


def calibrated(model: ServedModel, hits: list[Hit], kind: str) -> list[Found]:
    """Each hit with its calibrated match for this query kind (text, else the image map)."""
    cal = model.require().calibration
    matches = cal.match(np.array([h.score for h in hits]), TEXT if kind == TEXT else IMAGE) if cal else None
    if matches is None:
        return [Found(h) for h in hits]
    return [Found(h, round(float(m), 6)) for h, m in zip(hits, matches, strict=True)]


def collapse(found: list[Found], vectors: np.ndarray, threshold: float) -> list[Found]:
    """Greedy, best first: a hit within ``threshold`` cosine of a kept one joins its ``duplicates``."""
    vectors = np.asarray(vectors, dtype=np.float32)
    # einsum, not a BLAS matmul: a few dozen hits take microseconds, while a threaded BLAS call spin-waits
    # against torch's threads on every search (measured: API p50 71 ms with the matmul)
    sims = np.einsum("id,jd->ij", vectors, vectors)
    kept: list[int] = []
    extra: dict[int, list[str]] = {}
    for i in range(len(found)):
        owner = next((k for k in kept if sims[i, k] >= threshold), None)
        if owner is None:
            kept.append(i)
        else:
            extra.setdefault(owner, []).append(found[i].product.id)
    return [Found(found[k].hit, found[k].match, tuple(extra.get(k, ()))) for k in kept]


def image_url(base_url: str, model: str, product: Product) -> str | None:
    """Where a client fetches the product's picture: our cached preview, else a remote original."""
    if product.preview_cache:
        return f"{base_url}/{model}/products/{quote(product.id, safe='')}/image"
    preview = product.preview_image
    return preview if preview.startswith(("http://", "https://")) else None


def to_hits(model: ServedModel, found: list[Found], base_url: str, *, first_rank: int = 1) -> list[SearchHit]:
    columns = model.require().columns() if found else {}
    hits = []
    for rank, item in enumerate(found, start=first_rank):
        p = item.product
        hits.append(SearchHit(rank=rank, id=p.id, title=p.title, category=p.category or None,
                              score=round(float(item.score), 6), match=item.match,
                              duplicates=list(item.duplicates), preview_image=p.preview_image or None,
                              image_url=image_url(base_url, model.name, p), model=model.name,
                              extra=typed_extra(p.extra, columns)))
    return hits


MergeMethod = Literal["match", "score", "rrf"]
RRF_K = 60  # the usual reciprocal-rank-fusion constant


def merge_rankings(per_model: list[list[SearchHit]], top_k: int, method: MergeMethod = "match",
                   sort: str | None = None) -> list[SearchHit]:
    """One ranking across models: by calibrated ``match`` (default; a hit without one sorts after
    those with one, by score), by raw ``score``, or by reciprocal-rank fusion (``rrf``: each model's
    rank r counts 1/(60 + r); equal ranks are ordered by match). With ``sort``, the merged ranking is
    then ordered by that column, as each model's own was."""
    hits = [h for model_hits in per_model for h in model_hits]

    def by_match(h: SearchHit) -> tuple[float, float]:
        return (-(h.match if h.match is not None else -1.0), -h.score)

    if method == "score":
        merged = sorted(hits, key=lambda h: -h.score)
    elif method == "rrf":
        merged = sorted(hits, key=lambda h: (-1.0 / (RRF_K + h.rank), *by_match(h)))
    else:
        merged = sorted(hits, key=by_match)
    if sort:
        merged = ordered(merged, lambda h: h.extra.get(sort.removeprefix("-")), descending=sort.startswith("-"))
    return [h.model_copy(update={"rank": i}) for i, h in enumerate(merged[:top_k], start=1)]


def log_search(request: Request, model: str, kind: str, filters: Filters, latency_ms: float,
               hits: list[SearchHit]) -> None:
    """One row in the query log (never the image or the text): returns at once, a thread writes it."""
    used = {"category": filters.category, "equals": filters.equals or None, "ranges": filters.ranges or None,
            "min_score": filters.min_score, "top_k": filters.top_k, "offset": filters.offset or None}
    request.app.state.query_log.record(QueryRecord(
        model=model, kind=kind, latency_ms=latency_ms, results=len(hits), top_ids=[h.id for h in hits[:10]],
        filters={k: v for k, v in used.items() if v is not None}))
