"""Search routes: by image (one model, all models, legacy) and by text."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from anyio import to_thread
from fastapi import APIRouter, Depends, Request

from core.config import Settings
from core.calibration import IMAGE, TEXT
from core.errors import BadRequestError, IndexNotReadyError, StoreError

from api.catalogue import Catalogue
from api.deps import base_url, get_catalogue, get_settings
from api.embedder import embed_query_image
from api.loaded import ServedModel
from api.routes.params import FilterParams, MergeParam, MinScore, Offset, RelevanceParams, TextQuery, TopK
from api.schemas import AllSearchResponse, ModelResults, SearchHit, SearchResponse, VectorQuery, error_responses
from api.searching import (Filters, MergeMethod, check_columns, log_search, merge_rankings, nearest, query_vector,
                           to_hits)
from api.uploads import UPLOAD_OPENAPI, read_query_image

router = APIRouter(tags=["search"])
_IMAGE_ERRORS = error_responses(400, 404, 408, 413, 422, 503)
_TEXT_ERRORS = error_responses(400, 404, 422, 503)

LEGACY_MODEL = "general"


def elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def filters_from(top_k: int, min_score: float | None, flt: FilterParams, offset: int = 0,
             rel: RelevanceParams | None = None, kind: str = IMAGE) -> Filters:
    rel = rel or RelevanceParams()
    return Filters(top_k=top_k, min_score=min_score, category=flt.category, equals=flt.equals, ranges=flt.ranges,
                   offset=offset, min_match=rel.min_match, dedupe=rel.dedupe, kind=kind)


async def search_loaded(model: ServedModel, clip_vector: np.ndarray, filters: Filters, base: str, *,
                        tag_model: bool = False, projected: bool = False) -> list[SearchHit]:
    """Search one model with a raw CLIP query vector (or one already in index space), off the event loop."""
    def _work() -> list[SearchHit]:
        vector = clip_vector if projected else query_vector(model, clip_vector)
        return to_hits(model, nearest(model, vector, filters), base, tag_model=tag_model, first_rank=filters.offset + 1)

    return await to_thread.run_sync(_work)


async def _search_image(name: str, request: Request, filters: Filters, catalogue: Catalogue,
                        settings: Settings) -> SearchResponse:
    model = catalogue.model(name)
    model.require()
    check_columns(model, filters)
    embedder = catalogue.embedder(model.backbone)
    upload = await read_query_image(request, settings.max_upload_bytes)
    start = time.perf_counter()
    vectors = await embed_query_image(upload.data, [embedder], policy=settings.image_policy)
    hits = await search_loaded(model, vectors[model.backbone], filters, base_url(request))
    log_search(request, name, "image", filters, elapsed_ms(start), hits)
    return SearchResponse(model=name, query_filename=upload.filename, num_results=len(hits),
                          search_time_ms=elapsed_ms(start), results=hits)


def _ready_models(catalogue: Catalogue) -> tuple[list[ServedModel], list[ServedModel]]:
    models = catalogue.models()
    ready = [m for m in models if m.searchable]
    if not ready:
        raise IndexNotReadyError("all", "no model has a usable index yet")
    return models, ready


async def _search_every_model(models: list[ServedModel], vectors: dict[str, np.ndarray], filters: Filters,
                              base: str, merge: MergeMethod = "match"
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
                found[model.name] = await search_loaded(model, vectors[model.backbone], deep, base, tag_model=True)
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
    return merge_rankings(list(found.values()), deep.top_k, merge)[filters.offset:], per_model


def _skip_reason(model: ServedModel, vectors: dict[str, np.ndarray], filters: Filters) -> str | None:
    if not model.searchable:
        return model.error or "not searchable"
    if model.backbone not in vectors:
        return "the query vector's dimension does not match this model"
    try:
        check_columns(model, filters)
    except BadRequestError as exc:
        return exc.message
    return None


@router.post("/all/search", response_model=AllSearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Search every model with one image; per-model results and one merged ranking")
async def search_all(request: Request, top_k: TopK = 10, min_score: MinScore = None, flt: FilterParams = Depends(),
                     offset: Offset = 0,
                     rel: RelevanceParams = Depends(), merge: MergeParam = "match",
                     catalogue: Catalogue = Depends(get_catalogue),
                     settings: Settings = Depends(get_settings)) -> AllSearchResponse:
    models, ready = _ready_models(catalogue)
    embedders = {m.backbone: catalogue.embedder(m.backbone) for m in ready}  # one query pass per backbone
    upload = await read_query_image(request, settings.max_upload_bytes)
    start = time.perf_counter()
    vectors = await embed_query_image(upload.data, list(embedders.values()), policy=settings.image_policy)
    filters = filters_from(top_k, min_score, flt, offset, rel)
    merged, per_model = await _search_every_model(models, vectors, filters, base_url(request), merge)
    log_search(request, "all", "image", filters, elapsed_ms(start), merged)
    return AllSearchResponse(query_filename=upload.filename, num_results=len(merged), search_time_ms=elapsed_ms(start),
                             results=merged, per_model=per_model)


@router.get("/all/search/text", response_model=AllSearchResponse, responses=_TEXT_ERRORS,
            summary="Search every model with a text query; per-model results and one merged ranking")
async def search_all_text(request: Request, q: TextQuery, top_k: TopK = 10, min_score: MinScore = None,
                          flt: FilterParams = Depends(), offset: Offset = 0,
                          rel: RelevanceParams = Depends(), merge: MergeParam = "match",
                          catalogue: Catalogue = Depends(get_catalogue)) -> AllSearchResponse:
    models, ready = _ready_models(catalogue)
    start = time.perf_counter()
    vectors = {b: await catalogue.embedder(b).embed_text(q) for b in {m.backbone for m in ready}}  # once per backbone
    filters = filters_from(top_k, min_score, flt, offset, rel, TEXT)
    merged, per_model = await _search_every_model(models, vectors, filters, base_url(request), merge)
    log_search(request, "all", "text", filters, elapsed_ms(start), merged)
    return AllSearchResponse(query=q, num_results=len(merged), search_time_ms=elapsed_ms(start), results=merged,
                             per_model=per_model)


@router.post("/search_products/", response_model=SearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Legacy route: the same as /general/search")
async def search_products_legacy(request: Request, top_k: TopK = 10, min_score: MinScore = None,
                                 flt: FilterParams = Depends(), offset: Offset = 0,
                                 rel: RelevanceParams = Depends(),
                       catalogue: Catalogue = Depends(get_catalogue),
                                 settings: Settings = Depends(get_settings)) -> SearchResponse:
    filters = filters_from(top_k, min_score, flt, offset, rel)
    return await _search_image(LEGACY_MODEL, request, filters, catalogue, settings)


@router.post("/{model}/search", response_model=SearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Search one model by image (multipart field 'file' or a raw image/* body)")
async def search_model(model: str, request: Request, top_k: TopK = 10, min_score: MinScore = None,
                       flt: FilterParams = Depends(), offset: Offset = 0,
                       rel: RelevanceParams = Depends(),
                       catalogue: Catalogue = Depends(get_catalogue),
                       settings: Settings = Depends(get_settings)) -> SearchResponse:
    filters = filters_from(top_k, min_score, flt, offset, rel)
    return await _search_image(model, request, filters, catalogue, settings)


@router.get("/{model}/search/text", response_model=SearchResponse, responses=_TEXT_ERRORS,
            summary="Search one model's images with a text query (CLIP text tower)")
async def search_text(model: str, request: Request, q: TextQuery, top_k: TopK = 10, min_score: MinScore = None,
                      flt: FilterParams = Depends(), offset: Offset = 0,
                      rel: RelevanceParams = Depends(),
                       catalogue: Catalogue = Depends(get_catalogue)) -> SearchResponse:
    loaded = catalogue.model(model)
    loaded.require()
    filters = filters_from(top_k, min_score, flt, offset, rel, TEXT)
    check_columns(loaded, filters)
    start = time.perf_counter()
    vector = await catalogue.embedder(loaded.backbone).embed_text(q)
    hits = await search_loaded(loaded, vector, filters, base_url(request))
    log_search(request, model, "text", filters, elapsed_ms(start), hits)
    return SearchResponse(model=model, query=q, num_results=len(hits), search_time_ms=elapsed_ms(start),
                          results=hits)


def _clip_query(body: VectorQuery, dim: int | None, name: str) -> np.ndarray:
    vector = np.asarray(body.vector, dtype=np.float64)
    if dim is not None and vector.shape[0] != dim:
        raise BadRequestError(f"model {name!r} takes {dim}-dim CLIP vectors, got {vector.shape[0]}")
    vector = vector / max(float(np.max(np.abs(vector))), 1e-300)  # scaled first: 1e300 must not overflow
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


def _clip_dim(model: ServedModel) -> int | None:
    store = model.store
    if model.head is not None:
        return model.head.input_dim
    return store.dim if store is not None else None


@router.post("/all/search/vector", response_model=AllSearchResponse, responses=_TEXT_ERRORS,
             summary="Search every model whose CLIP dimension matches with your own query embedding")
async def search_all_vector(request: Request, body: VectorQuery, top_k: TopK = 10, min_score: MinScore = None,
                            flt: FilterParams = Depends(), offset: Offset = 0,
                            rel: RelevanceParams = Depends(), merge: MergeParam = "match",
                            catalogue: Catalogue = Depends(get_catalogue)) -> AllSearchResponse:
    models, ready = _ready_models(catalogue)
    start = time.perf_counter()
    query = _clip_query(body, None, "all")  # normalised once, shared by every model of this dimension
    vectors = {m.backbone: query for m in ready if _clip_dim(m) == len(body.vector)}
    if not vectors:
        raise BadRequestError(f"no model takes {len(body.vector)}-dim vectors")
    filters = filters_from(top_k, min_score, flt, offset, rel)
    merged, per_model = await _search_every_model(models, vectors, filters, base_url(request), merge)
    log_search(request, "all", "vector", filters, elapsed_ms(start), merged)
    return AllSearchResponse(query="vector", num_results=len(merged), search_time_ms=elapsed_ms(start),
                             results=merged, per_model=per_model)


@router.post("/{model}/search/vector", response_model=SearchResponse, responses=_TEXT_ERRORS,
             summary="Search one model with your own CLIP embedding (normalised here; the model's head applied)")
async def search_vector(model: str, request: Request, body: VectorQuery, top_k: TopK = 10,
                        min_score: MinScore = None, flt: FilterParams = Depends(), offset: Offset = 0,
                        rel: RelevanceParams = Depends(),
                        catalogue: Catalogue = Depends(get_catalogue)) -> SearchResponse:
    loaded = catalogue.model(model)
    loaded.require()
    filters = filters_from(top_k, min_score, flt, offset, rel)
    check_columns(loaded, filters)
    start = time.perf_counter()
    hits = await search_loaded(loaded, _clip_query(body, _clip_dim(loaded), model), filters, base_url(request))
    log_search(request, model, "vector", filters, elapsed_ms(start), hits)
    return SearchResponse(model=model, query="vector", num_results=len(hits), search_time_ms=elapsed_ms(start),
                          results=hits)
