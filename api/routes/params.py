"""Query parameters shared by the search routes (validated by FastAPI: a bad value is a 422)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

TopK = Annotated[int, Query(ge=1, le=100, description="how many results (1-100)")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="skip this many results first (pagination)")]
MinScore = Annotated[float | None, Query(ge=-1.0, le=1.0, description="drop results below this cosine score")]
Category = Annotated[str | None, Query(max_length=200, description="only products of this category")]
TextQuery = Annotated[str, Query(min_length=1, max_length=1000, description="what to look for, in words")]
