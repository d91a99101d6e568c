"""Request dependencies: settings, the model catalogue, a search's query parameters (validated by FastAPI: a bad
value is a 422) and where it was asked, admin authentication; typed aliases (``SettingsDep``, ``CatalogueDep``,
``SearchParams``) keep routes short."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request
from pydantic import Field

from core.calibration import TEXT
from core.config import Settings
from core.keys import Action, ApiKey, KeyRing

from api.auth import AdminRoute, admin_route, admit
from api.catalogue import Catalogue
from api.guards import CALLER
from api.metrics import Metrics
from api.ranking import SORT_POOL, TEXT_WEIGHT, Filters, Words
from api.searching import Origin


def get_settings(request: Request) -> Settings:
    """The app's Settings; tests swap them with ``app.dependency_overrides[get_settings]``."""
    settings: Settings = request.app.state.settings
    return settings


def get_catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogueDep = Annotated[Catalogue, Depends(get_catalogue)]


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def get_origin(request: Request) -> Origin:
    """The address the client used (hits' image URLs) and the app's query log."""
    return Origin(base_url(request), request.app.state.query_log)


OriginDep = Annotated[Origin, Depends(get_origin)]


def require_admin(request: Request, settings: SettingsDep,
                  x_api_key: Annotated[str | None, Header(description="an API key whose scopes cover this route "
                                                                     "(admin, write:<model> or read:analytics)")]
                  = None) -> ApiKey:
    """The admin route's key: 403 while no key is configured, 401 without a valid key, 403 when its scopes do
    not cover the route. RequestGuard has decided this before the body was read; it is decided again here so
    a route stays safe on its own (a route missing from api.auth's table needs the admin scope)."""
    found: ApiKey | None = getattr(request.state, CALLER, None)
    if found is not None:
        return found
    keys: KeyRing = getattr(request.app.state, "keys", None) or KeyRing()
    route = admin_route(request.method, request.scope["path"]) or AdminRoute(Action.WRITE)
    return admit(keys, settings, x_api_key, route)


Caller = Annotated[ApiKey, Depends(require_admin)]


TopK = Annotated[int, Query(ge=1, le=100, description="how many results (1-100)")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip this many results first (pagination)")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop results below this cosine score")]
Category = Annotated[str | None, Query(max_length=200, description="only products of this category")]
MergeParam = Annotated[Literal["match", "score", "rrf"], Query(
    description="how /all/search merges models: match (default: calibrated match, comparable across models), "
                "score (raw cosine) or rrf (reciprocal-rank fusion)")]
TextQuery = Annotated[str, Query(min_length=1, max_length=10_000, description="what to look for, in words (up to "
                                                                           "10,000 characters; the first 32 words "
                                                                           "count)")]
TextModeParam = Annotated[Literal["hybrid", "semantic", "lexical"], Query(
    description="hybrid (default): products found by their words (title, category, text columns; BM25) and by "
                "their pictures (CLIP), fused; semantic: by pictures only; lexical: by words only. A query equal "
                "to a product's id or identifier column (sku, barcode, gtin, mpn) returns that product first. "
                "What you type is always plain words (quotes, *, NEAR, - are not query syntax)")]


_COLUMN = r"[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}"  # core.store.FILTER_COLUMN
_NUMBER = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"
FilterSpec = Annotated[str, Field(pattern=f"^{_COLUMN}:.*$", max_length=300)]
RangeSpec = Annotated[str, Field(pattern=f"^{_COLUMN}:({_NUMBER})?:({_NUMBER})?$", max_length=200)]


SortParam = Annotated[str, Query(
    pattern=f"^(relevance|-?{_COLUMN})$", max_length=65,
    description=f"relevance (default: best match first), or an extra column to order the best {SORT_POOL} matches "
                "by (after filters, min_match and dedupe): price for ascending, -price for descending; products "
                "without a value come last. GET /models lists each model's columns under filters")]


