"""ASGI guards that act before any route reads a body: the admin key and its scopes (with a per-client limit
on failed attempts, and an audit line per admin write), a bound on in-flight searches, the admin body size,
and the deadline for a whole body."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings
from core.errors import (AuthError, ImageSearchError, OverloadedError, PayloadTooLargeError, RateLimitedError,
                         RequestTimeoutError)
from core.keys import ApiKey, KeyRing

from api.auth import admin_route, audit, authenticate, check
from api.errors import error_response

_SEARCH_ROUTE = re.compile(r"^/(search_products/?|[^/]+/search(/text)?/?|[^/]+/products/[^/]+/similar/?"
                           r"|[^/]+/explain/?)$")
_WINDOW = 60.0
_MAX_TRACKED_CLIENTS = 10_000
CALLER = "caller"  # request.state: the admin route's ApiKey
AUDIT_PRODUCT = "audit_product"  # request.state: the product an admin write concerns, for the audit line


class FailureLimiter:
    """Failed admin-key attempts per client address in a sliding minute (bounded number of addresses)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, client: str) -> None:
        """Raise RateLimitedError while ``client`` has used up its failed attempts."""
        now = time.monotonic()
        with self._lock:
            times = self._failures.get(client)
            while times and times[0] <= now - _WINDOW:
                times.popleft()
            if times and len(times) >= self.per_minute:
                wait = max(1, math.ceil(times[0] + _WINDOW - now))
                raise RateLimitedError(f"too many failed admin-key attempts; retry in {wait} s", wait)

    def failed(self, client: str) -> None:
        with self._lock:
            times = self._failures.setdefault(client, deque())
            self._failures.move_to_end(client)
            times.append(time.monotonic())
            while len(self._failures) > _MAX_TRACKED_CLIENTS:
                self._failures.popitem(last=False)


@dataclass
class _Cutoff:
    """Why a body read was cut off (the guard answers with this error instead of the app's response)."""

    error: ImageSearchError | None = None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class RequestGuard:
    """Pure ASGI middleware: everything here is decided before the route reads a byte of the body."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self._settings = settings
        self._keys = KeyRing()
        self.failures = FailureLimiter(settings.admin_failures_per_minute)
        self._searches = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # the app's current Settings and keys (what the routes see), else those we were built with
        state = getattr(scope.get("app"), "state", None)
        settings: Settings = getattr(state, "settings", None) or self._settings
        method, path = scope["method"], scope["path"]
        admin = admin_route(method, path)
        caller: ApiKey | None = None
        try:
            if admin is not None:
                caller = self._authenticate(scope, settings, getattr(state, "keys", None) or self._keys)
                check(caller, admin.action, admin.model)
                self._check_length(scope, settings)
            search = _SEARCH_ROUTE.match(path) is not None
            if search and self._searches >= settings.max_inflight_searches:
                raise OverloadedError(f"{self._searches} searches in flight; retry shortly")
        except ImageSearchError as exc:
            if isinstance(exc, AuthError) and admin is not None:
                audit(caller, method, path, exc.status_code, None)
            await error_response(exc)(scope, receive, send)
            return
        if caller is not None:
            scope.setdefault("state", {})[CALLER] = caller
        self._searches += search
        status = [0]

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self._bounded(scope, receive, _send, settings.body_timeout,
                                settings.max_admin_body_bytes if admin is not None else None)
        finally:
            self._searches -= search
            if admin is not None and method != "GET":
                audit(caller, method, path, status[0] or 500, scope.get("state", {}).get(AUDIT_PRODUCT))

    def _authenticate(self, scope: Scope, settings: Settings, keys: KeyRing) -> ApiKey:
        """The key, checked on the headers alone; a client that keeps guessing is cut off."""
        client = (scope.get("client") or ("-", 0))[0]
        self.failures.check(client)
        try:
            return authenticate(keys, settings, _header(scope, b"x-api-key"))
        except AuthError as exc:
            if exc.status_code == 401:
                self.failures.failed(client)
            raise

    @staticmethod
    def _check_length(scope: Scope, settings: Settings) -> None:
        declared = _header(scope, b"content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_admin_body_bytes:
            raise PayloadTooLargeError(f"body too large: the limit is {settings.max_admin_body_bytes} bytes")

    async def _bounded(self, scope: Scope, receive: Receive, send: Send, timeout: float,
                       max_bytes: int | None) -> None:
        """Run the app with a deadline on the whole body (and a size cap); a cut-off body is answered
        with 408 (or 413) instead of whatever the app made of the truncated request."""
        cutoff = _Cutoff()
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        done = False
        started = False

        async def _receive() -> Message:
            nonlocal seen, done
            if done or cutoff.error is not None:
                return await receive()  # after the body: disconnect polling, not bounded
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.001))
            except TimeoutError:
                cutoff.error = RequestTimeoutError(f"request body not received within {timeout:g} s")
                return {"type": "http.disconnect"}
            seen += len(message.get("body", b""))
            if max_bytes is not None and seen > max_bytes:
                cutoff.error = PayloadTooLargeError(f"body too large: the limit is {max_bytes} bytes")
                return {"type": "http.disconnect"}
            done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def _send(message: Message) -> None:
            nonlocal started
            if cutoff.error is not None and not started:
                return  # the app's answer to a truncated body is replaced below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, _receive, _send)
        except Exception:
            if cutoff.error is None or started:
                raise
        if cutoff.error is not None and not started:
            await error_response(cutoff.error)(scope, receive, send)

