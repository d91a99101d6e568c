"""How one model's hits become a page, and pages one ranking: the query vector through the model's head, the
store searched with the filters inside it, calibrated ``match``, words (a text search's hybrid of words and
pictures, a photo's refining words), near-duplicates collapsed, an optional sort, the page cut, the hits shaped
for the answer and merged across models. Synchronous: ``api.searching`` runs it off the event loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar
from urllib.parse import quote

import numpy as np

from core.calibration import IMAGE, TEXT
from core.lexical import indexed_texts, matched_words, query_words, reciprocal_rank_fusion
from core.store import Filter, Hit, ModelStore, Product, typed_extra

from api.loaded import ServedModel
from api.schemas import SearchHit

_T = TypeVar("_T")
SORT_POOL = 100  # a sorted search orders this many best matches (after filters, min_match and dedupe)
TEXT_WEIGHT = 0.3  # how far a photo's refining words pull the query by default (Words.weight)


@dataclass(frozen=True)
class Words:
    """Words refining a photo query: ``add`` to move toward, ``avoid`` to move away from, each pulling the
    query vector by ``weight`` (``compose``); the lexical step (``lexical_refine``) sees them too."""

    add: str | None = None
    avoid: str | None = None
    weight: float = TEXT_WEIGHT


@dataclass(frozen=True)
class Filters:
    """A search's parameters (``api.deps.SearchParams`` builds them from the query string); ``for_store`` is the
    part the store applies inside its search."""

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
    words: Words | None = None  # a photo query's refining words (photo routes only)

    @property
    def sort_column(self) -> str | None:
        return self.sort.removeprefix("-") if self.sort else None

    def for_store(self) -> Filter:
        return Filter(category=self.category, equals=self.equals, ranges=self.ranges,
                      exclude_ids=(self.exclude_id,) if self.exclude_id is not None else ())

    @property
    def columns(self) -> set[str]:
        return set(self.equals) | set(self.ranges)


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
    matched: tuple[str, ...] = ()  # why it came (a text search): "id", "words", "picture"
    words: tuple[str, ...] = ()  # which of the query's words it holds (a text search)

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
    return _page(model, calibrated(model, hits, filters.kind), filters, depth)


def _page(model: ServedModel, found: list[Found], filters: Filters, depth: int) -> list[Found]:
    """The ranked hits' tail: min_match, near-duplicates collapsed, the sort over the best ``depth``, the page."""
    store = model.require()
    want = filters.offset + filters.top_k
    if filters.min_match is not None:
        found = [f for f in found if f.match is None or f.match >= filters.min_match]
    if filters.words is not None:
        found = lexical_refine(model, filters.words, found)
    if filters.dedupe and len(found) > 1:
        found = collapse(found, store.hit_vectors([f.hit for f in found]), duplicate_threshold(model))
    if filters.sort:
        columns = store.columns()
        found = ordered(found[:depth], lambda f: typed_extra(f.product.extra, columns).get(filters.sort_column or ""),
                        descending=filters.sort.startswith("-"))
    return found[filters.offset:want]


def lexical_refine(model: ServedModel, words: Words, found: list[Found]) -> list[Found]:
    """The lexical step of a photo refined by words. Of the candidates (best first, after filters and min_match,
    before near-duplicates collapse and the page is cut) those whose own words hold any of ``words.add`` come
    first and say which (``matched``: picture and words), those holding any of ``words.avoid`` come last; each group
    keeps the picture's order. ``weight`` 0 is the photo alone, words included."""
    add, avoid = query_words(words.add or ""), query_words(words.avoid or "")
    if words.weight <= 0 or not (add or avoid):
        return found
    config = model.require().lexical_config
    ahead: list[Found] = []
    middle: list[Found] = []
    behind: list[Found] = []
    for item in found:
        text = indexed_texts(item.product.title, item.product.category, item.product.extra, config)
        held = matched_words(add, text) if add else []
        if avoid and matched_words(avoid, text):
            behind.append(item)
        elif held:
            ahead.append(replace(item, matched=(*(item.matched or ("picture",)), "words"), words=tuple(held)))
        else:
            middle.append(item)
    return ahead + middle + behind


