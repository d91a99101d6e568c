"""System routes: health, the model list, Prometheus metrics."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from core.config import Settings
from core.errors import ImageSearchError

from api.deps import CatalogueDep, get_metrics
from api.loaded import ServedModel
from api.metrics import Metrics
from api.schemas import HealthResponse, ModelHealth, ModelInfo, ModelsResponse

router = APIRouter(tags=["system"])


def _health(m: ServedModel) -> ModelHealth:
    info = m.index_info
    return ModelHealth(name=m.name, state=m.state, searchable=m.searchable, products=m.num_products,
                       backbone=m.backbone, index_type=info.get("kind"), built_at=info.get("built_at"),
                       error=m.problem if m.state == "failed" else None)


def _info(m: ServedModel, settings: Settings) -> ModelInfo:
    try:
        stats = m.stats() if m.searchable else None
    except ImageSearchError:  # the store cannot count now (Milvus unreachable): listed without its counts
        stats = None
    counts = dict(stats.categories) if stats else {}
    info = m.index_info
    return ModelInfo(name=m.name, display_name=m.spec.display_name or m.name, description=m.spec.description,
                     categories=list(m.spec.categories) or list(counts), category_counts=counts,
                     num_products=m.num_products, state=m.state, searchable=m.searchable,
                     search_path=f"/{m.name}/search", text_search_path=f"/{m.name}/search/text",
                     backbone=m.backbone, has_head=m.head is not None,
                     index_type=info.get("kind"), built_at=info.get("built_at"), error=m.problem,
                     currency=m.spec.currency_for(settings), url_template=m.spec.url_template,
                     filters=dict(stats.columns) if stats else {},
                     recall_at_10=(info.get("tuning") or {}).get("recall_at_10"),
                     vector_dim=m.query_dim if m.searchable else None,
                     words=(m.store.lexical_note or "indexed") if m.store is not None else None)


@router.get("/health", response_model=HealthResponse, summary="Overall status and per-model readiness")
async def health(catalogue: CatalogueDep) -> HealthResponse:
    models = catalogue.models()
    ready = [m for m in models if m.searchable]
    status = "degraded" if any(m.state == "failed" for m in models) else "healthy"
    return HealthResponse(status=status, available_models=len(ready), available_model_names=[m.name for m in ready],
                          total_products=sum(m.num_products for m in ready),
                          models={m.name: _health(m) for m in models})


@router.get("/models", response_model=ModelsResponse, summary="Every model, searchable or not")
async def list_models(catalogue: CatalogueDep) -> ModelsResponse:
    # off the event loop: a model's first counts scan its store
    infos = await to_thread.run_sync(lambda: [_info(m, catalogue.settings) for m in catalogue.models()])
    return ModelsResponse(count=len(infos), models=infos)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
async def metrics(catalogue: CatalogueDep,
                  registry: Metrics = Depends(get_metrics)) -> PlainTextResponse:
    models = catalogue.models()
    gauges = {
        "imagesearch_model_products": [({"model": m.name}, m.num_products) for m in models],
        "imagesearch_model_searchable": [({"model": m.name}, int(m.searchable)) for m in models],
        "imagesearch_encoder_batches": [({"backbone": b}, n) for b, (n, _) in catalogue.batch_stats().items()],
        "imagesearch_encoder_batched_queries": [({"backbone": b}, n) for b, (_, n) in catalogue.batch_stats().items()],
    }
    return PlainTextResponse(registry.render(gauges), media_type=CONTENT_TYPE_LATEST)
