"""Search routes: by image (one model, all models, legacy), by text and by a client's vector. Each reads the
request and hands it to the search flow (api/searching.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from core.config import Settings

from api import searching
from api.deps import (CatalogueDep, MergeParam, OriginDep, PhotoSearchParams, SearchParams, SettingsDep, TextModeParam,
                      TextQuery, TextSearchParams)
from api.schemas import AllSearchResponse, SearchResponse, VectorQuery, error_responses
from api.uploads import UPLOAD_OPENAPI, QueryImage, read_query_image

router = APIRouter(tags=["search"])
_IMAGE_ERRORS = error_responses(400, 404, 408, 413, 422, 503)
_TEXT_ERRORS = error_responses(400, 404, 422, 503)

LEGACY_MODEL = "general"


def _reader(request: Request, settings: Settings) -> searching.ReadImage:
    """Reads the query image (multipart field 'file' or a raw image/* body) when the search flow asks for it."""
    async def read() -> QueryImage:
        return await read_query_image(request, settings.max_upload_bytes)

    return read


@router.post("/all/search", response_model=AllSearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Search every model with one image (optionally refined by words); per-model results and one "
                     "merged ranking")
async def search_all(request: Request, filters: PhotoSearchParams, catalogue: CatalogueDep, settings: SettingsDep,
                     origin: OriginDep, merge: MergeParam = "match") -> AllSearchResponse:
    return await searching.all_by_image(catalogue, filters, merge, _reader(request, settings), settings.image_policy,
                                        origin)


@router.get("/all/search/text", response_model=AllSearchResponse, responses=_TEXT_ERRORS,
            summary="Search every model with a text query; per-model results and one merged ranking")
async def search_all_text(q: TextQuery, filters: TextSearchParams, catalogue: CatalogueDep, origin: OriginDep,
                          merge: MergeParam = "match", mode: TextModeParam = "hybrid") -> AllSearchResponse:
    return await searching.all_by_text(catalogue, q, filters, merge, origin, mode)


@router.post("/search_products/", response_model=SearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Legacy route: the same as /general/search")
async def search_products_legacy(request: Request, filters: PhotoSearchParams, catalogue: CatalogueDep,
                                 settings: SettingsDep, origin: OriginDep) -> SearchResponse:
    return await searching.by_image(catalogue, LEGACY_MODEL, filters, _reader(request, settings),
                                    settings.image_policy, origin)


@router.post("/{model}/search", response_model=SearchResponse, openapi_extra=UPLOAD_OPENAPI, responses=_IMAGE_ERRORS,
             summary="Search one model by image (multipart field 'file' or a raw image/* body), optionally refined "
                     "by words (q, not, text_weight)")
async def search_model(model: str, request: Request, filters: PhotoSearchParams, catalogue: CatalogueDep,
                       settings: SettingsDep, origin: OriginDep) -> SearchResponse:
    return await searching.by_image(catalogue, model, filters, _reader(request, settings), settings.image_policy,
                                    origin)


@router.get("/{model}/search/text", response_model=SearchResponse, responses=_TEXT_ERRORS,
            summary="Search one model with a text query: by words and pictures (hybrid), pictures or words")
async def search_text(model: str, q: TextQuery, filters: TextSearchParams, catalogue: CatalogueDep,
                      origin: OriginDep, mode: TextModeParam = "hybrid") -> SearchResponse:
    return await searching.by_text(catalogue, model, q, filters, origin, mode)


@router.post("/all/search/vector", response_model=AllSearchResponse, responses=_TEXT_ERRORS,
             summary="Search every model whose CLIP dimension matches with your own query embedding")
async def search_all_vector(body: VectorQuery, filters: SearchParams, catalogue: CatalogueDep, origin: OriginDep,
                            merge: MergeParam = "match") -> AllSearchResponse:
    return await searching.all_by_vector(catalogue, body.vector, filters, merge, origin)


@router.post("/{model}/search/vector", response_model=SearchResponse, responses=_TEXT_ERRORS,
             summary="Search one model with your own CLIP embedding (normalised here; the model's head applied)")
async def search_vector(model: str, body: VectorQuery, filters: SearchParams, catalogue: CatalogueDep,
                        origin: OriginDep) -> SearchResponse:
    return await searching.by_vector(catalogue, model, body.vector, filters, origin)
