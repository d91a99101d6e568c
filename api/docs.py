"""``/redoc`` fully offline: the installed ReDoc bundle, with its one outside asset (Redocly's logo, fetched
from a CDN by the side menu's "API docs by Redocly" link) replaced by a blank inline image."""

from __future__ import annotations

import functools
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response

_BUNDLE = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
_OUTSIDE_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_BLANK = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E"
STATIC_URL = "/static-offline-docs"  # where fastapi-offline mounts its assets (favicon, Swagger UI)
BUNDLE_URL = "/redoc-assets/redoc.standalone.js"


@functools.cache
def _bundle() -> bytes:
    return _BUNDLE.read_bytes().replace(_OUTSIDE_LOGO, _BLANK)


def install_redoc(app: FastAPI, redoc_url: str = "/redoc") -> None:
    """Serve ReDoc at ``redoc_url`` from this server only (create the app with ``redoc_url=None``)."""

    @app.get(redoc_url, include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{BUNDLE_URL}", with_google_fonts=False,
                              redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png")

    @app.get(BUNDLE_URL, include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(_bundle(), media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})
