"""Search routes: by image (one model, all models, legacy) and by text."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from anyio import to_thread
from fastapi import APIRouter, Depends, Request

from core.config import Settings
from core.errors import IndexNotReadyError

from api.catalogue import Catalogue
from api.deps import base_url, get_catalogue, get_settings
from api.embedder import embed_query_image
from api.loaded import LoadedModel
from api.routes.params import Category, MinScore, Offset, TextQuery, TopK
from api.schemas import AllSearchResponse, ModelResults, SearchHit, SearchResponse, error_responses
from api.searching import Filters, merge_rankings, nearest, query_vector, to_hits
from api.uploads import UPLOAD_OPENAPI, read_query_image

router = APIRouter(tags=["search"])
_IMAGE_ERRORS = error_responses(400, 404, 408, 413, 422, 503)
_TEXT_ERRORS = error_responses(400, 404, 422, 503)

LEGACY_MODEL = "general"


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


async def search_loaded(model: LoadedModel, clip_vector: np.ndarray, filters: Filters, base: str, *,
                        tag_model: bool = False) -> list[SearchHit]:
    """Search one model with a raw CLIP query vector, off the event loop."""
    def _work() -> list[SearchHit]:
        hits = to_hits(model, nearest(model, query_vector(model, clip_vector), filters), base, tag_model=tag_model)
        return [h.model_copy(update={"rank": h.rank + filters.offset}) for h in hits] if filters.offset else hits

    return await to_thread.run_sync(_work)


async def _search_image(name: str, request: Request, filters: Filters, catalogue: Catalogue,
                        settings: Settings) -> SearchResponse:
    model = catalogue.model(name).require()
    embedder = catalogue.embedder(model.backbone)
    upload = await read_query_image(request, settings.max_upload_bytes)
    start = time.perf_counter()
    vectors = await embed_query_image(upload.data, [embedder], max_pixels=settings.max_image_pixels,
                                      max_aspect=settings.max_aspect_ratio)
    hits = await search_loaded(model, vectors[model.backbone], filters, base_url(request))
    return SearchResponse(model=name, query_filename=upload.filename, num_results=len(hits),
                          search_time_ms=_elapsed_ms(start), results=hits)


def _ready_models(catalogue: Catalogue) -> tuple[list[LoadedModel], list[LoadedModel]]:
    models = catalogue.models()
    ready = [m for m in models if m.searchable]
    if not ready:
        raise IndexNotReadyError("all", "no model has a usable index yet")
    return models, ready


async def _search_every_model(models: list[LoadedModel], vectors: dict[str, np.ndarray], filters: Filters,
                              base: str) -> tuple[list[SearchHit], dict[str, ModelResults]]:
    """Each model searched with its backbone's query vector, then one merged ranking. A later page
    (``offset``) needs every model's hits down to that depth to rank the merged page right."""
    deep = replace(filters, top_k=filters.offset + filters.top_k, offset=0)
    found: dict[str, list[SearchHit]] = {}
    per_model: dict[str, ModelResults] = {}
    for model in models:
        if not model.searchable:
            per_model[model.name] = ModelResults(model=model.name, num_results=0, results=[], error=model.error)
            continue
        found[model.name] = await search_loaded(model, vectors[model.backbone], deep, base, tag_model=True)
        page = found[model.name][filters.offset:]
        per_model[model.name] = ModelResults(model=model.name, num_results=len(page), results=page)
    return merge_rankings(list(found.values()), deep.top_k)[filters.offset:], per_model


@router.post("/all/search", response_model=AllSearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Search every model with one image; per-model results and one merged ranking")
async def search_all(request: Request, top_k: TopK = 10, min_score: MinScore = None, category: Category = None,
                     offset: Offset = 0, catalogue: Catalogue = Depends(get_catalogue),
                     settings: Settings = Depends(get_settings)) -> AllSearchResponse:
    models, ready = _ready_models(catalogue)
    embedders = {m.backbone: catalogue.embedder(m.backbone) for m in ready}  # one query pass per backbone
    upload = await read_query_image(request, settings.max_upload_bytes)
    start = time.perf_counter()
    vectors = await embed_query_image(upload.data, list(embedders.values()), max_pixels=settings.max_image_pixels,
                                      max_aspect=settings.max_aspect_ratio)
    filters = Filters(top_k=top_k, min_score=min_score, category=category, offset=offset)
    merged, per_model = await _search_every_model(models, vectors, filters, base_url(request))
    return AllSearchResponse(query_filename=upload.filename, num_results=len(merged), search_time_ms=_elapsed_ms(start),
                             results=merged, per_model=per_model)


@router.get("/all/search/text", response_model=AllSearchResponse, responses=_TEXT_ERRORS,
            summary="Search every model with a text query; per-model results and one merged ranking")
async def search_all_text(request: Request, q: TextQuery, top_k: TopK = 10, min_score: MinScore = None,
                          category: Category = None, offset: Offset = 0,
                          catalogue: Catalogue = Depends(get_catalogue)) -> AllSearchResponse:
    models, ready = _ready_models(catalogue)
    start = time.perf_counter()
    vectors = {b: await catalogue.embedder(b).embed_text(q) for b in {m.backbone for m in ready}}  # once per backbone
    filters = Filters(top_k=top_k, min_score=min_score, category=category, offset=offset)
    merged, per_model = await _search_every_model(models, vectors, filters, base_url(request))
    return AllSearchResponse(query=q, num_results=len(merged), search_time_ms=_elapsed_ms(start), results=merged,
                             per_model=per_model)


@router.post("/search_products/", response_model=SearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Legacy route: the same as /general/search")
async def search_products_legacy(request: Request, top_k: TopK = 10, min_score: MinScore = None,
                                 category: Category = None, offset: Offset = 0,
                                 catalogue: Catalogue = Depends(get_catalogue),
                                 settings: Settings = Depends(get_settings)) -> SearchResponse:
    filters = Filters(top_k=top_k, min_score=min_score, category=category, offset=offset)
    return await _search_image(LEGACY_MODEL, request, filters, catalogue, settings)


@router.post("/{model}/search", response_model=SearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Search one model by image (multipart field 'file' or a raw image/* body)")
async def search_model(model: str, request: Request, top_k: TopK = 10, min_score: MinScore = None,
                       category: Category = None, offset: Offset = 0,
                       catalogue: Catalogue = Depends(get_catalogue),
                       settings: Settings = Depends(get_settings)) -> SearchResponse:
    filters = Filters(top_k=top_k, min_score=min_score, category=category, offset=offset)
    return await _search_image(model, request, filters, catalogue, settings)


@router.get("/{model}/search/text", response_model=SearchResponse, responses=_TEXT_ERRORS,
            summary="Search one model's images with a text query (CLIP text tower)")
async def search_text(model: str, request: Request, q: TextQuery, top_k: TopK = 10, min_score: MinScore = None,
                      category: Category = None, offset: Offset = 0,
                      catalogue: Catalogue = Depends(get_catalogue)) -> SearchResponse:
    loaded = catalogue.model(model).require()
    start = time.perf_counter()
    vector = await catalogue.embedder(loaded.backbone).embed_text(q)
    filters = Filters(top_k=top_k, min_score=min_score, category=category, offset=offset)
    hits = await search_loaded(loaded, vector, filters, base_url(request))
    return SearchResponse(model=model, query=q, num_results=len(hits), search_time_ms=_elapsed_ms(start),
                          results=hits)
