"""The one place where errors become HTTP responses: typed errors by their status_code, the rest JSON too."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import ImageSearchError, UnknownModelError
from utils.redact import escape_control

from api.responses import RedactedJSONResponse

logger = logging.getLogger(__name__)


def _body(detail: str, error: str, **more: Any) -> dict[str, Any]:
    return {"detail": detail, "error": error, **more}


def error_response(exc: ImageSearchError) -> RedactedJSONResponse:
    """The response for a typed error; also used by the ASGI guards that answer before routing."""
    more = {"available": exc.available} if isinstance(exc, UnknownModelError) else {}
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    # a message may quote a client's or the catalogue's URL: the response redacts its credentials
    return RedactedJSONResponse(_body(exc.message, type(exc).__name__, **more), status_code=exc.status_code,
                                headers=headers)


async def _typed(request: Request, exc: ImageSearchError) -> RedactedJSONResponse:
    if exc.status_code >= 500:
        logger.warning("%s %s -> %d %s", request.method, request.url.path, exc.status_code, exc.message)
    return error_response(exc)


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid"))


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    detail = "; ".join(_describe(e) for e in errors) or "invalid request"
    cleaned = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in errors]
    return RedactedJSONResponse(jsonable_encoder(_body(detail, "ValidationError", errors=cleaned)), status_code=422)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first matching route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    names = {404: "NotFound", 405: "MethodNotAllowed"}
    detail = f"no route {request.method} {escape_control(request.url.path)}" if exc.status_code == 404 \
        else str(exc.detail)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return RedactedJSONResponse(_body(detail, names.get(exc.status_code, "HTTPError")), status_code=exc.status_code,
                                headers=headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return RedactedJSONResponse(_body("internal error; see logs/api.log", type(exc).__name__), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types every handler as taking any Exception, though it dispatches by the registered class.
    handlers: list[tuple[type[Exception], Callable[[Request, Any], Awaitable[JSONResponse]]]] = [
        (ImageSearchError, _typed), (RequestValidationError, _validation), (StarletteHTTPException, _http),
        (Exception, _unexpected)]
    for cls, handler in handlers:
        app.add_exception_handler(cls, handler)