TextMode = Literal["hybrid", "semantic", "lexical"]
Fusion = Literal["blend", "rrf"]
WORD_MATCH = 0.9  # the match a hit holding every query word gets from its words (an exact identifier: 1.0)
FUSION: Fusion = "blend"  # how by_words orders its candidates: bench/hybrid.py measures both


def by_words(model: ServedModel, vector: np.ndarray, text: str, mode: TextMode, filters: Filters, *,
             fusion: Fusion = FUSION) -> list[Found]:
    """A text search by the products' words (``lexical``), their pictures (``semantic``: the CLIP text tower
    alone, as before words were indexed) or both (``hybrid``): a product whose
    id or identifier column (sku, barcode...) is exactly ``text`` first, then the products found by their words
    (BM25) and, hybrid, by their pictures (the CLIP text tower); then as :func:`nearest`. Every candidate's
    ``score`` is its cosine with the query; its ``match`` the better of the picture's calibrated match and its
    words' (the share of the query's words it holds, times WORD_MATCH); ``matched`` says why it came, ``words``
    which words. ``fusion`` orders them: ``blend`` by that match (ties by reciprocal rank), ``rrf`` by the
    reciprocal-rank fusion of the word and picture rankings alone."""
    store = model.require()
    _one_faiss_thread()
    depth = SORT_POOL if filters.sort else filters.offset + filters.top_k
    fetch = depth * _DEDUPE_FETCH + 8 if filters.dedupe else depth
    flt, query = filters.for_store(), np.asarray(vector, dtype=np.float32).reshape(1, -1)
    exact = store.find_identifier(text, flt) if mode != "semantic" else []
    lexical = store.find_words(text, fetch, flt, query[0]) if mode != "semantic" else []
    pictures = store.search(query, fetch, flt)[0] if mode != "lexical" else []
    if filters.min_score is not None:
        pictures = [h for h in pictures if h.score >= filters.min_score]
    hits = _with_cosines(store, query[0], pictures, [*exact, *lexical])
    fused = reciprocal_rank_fusion([[h.product.id for h in pictures], [h.product.id for h in lexical]])
    why = {"id": {h.product.id for h in exact}, "words": {h.product.id for h in lexical},
           "picture": {h.product.id for h in pictures}}
    words = query_words(text)
    found = []
    for item in calibrated(model, list(hits.values()), TEXT):
        p = item.product
        held = matched_words(words, indexed_texts(p.title, p.category, p.extra, store.lexical_config))
        came = tuple(k for k, ids in why.items() if p.id in ids)
        word_match = 1.0 if "id" in came else WORD_MATCH * len(held) / len(words) if "words" in came and words else None
        best = max((m for m in (item.match, word_match) if m is not None), default=None)
        found.append(replace(item, match=None if best is None else round(best, 6), matched=came, words=tuple(held)))
    blend = fusion == "blend"
    if mode != "semantic":  # semantic: the picture search's own order, as before words were indexed
        found.sort(key=lambda f: (f.product.id not in why["id"], -(f.match or 0.0) if blend else 0.0,
                                  -fused.get(f.product.id, 0.0)))
    return _page(model, found, filters, depth)


def _with_cosines(store: ModelStore, query: np.ndarray, pictures: list[Hit], others: list[Hit]) -> dict[str, Hit]:
    """Every candidate once, by id, scored by its cosine with ``query`` (the picture hits have theirs)."""
    hits = {h.product.id: h for h in pictures}
    missing = list({h.product.id: h for h in others if h.product.id not in hits}.values())
    if missing:
        cosines = np.einsum("id,d->i", np.asarray(store.hit_vectors(missing), dtype=np.float32), query)
        hits.update((h.product.id, Hit(h.product, float(c), key=h.key)) for h, c in zip(missing, cosines,
                                                                                           strict=True))
    return hits


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
    return [replace(found[k], duplicates=tuple(extra.get(k, ()))) for k in kept]


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
                              extra=typed_extra(p.extra, columns), matched=list(item.matched) or None,
                              matched_words=list(item.words) if item.matched else None))
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