def _search_params(
    top_k: TopK = 10,
    min_score: MinScore = None,
    category: Category = None,
    filter: Annotated[list[FilterSpec] | None, Query(  # noqa: A002 - the query parameter's public name
        max_length=20, description="equality on an extra CSV column, as column:value (repeatable); "
                                   "GET /models lists each model's filterable columns")] = None,
    range: Annotated[list[RangeSpec] | None, Query(  # noqa: A002 - the query parameter's public name
        max_length=20, description="numeric range on an extra column, as column:min:max with either bound "
                                   "optional, e.g. price:10:50 or weight::2 (repeatable); min > max "
                                   "admits nothing")] = None,
    price_min: Annotated[float | None, Query(allow_inf_nan=False,
                                             description="shorthand for range=price:<min>:")] = None,
    price_max: Annotated[float | None, Query(allow_inf_nan=False,
                                             description="shorthand for range=price::<max>")] = None,
    offset: Offset = 0,
    min_match: Annotated[float | None, Query(
        ge=0.0, le=1.0, description="drop results whose calibrated match is below this (0-1)")] = None,
    dedupe: Annotated[bool, Query(
        description="collapse near-duplicates (cosine at or above the model's duplicate_threshold, default "
                    "0.98) into one hit listing their ids in duplicates")] = True,
    sort: SortParam = "relevance",
) -> Filters:
    """The query parameters every search route takes, declared here once so OpenAPI lists them all (a malformed
    one is a 422), as the search's Filters. A column the model does not have is a 400 naming the ones it has
    (columns differ per model): the search flow checks that."""
    ranges: dict[str, tuple[float | None, float | None]] = {}
    for spec in range or []:
        column, bounds = _split(spec)
        low, high = bounds.split(":", 1)
        ranges[column] = (_bound(low), _bound(high))
    if price_min is not None or price_max is not None:
        ranges["price"] = (price_min, price_max)
    return Filters(top_k=top_k, min_score=min_score, category=category, equals=dict(_split(f) for f in filter or []),
                   ranges=ranges, offset=offset, min_match=min_match, dedupe=dedupe,
                   sort=None if sort == "relevance" else sort)


def _split(spec: str) -> tuple[str, str]:
    column, _, rest = spec.partition(":")  # the pattern guarantees the column and the colon
    return column, rest


def _bound(text: str) -> float | None:
    return float(text) if text else None


SearchParams = Annotated[Filters, Depends(_search_params)]  # an image (or a client vector's, or a product's) search


def _text_search_params(filters: SearchParams) -> Filters:
    return replace(filters, kind=TEXT)


TextSearchParams = Annotated[Filters, Depends(_text_search_params)]  # the same parameters, for a text query


def _photo_search_params(
    filters: SearchParams,
    q: Annotated[str | None, Query(max_length=1000, description=(
        "words to add to the photo: the query moves toward them in CLIP space (\"this, but in red\"); "
        "blank: none"))] = None,
    not_: Annotated[str | None, Query(alias="not", max_length=1000, description=(
        "words to move away from (\"this, but not striped\"); blank: none"))] = None,
    text_weight: Annotated[float, Query(ge=0.0, le=1.0, allow_inf_nan=False, description=(
        f"how far the words pull (0-1, default {TEXT_WEIGHT}): the query is the unit photo vector plus "
        "text_weight times the unit vector of q, minus text_weight times the unit vector of not, made unit again; "
        "0 searches by the photo alone"))] = TEXT_WEIGHT,
) -> Filters:
    """A photo search's parameters plus its refining words (blank words are none: the photo alone)."""
    add, avoid = _words(q), _words(not_)
    return replace(filters, words=Words(add, avoid, text_weight) if add or avoid else None)


def _words(text: str | None) -> str | None:
    return " ".join(text.split()) or None if text else None


PhotoSearchParams = Annotated[Filters, Depends(_photo_search_params)]  # a photo search, optionally refined by words
