"""Product routes: metadata, similar products, and the cached preview image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from core.config import Settings
from core.errors import ImageNotAvailableError
from core.store import typed_extra

from api import searching
from api.deps import CatalogueDep, OriginDep, SearchParams, SettingsDep, base_url
from api.loaded import ServedModel
from api.ranking import image_url
from api.schemas import ProductInfo, SearchResponse, error_responses

router = APIRouter(tags=["products"], responses=error_responses(404, 422, 503))


@router.get("/{model}/products/{product_id}", response_model=ProductInfo, summary="One product's metadata")
async def get_product(model: str, product_id: str, request: Request,
                      catalogue: CatalogueDep) -> ProductInfo:
    loaded = catalogue.model(model)
    p = loaded.product(product_id)
    views = f"{base_url(request)}/{model}/products/{quote(p.id, safe='')}/views"
    return ProductInfo(model=model, id=p.id, title=p.title, category=p.category or None,
                       preview_image=p.preview_image or None, image_url=image_url(base_url(request), model, p),
                       images=list(p.images), extra=typed_extra(p.extra, loaded.require().columns()),
                       view_urls=[f"{views}/{n}" if p.cached_view(n) else None for n in range(len(p.images))])


@router.get("/{model}/products/{product_id}/similar", response_model=SearchResponse,
            summary="Products that look like this one (the product itself left out)")
async def similar_products(model: str, product_id: str, filters: SearchParams, catalogue: CatalogueDep,
                           origin: OriginDep) -> SearchResponse:
    return await searching.similar(catalogue, model, product_id, filters, origin)


@router.get("/{model}/products/{product_id}/image", response_class=FileResponse,
            summary="The product's cached preview image (JPEG)")
async def product_image(model: str, product_id: str, catalogue: CatalogueDep,
                        settings: SettingsDep) -> FileResponse:
    loaded = catalogue.model(model)
    return _cached_file(loaded, settings, loaded.product(product_id).preview_cache, product_id)


@router.get("/{model}/products/{product_id}/views/{n}", response_class=FileResponse,
            summary="The cached copy of the product's n-th image (0-based, in catalogue order)")
async def product_view(model: str, product_id: str, n: Annotated[int, PathParam(ge=0, le=99)],
                       catalogue: CatalogueDep,
                       settings: SettingsDep) -> FileResponse:
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
