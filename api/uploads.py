"""Reading the query image from a request: multipart field ``file`` or a raw ``image/*`` body, size-capped."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from core.errors import BadImageError, BadRequestError

_MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file

UPLOAD_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "the query image"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass(frozen=True)
class QueryImage:
    data: bytes
    filename: str | None


class _TooLarge(Exception):
    """Raised the moment the body passes the limit: nothing more is read (the server discards the rest)."""


def _too_large(limit: int) -> BadImageError:
    return BadImageError(f"upload too large: the limit is {limit} bytes", 413)


async def _body(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The request body straight from ASGI receive, so we know whether more is coming."""
    seen = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":
            raise BadRequestError("the client disconnected before sending the whole body")
        chunk, more = message.get("body", b""), message.get("more_body", False)
        seen += len(chunk)
        if seen > limit:
            raise _TooLarge
        if chunk:
            yield chunk
        if not more:
            return


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers.get("content-length", ""))
    except ValueError:
        return None


async def _from_multipart(request: Request, limit: int) -> QueryImage:
    parser = MultiPartParser(request.headers, _body(request, limit + _MULTIPART_SLACK),
                             max_files=2, max_fields=20)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequestError(f"malformed multipart body: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequestError("no image: send it as multipart field 'file' (or as a raw image/* body)")
    try:
        data = await upload.read()
    finally:
        await form.close()
    if len(data) > limit:
        raise _TooLarge
    return QueryImage(data=data, filename=upload.filename)


async def _from_raw(request: Request, limit: int) -> QueryImage:
    chunks = [chunk async for chunk in _body(request, limit)]
    return QueryImage(data=b"".join(chunks), filename=request.query_params.get("filename"))


async def read_query_image(request: Request, limit: int) -> QueryImage:
    """The uploaded image bytes; 413 past ``limit`` (checked on Content-Length and on what arrives)."""
    ctype = request.headers.get("content-type", "").lower()
    declared = _declared_length(request)
    try:
        if declared is not None and declared > limit + _MULTIPART_SLACK:
            raise _TooLarge
        if ctype.startswith("multipart/form-data"):
            return await _from_multipart(request, limit)
        if ctype.startswith(("image/", "application/octet-stream")):
            return await _from_raw(request, limit)
    except _TooLarge:
        raise _too_large(limit) from None
    raise BadRequestError(f"unsupported content type {ctype or 'none'!r}: send multipart/form-data with "
                          "field 'file', or a raw image/* body")
