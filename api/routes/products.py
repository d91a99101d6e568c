"""Product routes: metadata, similar products, and the cached preview image."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from core.config import Settings
from core.errors import ImageNotAvailableError, ProductNotFoundError
from core.store import typed_extra

from api.catalogue import Catalogue
from api.deps import base_url, get_catalogue, get_settings
from api.loaded import ServedModel
from api.routes.params import FilterParams, MinScore, Offset, RelevanceParams, TopK
from api.routes.search import elapsed_ms, filters_from, search_loaded
from api.schemas import ProductInfo, SearchResponse, error_responses
from api.searching import check_columns, image_url, log_search

router = APIRouter(tags=["products"], responses=error_responses(404, 422, 503))


@router.get("/{model}/products/{product_id}", response_model=ProductInfo, summary="One product's metadata")
async def get_product(model: str, product_id: str, request: Request,
                      catalogue: Catalogue = Depends(get_catalogue)) -> ProductInfo:
    loaded = catalogue.model(model)
    p = loaded.product(product_id)
    views = f"{base_url(request)}/{model}/products/{quote(p.id, safe='')}/views"
    return ProductInfo(model=model, id=p.id, title=p.title, category=p.category or None,
                       preview_image=p.preview_image or None, image_url=image_url(base_url(request), model, p),
                       images=list(p.images), extra=typed_extra(p.extra, loaded.require().columns()),
                       view_urls=[f"{views}/{n}" if p.cached_view(n) else None for n in range(len(p.images))])


@router.get("/{model}/products/{product_id}/similar", response_model=SearchResponse,
            summary="Products that look like this one (the product itself left out)")
async def similar_products(model: str, product_id: str, request: Request, top_k: TopK = 10,
                           min_score: MinScore = None, flt: FilterParams = Depends(), offset: Offset = 0,
                           rel: RelevanceParams = Depends(),
                           catalogue: Catalogue = Depends(get_catalogue)) -> SearchResponse:
    loaded = catalogue.model(model)
    loaded.product(product_id)  # 404 when absent
    filters = replace(filters_from(top_k, min_score, flt, offset, rel), exclude_id=product_id)
    check_columns(loaded, filters)
    start = time.perf_counter()
    try:
        vector = loaded.require().vectors([product_id])[0]
    except KeyError:  # deleted since it was read, by another process
        raise ProductNotFoundError(model, product_id) from None
    # the stored vector is already in index space: search without the head
    hits = await search_loaded(loaded, vector, filters, base_url(request), projected=True)
    took = elapsed_ms(start)
    log_search(request, model, "similar", filters, took, hits)
    return SearchResponse(model=model, query=f"similar:{product_id}", num_results=len(hits), search_time_ms=took,
                          results=hits)


@router.get("/{model}/products/{product_id}/image", response_class=FileResponse,
            summary="The product's cached preview image (JPEG)")
async def product_image(model: str, product_id: str, catalogue: Catalogue = Depends(get_catalogue),
                        settings: Settings = Depends(get_settings)) -> FileResponse:
    loaded = catalogue.model(model)
    return _cached_file(loaded, settings, loaded.product(product_id).preview_cache, product_id)


@router.get("/{model}/products/{product_id}/views/{n}", response_class=FileResponse,
            summary="The cached copy of the product's n-th image (0-based, in catalogue order)")
async def product_view(model: str, product_id: str, n: Annotated[int, PathParam(ge=0, le=99)],
                       catalogue: Catalogue = Depends(get_catalogue),
                       settings: Settings = Depends(get_settings)) -> FileResponse:
    loaded = catalogue.model(model)
    return _cached_file(loaded, settings, loaded.product(product_id).cached_view(n), product_id)


def _cached_file(loaded: ServedModel, settings: Settings, cached: str | None, product_id: str) -> FileResponse:
    cache_dir = loaded.spec.paths(settings).image_cache.resolve()
    path = (cache_dir / cached).resolve() if cached else None
    if path is None or not path.is_relative_to(cache_dir) or not path.is_file():
        raise ImageNotAvailableError(loaded.name, product_id)
    return FileResponse(path, media_type=_media_type(path), headers={"Cache-Control": "public, max-age=3600"})


def _media_type(path: Path) -> str:
    return {".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}.get(path.suffix.lower(), "image/jpeg")
