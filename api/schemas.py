"""Pydantic models for everything crossing the HTTP line, named by role."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

ExtraValue = str | int | float | bool | None


class ValidationProblem(BaseModel):
    loc: list[str | int] = Field(description="where in the request")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error body (4xx and 5xx)."""

    detail: str = Field(description="what went wrong, for a person")
    error: str = Field(description="error type, for a program")
    available: list[str] | None = Field(None, description="the models that exist (unknown model only)")
    errors: list[ValidationProblem] | None = Field(None, description="each invalid field (422 only)")


_STATUS_TEXT = {400: "bad request (undecodable image, bad content type, bad filter)",
                401: "no X-API-Key header, or a key that is not (or no longer) valid",
                403: "the key's scopes do not cover this route, or admin routes are disabled (no key configured)",
                404: "unknown or invalid model, unknown product, or no cached image",
                408: "the request body did not arrive within the deadline",
                409: "a build, embedding or backup of this model is already queued or running",
                413: "the body or the image is over its limit", 422: "a parameter or field is invalid",
                429: "too many failed X-API-Key attempts from this address (see Retry-After)",
                503: "the model is not ready, or the server is busy (see Retry-After)"}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the ErrorResponse body."""
    return {code: {"model": ErrorResponse, "description": _STATUS_TEXT[code]} for code in codes}


class SearchHit(BaseModel):
    rank: int
    id: str
    title: str
    category: str | None = None
    score: float = Field(description="cosine similarity in [-1, 1] (raw: its scale differs between models)")
    match: float | None = Field(None, description="calibrated probability (0-1) that the hit is relevant, comparable "
                                                  "across models; null when the model has no calibration yet")
    duplicates: list[str] = Field(default_factory=list,
                                  description="ids of near-duplicates collapsed into this hit (dedupe=true)")
    preview_image: str | None = Field(None, description="the image reference from the catalogue")
    image_url: str | None = Field(None, description="the cached preview, served by this API")
    model: str | None = Field(None, description="the model this hit comes from")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="the product's extra CSV columns; those the model's filters list as "
                                              "number come as JSON numbers")
    matched: list[Literal["id", "words", "picture"]] | None = Field(
        None, description="why a text search returned it: its id or identifier column (sku...) is the query (id), "
                          "its words (words), its picture (picture); a photo refined by words (q) says picture and "
                          "words for the products holding any of them; null for other searches")
    matched_words: list[str] | None = Field(None, description="which of the query's words the product holds "
                                                              "(lower case, accents removed; a text search, or "
                                                              "a photo search's q)")


class SearchResponse(BaseModel):
    model: str
    query_filename: str | None = None
    query: str | None = Field(None, description="the text query (text search), or the words added to a photo (q)")
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
    query: str | None = Field(None, description="the text query (text search), or the words added to a photo (q)")
    num_results: int
    search_time_ms: float
    results: list[SearchHit] = Field(description="one ranking merged across models")
    per_model: dict[str, ModelResults]


ModelState = Literal["ready", "not built", "failed"]
_STATE = "ready: searchable; not built: no catalogue yet (not a fault); failed: built, but it cannot serve now"


class ModelHealth(BaseModel):
    name: str
    state: ModelState = Field(description=_STATE)
    searchable: bool
    products: int
    backbone: str
    index_type: str | None = None
    built_at: str | None = None
    error: str | None = Field(None, description="why a failed model cannot serve (null unless state is failed)")


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded"] = Field(
        description="healthy: every built model serves (models not built yet do not count); degraded: a built "
                    "model cannot serve")
    available_models: int = Field(description="how many models are searchable")
    available_model_names: list[str] = Field(description="the searchable models, by name")
    total_products: int = Field(description="products in the searchable models")
    models: dict[str, ModelHealth]


class ModelInfo(BaseModel):
    name: str
    display_name: str
    description: str
    categories: list[str]
    category_counts: dict[str, int]
    num_products: int
    state: ModelState = Field(description=_STATE)
    searchable: bool
    search_path: str
    text_search_path: str
    backbone: str
    has_head: bool
    currency: str = Field("", description="ISO code of the catalogue's prices: model.json's currency, else "
                                          "IMAGESEARCH_CURRENCY (blank: none)")
    url_template: str = Field("", description="product page link with {id}, from model.json (blank: none)")
    index_type: str | None = None
    built_at: str | None = None
    error: str | None = None
    filters: dict[str, str] = Field(default_factory=dict,
                                    description="filterable extra columns: name -> text (filter=) or number (range=)")
    recall_at_10: float | None = Field(None, description="the index's measured recall@10 against exact search")
    vector_dim: int | None = Field(None, description="length of the CLIP vectors /<model>/search/vector takes "
                                                     "(null until the model is built)")
    words: str | None = Field(None, description="whether text search finds products by their words: indexed, or "
                                                "why not (the Milvus store before Milvus 2.5)")


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
    # "a character strip() keeps": the schema's \s (Unicode White_Space, as clients' regex engines read it) lacks
    # the separators \x1c-\x1f that Python's str.strip() also removes, so they are named here too.
    images: list[Annotated[str, Field(min_length=1, max_length=2048, pattern=r"[^\s\x1c-\x1f]")]] = Field(
        min_length=1, max_length=10, description="1-10 references, each with a non-blank character")
    category: str | None = Field(None, max_length=200)
    extra: dict[str, ExtraValue] = Field(default_factory=dict, max_length=50)

    @field_validator("images")
    @classmethod
    def _nonempty_refs(cls, refs: list[str]) -> list[str]:
        cleaned = [r.strip() for r in refs]
        if any(not r or len(r) > 2048 for r in cleaned):
            raise ValueError("each image must be a non-empty reference of at most 2048 characters")
        return cleaned


class VectorQuery(BaseModel):
    """A query embedding from the client's own CLIP (the model's backbone): normalised here."""

    vector: list[float] = Field(min_length=2, max_length=4096, description="the query embedding")

    @field_validator("vector")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if not all(math.isfinite(v) for v in values):
            raise ValueError("the vector must be finite")
        return values


class AdminResponse(BaseModel):
    model: str
    action: str
    id: str | None = None
    num_products: int
    took_ms: float = Field(description="the whole edit: fetching and embedding the images, then the store write")
    commit_ms: float | None = Field(None, description="the store write alone, until the edit is searchable")
    generation: int | None = Field(None, description="the catalogue's generation after this edit (a backup "
                                                     "records the generation it holds)")
    failed_images: dict[str, str] = Field(default_factory=dict, description="image reference -> reason")


class ReloadResponse(BaseModel):
    model: str
    num_products: int
    index_type: str | None = None
    built_at: str | None = None


class ExplainResponse(BaseModel):
    """Why this match, as numbers: Grad-CAM grids (rows of cells in [0, 1], 1 = drives the match most)
    over the centre square each image was embedded from."""

    model: str
    product_id: str
    score: float = Field(description="cosine similarity of the two CLIP image embeddings (before any head)")
    query_grid: list[list[float]]
    hit_grid: list[list[float]]


class RebuildJobRequest(BaseModel):
    force: bool = Field(False, description="rerun every phase (the image cache is kept)")
    drop_api_edits: bool = Field(False, description="make products.csv the whole truth: drop products added or "
                                                    "changed through the API, bring back CSV products it deleted")


class EmbedJobRequest(BaseModel):
    ids: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(min_length=1, max_length=10_000)


class BackupInfo(BaseModel):
    name: str = Field(description="the backup's folder in the server's backups folder (IMAGESEARCH_BACKUP_DIR)")
    model: str
    store: str = Field(description="the store it was taken from: local or milvus (it restores into either)")
    created_at: str
    generation: int = Field(description="the catalogue generation it holds")
    products: int
    bytes: int
    consistent: bool = Field(description="false only for a Milvus backup during which writes kept landing")


class JobAccepted(BaseModel):
    task_id: str
    status: str = Field(description="queued")
    kind: str
    model: str
