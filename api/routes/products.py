"""Product routes: metadata, similar products, and the cached preview image."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path as PathParam, Request
from fastapi.responses import FileResponse

from core.config import Settings
from core.errors import ImageNotAvailableError
from pipeline.download import images_manifest_path
from utils.atomic import read_json

from api.catalogue import Catalogue
from api.deps import base_url, get_catalogue, get_settings
from api.loaded import LoadedModel
from api.routes.params import Category, MinScore, Offset, TopK
from api.routes.search import search_loaded
from api.schemas import ProductInfo, SearchResponse, error_responses
from api.searching import Filters, image_url

router = APIRouter(tags=["products"], responses=error_responses(404, 422, 503))


@router.get("/{model}/products/{product_id}", response_model=ProductInfo, summary="One product's metadata")
async def get_product(model: str, product_id: str, request: Request,
                      catalogue: Catalogue = Depends(get_catalogue),
                      settings: Settings = Depends(get_settings)) -> ProductInfo:
    loaded = catalogue.model(model).require()
    row = loaded.require_bundle().metadata[loaded.position(product_id)]
    images = [str(ref) for ref in row.get("images") or []]
    cached = _cached_views(loaded, settings, images)
    views = f"{base_url(request)}/{model}/products/{quote(str(row.get('id')), safe='')}/views"
    return ProductInfo(model=model, id=str(row.get("id")), title=str(row.get("title") or ""),
                       category=row.get("category") or None, preview_image=row.get("preview_image"),
                       image_url=image_url(base_url(request), model, row), images=images,
                       view_urls=[f"{views}/{n}" if c else None for n, c in enumerate(cached)],
                       extra=row.get("extra") or {})


def _cached_views(loaded: LoadedModel, settings: Settings, images: list[str]) -> list[str | None]:
    """Each image reference's file name in the image cache (None where it did not download)."""
    try:
        entries = read_json(images_manifest_path(loaded.spec.paths(settings))).get("images") or {}
    except (OSError, ValueError, AttributeError):
        entries = {}
    return [(entries.get(ref) or {}).get("cache") if (entries.get(ref) or {}).get("status") == "ok" else None
            for ref in images]


@router.get("/{model}/products/{product_id}/similar", response_model=SearchResponse,
            summary="Products that look like this one (the product itself left out)")
async def similar_products(model: str, product_id: str, request: Request, top_k: TopK = 10,
                           min_score: MinScore = None, category: Category = None, offset: Offset = 0,
                           catalogue: Catalogue = Depends(get_catalogue)) -> SearchResponse:
    loaded = catalogue.model(model).require()
    start = time.perf_counter()
    vector = loaded.vector(loaded.position(product_id))
    filters = Filters(top_k=top_k, min_score=min_score, category=category, exclude_id=product_id,
                      offset=offset)
    # the stored vector is already in index space: search without the head
    hits = await search_loaded(_headless(loaded), vector, filters, base_url(request))
    return SearchResponse(model=model, query=f"similar:{product_id}", num_results=len(hits),
                          search_time_ms=round((time.perf_counter() - start) * 1000, 3), results=hits)


def _headless(loaded: LoadedModel) -> LoadedModel:
    """The same snapshot searched without its head (for vectors already in index space)."""
    return loaded if loaded.head is None else replace(loaded, head=None)


@router.get("/{model}/products/{product_id}/image", response_class=FileResponse,
            summary="The product's cached preview image (JPEG)")
async def product_image(model: str, product_id: str, catalogue: Catalogue = Depends(get_catalogue),
                        settings: Settings = Depends(get_settings)) -> FileResponse:
    loaded = catalogue.model(model).require()
    row = loaded.require_bundle().metadata[loaded.position(product_id)]
    return _cached_file(loaded, settings, row.get("preview_cache"), product_id)


@router.get("/{model}/products/{product_id}/views/{n}", response_class=FileResponse,
            summary="The cached copy of the product's n-th image (0-based, in catalogue order)")
async def product_view(model: str, product_id: str, n: Annotated[int, PathParam(ge=0, le=99)],
                       catalogue: Catalogue = Depends(get_catalogue),
                       settings: Settings = Depends(get_settings)) -> FileResponse:
    loaded = catalogue.model(model).require()
    images = [str(r) for r in loaded.require_bundle().metadata[loaded.position(product_id)].get("images") or []]
    cached = _cached_views(loaded, settings, images[n:n + 1])
    return _cached_file(loaded, settings, cached[0] if cached else None, product_id)


def _cached_file(loaded: LoadedModel, settings: Settings, cached: object, product_id: str) -> FileResponse:
    cache_dir = loaded.spec.paths(settings).image_cache.resolve()
    path = (cache_dir / str(cached)).resolve() if cached else None
    if path is None or not path.is_relative_to(cache_dir) or not path.is_file():
        raise ImageNotAvailableError(loaded.name, product_id)
    return FileResponse(path, media_type=_media_type(path), headers={"Cache-Control": "public, max-age=3600"})


def _media_type(path: Path) -> str:
    return {".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}.get(path.suffix.lower(), "image/jpeg")
