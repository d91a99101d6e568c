"""Why this match: heat-maps of what drives a query image's similarity to one product."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response


from api.deps import CatalogueDep, SettingsDep
from api.explaining import Explainer
from api.responses import RedactedJSONResponse
from api.schemas import ExplainResponse, error_responses
from api.uploads import UPLOAD_OPENAPI, read_query_image

router = APIRouter(tags=["search"])

_JSON = {"schema": ExplainResponse.model_json_schema()}
_PNG: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}, "application/json": _JSON},
              "description": "the overlay PNG, or the raw grids as JSON with format=json"}}


@router.post("/{model}/explain", response_class=Response, openapi_extra=UPLOAD_OPENAPI,
             responses={**_PNG, **error_responses(400, 404, 408, 413, 422, 503)},
             summary="Why this match: heat-maps over the query and the product (PNG, or JSON grids)")
async def explain_match(model: str, request: Request,
                        product_id: Annotated[str, Query(min_length=1, max_length=512)],
                        catalogue: CatalogueDep, settings: SettingsDep,
                        format: Literal["png", "json"] = "png",
                        view: Literal["both", "hit", "query"] = "both") -> Response:
    loaded = catalogue.model(model)
    loaded.require()
    loaded.product(product_id)  # 404 before the upload is read
    explainer = Explainer(loaded, catalogue.embedder(loaded.backbone), settings)
    upload = await read_query_image(request, settings.max_upload_bytes)
    if format == "json":
        _, found = await explainer.grids(upload.data, product_id)
        body = ExplainResponse(model=model, product_id=product_id, **found.to_json())
        return RedactedJSONResponse(body.model_dump())
    png = await explainer.png(upload.data, product_id, view)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
