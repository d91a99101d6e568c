"""Pydantic models for everything crossing the HTTP line, named by role."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

ExtraValue = str | int | float | bool | None


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong, for a person")
    error: str = Field(description="error type, for a program")


class SearchHit(BaseModel):
    rank: int
    id: str
    title: str
    category: str | None = None
    score: float = Field(description="cosine similarity in [-1, 1]")
    preview_image: str | None = Field(None, description="the image reference from the catalogue")
    image_url: str | None = Field(None, description="the cached preview, served by this API")
    model: str | None = Field(None, description="the model this hit comes from (merged rankings)")
    extra: dict[str, Any] = Field(default_factory=dict, description="the product's extra CSV columns")


class SearchResponse(BaseModel):
    model: str
    query_filename: str | None = None
    query: str | None = Field(None, description="the text query (text search)")
    num_results: int
    search_time_ms: float
    results: list[SearchHit]


class ModelResults(BaseModel):
    model: str
    num_results: int
    results: list[SearchHit]
    error: str | None = Field(None, description="why this model was skipped (not searchable)")


class AllSearchResponse(BaseModel):
    model: str = "all"
    query_filename: str | None = None
    query: str | None = Field(None, description="the text query (text search)")
    num_results: int
    search_time_ms: float
    results: list[SearchHit] = Field(description="one ranking merged across models")
    per_model: dict[str, ModelResults]


class ModelHealth(BaseModel):
    name: str
    searchable: bool
    products: int
    backbone: str
    index_type: str | None = None
    built_at: str | None = None
    error: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="healthy: every model serves; degraded: some do not")
    available_models: list[str]
    total_products: int
    models: dict[str, ModelHealth]


class ModelInfo(BaseModel):
    name: str
    display_name: str
    description: str
    categories: list[str]
    category_counts: dict[str, int]
    num_products: int
    searchable: bool
    search_path: str
    text_search_path: str
    backbone: str
    has_head: bool
    currency: str = Field("", description="ISO code of the catalogue's prices, from model.json (blank: unknown)")
    url_template: str = Field("", description="product page link with {id}, from model.json (blank: none)")
    index_type: str | None = None
    built_at: str | None = None
    error: str | None = None


class ModelsResponse(BaseModel):
    count: int
    models: list[ModelInfo]


class ProductInfo(BaseModel):
    model: str
    id: str
    title: str
    category: str | None = None
    preview_image: str | None = None
    image_url: str | None = None
    images: list[str] = Field(default_factory=list)
    view_urls: list[str | None] = Field(default_factory=list,
                                        description="per image: its cached copy served by this API, or null")
    extra: dict[str, Any] = Field(default_factory=dict)


class ProductUpsert(BaseModel):
    """A product to add or update; its images are fetched (http(s) URL or a path inside data/<model>/)."""

    id: str = Field(min_length=1, max_length=256, pattern=r"^[^/\\\x00-\x1f]+$")
    title: str = Field(min_length=1, max_length=1000)
    images: list[str] = Field(min_length=1, max_length=10)
    category: str | None = Field(None, max_length=200)
    extra: dict[str, ExtraValue] = Field(default_factory=dict, max_length=50)

    @field_validator("images")
    @classmethod
    def _nonempty_refs(cls, refs: list[str]) -> list[str]:
        cleaned = [r.strip() for r in refs]
        if any(not r or len(r) > 2048 for r in cleaned):
            raise ValueError("each image must be a non-empty reference of at most 2048 characters")
        return cleaned


class AdminResponse(BaseModel):
    model: str
    action: str
    id: str | None = None
    num_products: int
    took_ms: float
    failed_images: dict[str, str] = Field(default_factory=dict, description="image reference -> reason")


class ReloadResponse(BaseModel):
    model: str
    num_products: int
    index_type: str | None = None
    built_at: str | None = None
