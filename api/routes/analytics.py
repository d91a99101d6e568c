"""Admin: the merchant's analytics (catalogue map, clusters, search log). The map and the clusters are
computed once per catalogue generation (api/analytics.py); each answer says which generation it shows and
when it was computed."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request

from core.query_log import summarize

from api.analytics import AnalyticsCache, Computed
from api.deps import CatalogueDep, SettingsDep, base_url, require_admin
from api.schemas import error_responses

router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=error_responses(400, 401, 403, 404, 408, 413, 422, 429, 503))


def get_analytics(request: Request) -> AnalyticsCache:
    cache: AnalyticsCache = request.app.state.analytics
    return cache


def _stamp(found: Computed) -> dict[str, Any]:
    return {"generation": found.generation, "computed_at": found.computed_at}


@router.get("/{model}/analytics/map", summary="2-D map of the catalogue (PCA then t-SNE on a sample), computed "
                                              "once per catalogue generation")
async def catalogue_map(model: str, request: Request, catalogue: CatalogueDep, settings: SettingsDep,
                        sample: Annotated[int, Query(ge=2, le=5000)] = 1500,
                        cache: AnalyticsCache = Depends(get_analytics)) -> dict[str, Any]:
    from training.catalogue_map import map_points, sample as take

    loaded = catalogue.model(model)
    store = loaded.require()
    found = await to_thread.run_sync(cache.get, loaded, ("map", sample, settings.seed),
                                     lambda: map_points(take(store, sample, settings.seed), settings.seed))
    base = base_url(request)  # per request (the address the client used); the cached points stay as they are
    points = [{**p, "image_url": f"{base}/{model}/products/{p['id']}/image"} for p in found.value]
    return {"model": model, "method": "pca+tsne", "points": points, "products": store.count(), **_stamp(found)}


@router.get("/{model}/analytics/clusters", summary="k-means clusters: representatives and category purity, "
                                                   "computed once per catalogue generation")
async def catalogue_clusters(model: str, catalogue: CatalogueDep, settings: SettingsDep,
                             k: Annotated[int, Query(ge=1, le=100)] = 8,
                             sample: Annotated[int, Query(ge=2, le=20000)] = 5000,
                             cache: AnalyticsCache = Depends(get_analytics)) -> dict[str, Any]:
    from training.catalogue_map import clusters, sample as take

    loaded = catalogue.model(model)
    store = loaded.require()
    found = await to_thread.run_sync(cache.get, loaded, ("clusters", k, sample, settings.seed),
                                     lambda: clusters(take(store, sample, settings.seed), k, settings.seed))
    return {"model": model, "k": k, "clusters": found.value, **_stamp(found)}


@router.get("/analytics/queries", summary="Search analytics from the query log, per model and day")
async def query_analytics(catalogue: CatalogueDep, settings: SettingsDep,
                          days: Annotated[int, Query(ge=1, le=3650)] = 30) -> dict[str, Any]:
    def categories(model: str, ids: list[str]) -> dict[str, str]:
        try:
            store = catalogue.model(model).require()
        except Exception:
            return {}
        return {p.id: p.category for p in store.get(ids) if p.category}

    rows = await to_thread.run_sync(lambda: summarize(settings.query_log_path, days=days, categories=categories))
    return {"enabled": settings.query_log_enabled, "retention_days": settings.query_log_retention_days,
            "days": rows}
