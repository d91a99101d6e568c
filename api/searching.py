"""The search flow, from a query (an uploaded image, words, a client's vector, a stored product) to the
answer: the model(s) to search checked, the query embedded, each store searched off the event loop with the
filters applied inside the store's search, the hits ranked and merged across models (``api.ranking``), one row
in the query log. Routes hand it what they read from HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np
from anyio import to_thread

from core.errors import BadRequestError, IndexNotReadyError, ProductNotFoundError, StoreError
from core.query_log import QueryLog, QueryRecord
from utils.images import ShapePolicy

from api.catalogue import Catalogue
from api.embedder import Embedder, embed_query_image
from api.loaded import ServedModel
from api.ranking import (Filters, MergeMethod, TextMode, Words, by_words, merge_rankings, nearest, query_vector,
                         to_hits)
from api.schemas import AllSearchResponse, ModelResults, SearchHit, SearchResponse
from api.uploads import QueryImage

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
