"""Admin routes (header X-API-Key): add/update/delete one product without a rebuild, reload an index."""

from __future__ import annotations

import time

from anyio import to_thread
from fastapi import APIRouter, Depends, Request

from api.deps import CatalogueDep, require_admin
from api.guards import AUDIT_PRODUCT
from api.editing import delete_product, upsert_product
from api.schemas import AdminResponse, ProductUpsert, ReloadResponse, error_responses

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(400, 401, 403, 404, 408, 413, 422, 429, 503))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


@router.post("/{model}/products", response_model=AdminResponse,
             summary="Add or update one product: its images are fetched, embedded and indexed")
async def add_product(model: str, product: ProductUpsert, request: Request,
                      catalogue: CatalogueDep) -> AdminResponse:
    setattr(request.state, AUDIT_PRODUCT, product.id)
    catalogue.model(model).require()
    start = time.perf_counter()
    fresh, failed, commit_ms, generation = await to_thread.run_sync(upsert_product, catalogue, model, product)
    return AdminResponse(model=model, action="upserted", id=product.id, num_products=fresh.num_products,
                         took_ms=_ms(start), commit_ms=round(commit_ms, 3), generation=generation,
                         failed_images=failed)


@router.delete("/{model}/products/{product_id}", response_model=AdminResponse, summary="Delete one product")
async def remove_product(model: str, product_id: str, request: Request,
                         catalogue: CatalogueDep) -> AdminResponse:
    setattr(request.state, AUDIT_PRODUCT, product_id)
    catalogue.model(model).require()
    start = time.perf_counter()
    fresh, commit_ms, generation = await to_thread.run_sync(delete_product, catalogue, model, product_id)
    return AdminResponse(model=model, action="deleted", id=product_id, num_products=fresh.num_products,
                         took_ms=_ms(start), commit_ms=round(commit_ms, 3), generation=generation)


@router.post("/{model}/reload", response_model=ReloadResponse,
             summary="Reload the model's index from disk now (a failed reload keeps the old one serving)")
async def reload_model(model: str, catalogue: CatalogueDep) -> ReloadResponse:
    catalogue.model(model)
    fresh = await to_thread.run_sync(catalogue.reload, model)
    info = fresh.index_info
    return ReloadResponse(model=model, num_products=fresh.num_products, index_type=info.get("kind"),
                          built_at=info.get("built_at"))
