"""Query parameters shared by the search routes (validated by FastAPI: a bad value is a 422)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

from core.errors import BadRequestError
from core.store import FILTER_COLUMN, Filter

TopK = Annotated[int, Query(ge=1, le=100, description="how many results (1-100)")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip this many results first (pagination)")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop results below this cosine score")]
Category = Annotated[str | None, Query(max_length=200, description="only products of this category")]
MergeParam = Annotated[Literal["match", "score", "rrf"], Query(
    description="how /all/search merges models: match (default: calibrated match, comparable across models), "
                "score (raw cosine) or rrf (reciprocal-rank fusion)")]
TextQuery = Annotated[str, Query(min_length=1, max_length=1000, description="what to look for, in words")]


class FilterParams:
    """Filters every search route takes, declared here once so OpenAPI lists them all."""

    def __init__(
        self,
        category: Category = None,
        filter: Annotated[list[str] | None, Query(  # noqa: A002 - the query parameter's public name
            max_length=20, description="equality on an extra CSV column, as column:value (repeatable); "
                                       "GET /models lists each model's filterable columns")] = None,
        range: Annotated[list[str] | None, Query(  # noqa: A002 - the query parameter's public name
            max_length=20, description="numeric range on an extra column, as column:min:max with either bound "
                                       "optional, e.g. price:10:50 or weight::2 (repeatable)")] = None,
        price_min: Annotated[float | None, Query(description="shorthand for range=price:<min>:")] = None,
        price_max: Annotated[float | None, Query(description="shorthand for range=price::<max>")] = None,
    ) -> None:
        self.category = category
        self.equals = dict(_split(f, 2, "filter") for f in filter or [])
        self.ranges: dict[str, tuple[float | None, float | None]] = {}
        for spec in range or []:
            column, bounds = _split(spec, 3, "range")
            low, high = bounds.split(":", 1)
            self.ranges[column] = (_bound(low, spec), _bound(high, spec))
        if price_min is not None or price_max is not None:
            self.ranges["price"] = (price_min, price_max)
        for column, (lo, hi) in self.ranges.items():
            if not Filter.check_range(lo, hi):
                raise BadRequestError(f"range on {column!r}: bounds must be finite numbers with min <= max")


class RelevanceParams:
    """Calibrated-match floor and near-duplicate collapsing, taken by every search route."""

    def __init__(
        self,
        min_match: Annotated[float | None, Query(
            ge=0.0, le=1.0, description="drop results whose calibrated match is below this (0-1)")] = None,
        dedupe: Annotated[bool, Query(
            description="collapse near-duplicates (cosine at or above the model's duplicate_threshold, default "
                        "0.94) into one hit listing their ids in duplicates")] = True,
    ) -> None:
        self.min_match = min_match
        self.dedupe = dedupe


def _split(spec: str, parts: int, name: str) -> tuple[str, str]:
    column, sep, rest = spec.partition(":")
    if not sep or not FILTER_COLUMN.fullmatch(column) or (parts == 3 and rest.count(":") != 1):
        shape = "column:value" if parts == 2 else "column:min:max"
        raise BadRequestError(f"{name}={spec[:100]!r}: expected {shape} with a column name of letters, digits, "
                              "spaces, '_', '-' or '.'")
    return column, rest


def _bound(text: str, spec: str) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise BadRequestError(f"range={spec[:100]!r}: {text[:40]!r} is not a number") from None
