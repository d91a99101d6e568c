"""Query parameters shared by the search routes (validated by FastAPI: a bad value is a 422)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import Field

from api.searching import SORT_POOL


TopK = Annotated[int, Query(ge=1, le=100, description="how many results (1-100)")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip this many results first (pagination)")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop results below this cosine score")]
Category = Annotated[str | None, Query(max_length=200, description="only products of this category")]
MergeParam = Annotated[Literal["match", "score", "rrf"], Query(
    description="how /all/search merges models: match (default: calibrated match, comparable across models), "
                "score (raw cosine) or rrf (reciprocal-rank fusion)")]
TextQuery = Annotated[str, Query(min_length=1, max_length=1000, description="what to look for, in words")]


_COLUMN = r"[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}"  # core.store.FILTER_COLUMN
_NUMBER = r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?"
FilterSpec = Annotated[str, Field(pattern=f"^{_COLUMN}:.*$", max_length=300)]
RangeSpec = Annotated[str, Field(pattern=f"^{_COLUMN}:({_NUMBER})?:({_NUMBER})?$", max_length=200)]


class FilterParams:
    """Filters every search route takes, declared here once so OpenAPI lists them all (a malformed one is a
    422). A column the model does not have is a 400 naming the ones it has (columns differ per model)."""

    def __init__(
        self,
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
    ) -> None:
        self.category = category
        self.equals = dict(_split(f) for f in filter or [])
        self.ranges: dict[str, tuple[float | None, float | None]] = {}
        for spec in range or []:
            column, bounds = _split(spec)
            low, high = bounds.split(":", 1)
            self.ranges[column] = (_bound(low), _bound(high))
        if price_min is not None or price_max is not None:
            self.ranges["price"] = (price_min, price_max)


def _split(spec: str) -> tuple[str, str]:
    column, _, rest = spec.partition(":")  # the pattern guarantees the column and the colon
    return column, rest


def _bound(text: str) -> float | None:
    return float(text) if text else None


SortParam = Annotated[str, Query(
    pattern=f"^(relevance|-?{_COLUMN})$", max_length=65,
    description=f"relevance (default: best match first), or an extra column to order the best {SORT_POOL} matches "
                "by (after filters, min_match and dedupe): price for ascending, -price for descending; products "
                "without a value come last. GET /models lists each model's columns under filters")]


class RelevanceParams:
    """Calibrated-match floor and near-duplicate collapsing, taken by every search route."""

    def __init__(
        self,
        min_match: Annotated[float | None, Query(
            ge=0.0, le=1.0, description="drop results whose calibrated match is below this (0-1)")] = None,
        dedupe: Annotated[bool, Query(
            description="collapse near-duplicates (cosine at or above the model's duplicate_threshold, default "
                        "0.98) into one hit listing their ids in duplicates")] = True,
        sort: SortParam = "relevance",
    ) -> None:
        self.min_match = min_match
        self.dedupe = dedupe
        self.sort = None if sort == "relevance" else sort
