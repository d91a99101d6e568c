"""The search flow, from a query (an uploaded image, words, a client's vector, a stored product) to the
answer: the model(s) to search checked, the query embedded, each store searched off the event loop with the
filters applied inside the store's search, the hits ranked (calibrated match, near-duplicates collapsed, an
optional sort) and merged across models, one row in the query log. Routes hand it what they read from HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar
from urllib.parse import quote

import numpy as np
from anyio import to_thread

from core.calibration import IMAGE, TEXT
from core.errors import BadRequestError, IndexNotReadyError, ProductNotFoundError, StoreError
from core.query_log import QueryLog, QueryRecord
from core.lexical import LexicalConfig, indexed_texts, matched_words, query_words, reciprocal_rank_fusion
from core.store import Filter, Hit, ModelStore, Product, typed_extra
from utils.images import ShapePolicy

from api.catalogue import Catalogue
from api.embedder import Embedder, embed_query_image
from api.loaded import ServedModel
from api.schemas import AllSearchResponse, ModelResults, SearchHit, SearchResponse
from api.uploads import QueryImage

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


ReadImage = Callable[[], Awaitable[QueryImage]]  # reads the query image from the request, when the flow is ready
Vectors = dict[str, np.ndarray]  # backbone -> raw CLIP query vector


@dataclass(frozen=True)
class Origin:
    """Where a search was asked: the address the client used (hits' image URLs) and the query log."""

    base_url: str
    query_log: QueryLog


@dataclass(frozen=True)
class _Asked:
    kind: str  # the query log's kind: image, text, vector, similar
    query: str | None = None  # the answer's query: the words, "vector", "similar:<id>"
    filename: str | None = None  # an uploaded image's name


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


def _checked(catalogue: Catalogue, name: str, filters: Filters) -> ServedModel:
    """The model to search: 404 when unknown, 503 when it cannot serve, 400 for a column it lacks."""
    model = catalogue.model(name)
    model.require()
    check_columns(model, filters)
    return model


async def by_image(catalogue: Catalogue, name: str, filters: Filters, read: ReadImage, policy: ShapePolicy,
                   origin: Origin) -> SearchResponse:
    """One model searched with an uploaded image (read only once the model and the filters are checked)."""
    model = _checked(catalogue, name, filters)
    embedder = catalogue.embedder(model.backbone)
    upload = await read()

    async def vector() -> np.ndarray:
        photo = embed_query_image(upload.data, [embedder], policy=policy)
        return (await refined(photo, {model.backbone: embedder}, filters.words))[model.backbone]

    return await _one(model, filters, _Asked("image", query=_added(filters), filename=upload.filename), vector,
                      origin)


def _added(filters: Filters) -> str | None:
    return filters.words.add if filters.words else None


async def refined(images: Awaitable[Vectors], embedders: dict[str, Embedder], words: Words | None) -> Vectors:
    """A photo's raw CLIP vectors (backbone -> vector, from ``images``) refined by words (``compose``). The words
    take the text search's own path (its tokenizer and truncation, the micro-batcher), embedded while the photo
    decodes: the batcher runs them before the photo's pass."""
    if words is None or not (words.add or words.avoid):
        return await images

    async def embedded(embedder: Embedder, text: str | None) -> np.ndarray | None:
        return await embedder.embed_text(text) if text else None

    backbones = list(embedders)
    photo, *texts = await asyncio.gather(images, *(embedded(embedders[b], t) for b in backbones
                                                   for t in (words.add, words.avoid)))
    return {b: compose(photo[b], texts[2 * i], texts[2 * i + 1], words.weight) for i, b in enumerate(backbones)}


def compose(image: np.ndarray, add: np.ndarray | None, avoid: np.ndarray | None, weight: float) -> np.ndarray:
    """The query of "this photo, more like ``add``, less like ``avoid``" in CLIP space: the unit image vector
    plus ``weight`` times the unit ``add`` vector minus ``weight`` times the unit ``avoid`` vector, made unit
    again (it then goes through the model's head like any image query)."""
    query = _unit(image)
    if add is not None:
        query = query + weight * _unit(add)
    if avoid is not None:
        query = query - weight * _unit(avoid)
    return _unit(query)


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


async def by_text(catalogue: Catalogue, name: str, text: str, filters: Filters, origin: Origin,
                  mode: TextMode = "hybrid") -> SearchResponse:
    """One model searched with words: by its pictures (the CLIP text tower), by its products' words, or both
    fused (``mode``: see :func:`by_words`)."""
    model = _checked(catalogue, name, filters)
    return await _one_words(model, text, filters, mode, origin,
                            lambda: catalogue.embedder(model.backbone).embed_text(text))


async def by_vector(catalogue: Catalogue, name: str, vector: list[float], filters: Filters,
                    origin: Origin) -> SearchResponse:
    """One model searched with the client's own CLIP embedding (normalised here, the model's head applied)."""
    model = _checked(catalogue, name, filters)

    async def query() -> np.ndarray:
        return _clip_query(vector, model.query_dim, name)

    return await _one(model, filters, _Asked("vector", query="vector"), query, origin)


async def similar(catalogue: Catalogue, name: str, product_id: str, filters: Filters,
                  origin: Origin) -> SearchResponse:
    """Products that look like this one, the product itself left out."""
    model = catalogue.model(name)
    model.product(product_id)  # 404 when absent
    filters = replace(filters, exclude_id=product_id)
    check_columns(model, filters)

    async def stored() -> np.ndarray:
        try:
            vector: np.ndarray = model.require().vectors([product_id])[0]
        except KeyError:  # deleted since it was read, by another process
            raise ProductNotFoundError(name, product_id) from None
        return vector

    # the stored vector is already in index space: searched without the head
    return await _one(model, filters, _Asked("similar", query=f"similar:{product_id}"), stored, origin,
                      projected=True)


async def _one(model: ServedModel, filters: Filters, asked: _Asked, vector: Callable[[], Awaitable[np.ndarray]],
               origin: Origin, *, projected: bool = False) -> SearchResponse:
    start = time.perf_counter()
    hits = await _search_loaded(model, await vector(), filters, origin.base_url, projected=projected)
    took = _log(origin, model.name, asked.kind, filters, start, hits)
    return SearchResponse(model=model.name, query_filename=asked.filename, query=asked.query, num_results=len(hits),
                          search_time_ms=took, results=hits)


async def _search_loaded(model: ServedModel, clip_vector: np.ndarray, filters: Filters, base: str, *,
                         projected: bool = False, words: tuple[str, TextMode] | None = None) -> list[SearchHit]:
    """Search one model with a raw CLIP query vector (or one already in index space), off the event loop;
    with ``words`` (the text and its mode), by the products' words too (:func:`by_words`)."""
    def _work() -> list[SearchHit]:
        vector = clip_vector if projected else query_vector(model, clip_vector)
        found = by_words(model, vector, *words, filters) if words else nearest(model, vector, filters)
        return to_hits(model, found, base, first_rank=filters.offset + 1)

    return await to_thread.run_sync(_work)


async def _one_words(model: ServedModel, text: str, filters: Filters, mode: TextMode, origin: Origin,
                     vector: Callable[[], Awaitable[np.ndarray]]) -> SearchResponse:
    start = time.perf_counter()
    clip = await vector()

    def _work() -> list[SearchHit]:
        found = by_words(model, query_vector(model, clip), text, mode, filters)
        return to_hits(model, found, origin.base_url, first_rank=filters.offset + 1)

    hits = await to_thread.run_sync(_work)
    took = _log(origin, model.name, "text", filters, start, hits)
    return SearchResponse(model=model.name, query=text, num_results=len(hits), search_time_ms=took, results=hits)


def _clip_query(vector: list[float], dim: int | None, name: str) -> np.ndarray:
    """The client's vector as a unit float32 query; 400 when ``dim`` is given and the length differs."""
    query = np.asarray(vector, dtype=np.float64)
    if dim is not None and query.shape[0] != dim:
        raise BadRequestError(f"model {name!r} takes {dim}-dim CLIP vectors, got {query.shape[0]}")
    query = query / max(float(np.max(np.abs(query))), 1e-300)  # scaled first: 1e300 must not overflow
    return (query / max(float(np.linalg.norm(query)), 1e-12)).astype(np.float32)


async def all_by_image(catalogue: Catalogue, filters: Filters, merge: MergeMethod, read: ReadImage,
                       policy: ShapePolicy, origin: Origin) -> AllSearchResponse:
    """Every model searched with one uploaded image: one query pass per backbone."""
    models, ready = _ready_models(catalogue)
    embedders = {m.backbone: catalogue.embedder(m.backbone) for m in ready}
    upload = await read()

    async def vectors() -> Vectors:
        photo = embed_query_image(upload.data, list(embedders.values()), policy=policy)
        return await refined(photo, embedders, filters.words)

    return await _every(models, filters, merge, _Asked("image", query=_added(filters), filename=upload.filename),
                        vectors, origin)


async def all_by_text(catalogue: Catalogue, text: str, filters: Filters, merge: MergeMethod,
                      origin: Origin, mode: TextMode = "hybrid") -> AllSearchResponse:
    """Every model searched with words: the text embedded once per backbone; each model searched as
    :func:`by_text` does in ``mode``, the answers merged (by ``match`` by default)."""
    models, ready = _ready_models(catalogue)

    async def vectors() -> Vectors:
        return {b: await catalogue.embedder(b).embed_text(text) for b in {m.backbone for m in ready}}

    return await _every(models, filters, merge, _Asked("text", query=text), vectors, origin, words=(text, mode))


async def all_by_vector(catalogue: Catalogue, vector: list[float], filters: Filters, merge: MergeMethod,
                        origin: Origin) -> AllSearchResponse:
    """Every model whose CLIP dimension matches searched with the client's own embedding."""
    models, ready = _ready_models(catalogue)

    async def vectors() -> Vectors:
        query = _clip_query(vector, None, "all")  # normalised once, shared by every model of this dimension
        found = {m.backbone: query for m in ready if m.query_dim == len(vector)}
        if not found:
            raise BadRequestError(f"no model takes {len(vector)}-dim vectors")
        return found

    return await _every(models, filters, merge, _Asked("vector", query="vector"), vectors, origin)


def _ready_models(catalogue: Catalogue) -> tuple[list[ServedModel], list[ServedModel]]:
    models = catalogue.models()
    ready = [m for m in models if m.searchable]
    if not ready:
        raise IndexNotReadyError("all", "no model has a usable index yet")
    return models, ready


async def _every(models: list[ServedModel], filters: Filters, merge: MergeMethod, asked: _Asked,
                 vectors: Callable[[], Awaitable[Vectors]], origin: Origin, *,
                 words: tuple[str, TextMode] | None = None) -> AllSearchResponse:
    start = time.perf_counter()
    merged, per_model = await _search_every_model(models, await vectors(), filters, origin.base_url, merge,
                                                  words=words)
    took = _log(origin, "all", asked.kind, filters, start, merged)
    return AllSearchResponse(query_filename=asked.filename, query=asked.query, num_results=len(merged),
                             search_time_ms=took, results=merged, per_model=per_model)


async def _search_every_model(models: list[ServedModel], vectors: Vectors, filters: Filters, base: str,
                              merge: MergeMethod = "match", *, words: tuple[str, TextMode] | None = None,
                              ) -> tuple[list[SearchHit], dict[str, ModelResults]]:
    """Each model searched with its backbone's query vector, then one merged ranking. A model lacking a
    filtered column, without a vector for this query (another dimension), or whose store fails (Milvus
    unreachable) is listed with the reason; when every searched store fails, that is the answer (503).
    A later page (``offset``) needs every model's hits down to that depth to rank the merged page right."""
    deep = replace(filters, top_k=filters.offset + filters.top_k, offset=0)
    found: dict[str, list[SearchHit]] = {}
    per_model: dict[str, ModelResults] = {}
    failed: list[StoreError] = []
    for model in models:
        reason = _skip_reason(model, vectors, filters)
        if not reason:
            try:
                found[model.name] = await _search_loaded(model, vectors[model.backbone], deep, base, words=words)
            except StoreError as exc:
                failed.append(exc)
                reason = exc.message
        if reason:
            per_model[model.name] = ModelResults(model=model.name, num_results=0, results=[], error=reason)
            continue
        page = found[model.name][filters.offset:]
        per_model[model.name] = ModelResults(model=model.name, num_results=len(page), results=page)
    if failed and not found:
        raise failed[0]
    return merge_rankings(list(found.values()), deep.top_k, merge, filters.sort)[filters.offset:], per_model


def _skip_reason(model: ServedModel, vectors: Vectors, filters: Filters) -> str | None:
    if not model.searchable:
        return model.problem or "not searchable"
    if model.backbone not in vectors:
        return "the query vector's dimension does not match this model"
    try:
        check_columns(model, filters, sort=False)  # a model without the sort column still serves, its hits last
    except BadRequestError as exc:
        return exc.message
    return None


def _log(origin: Origin, model: str, kind: str, filters: Filters, start: float, hits: list[SearchHit]) -> float:
    """One row in the query log (never the image or the text): returns at once, a thread writes it. Returns
    the search's time in milliseconds since ``start``, as logged and answered."""
    latency_ms = round((time.perf_counter() - start) * 1000, 3)
    used = {"category": filters.category, "equals": filters.equals or None, "ranges": filters.ranges or None,
            "min_score": filters.min_score, "top_k": filters.top_k, "offset": filters.offset or None}
    origin.query_log.record(QueryRecord(
        model=model, kind=kind, latency_ms=latency_ms, results=len(hits), top_ids=[h.id for h in hits[:10]],
        filters={k: v for k, v in used.items() if v is not None}))
    return latency_ms


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
        text = product_texts(item.product, config)
        held = matched_words(add, text) if add else []
        if avoid and matched_words(avoid, text):
            behind.append(item)
        elif held:
            ahead.append(replace(item, matched=(*(item.matched or ("picture",)), "words"), words=tuple(held)))
        else:
            middle.append(item)
    return ahead + middle + behind


def product_texts(p: Product, config: LexicalConfig) -> list[str]:
    """The texts a product's words are read from (as the lexical index reads them, ``core.lexical``)."""
    return indexed_texts(p.title, p.category, p.extra, config)


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
        held = matched_words(words, product_texts(p, store.lexical_config))
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
