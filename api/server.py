"""The uvicorn server the API runs in: a deadline for request headers and a bound on open connections,
both enforced at the connection level, where no ASGI middleware can see a half-sent request."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.config import Settings

# uvicorn's own keep-alive timer closes idle connections between requests after this many seconds
KEEP_ALIVE_S = 5
_BUSY_BODY = json.dumps({"detail": "too many open connections; retry shortly", "error": "OverloadedError"}).encode()
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
         b"connection: close\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


def protocol_class(header_timeout: float, max_connections: int) -> type[H11Protocol]:
    """An h11 protocol that closes a connection which has not sent a complete request head within
    ``header_timeout`` (slowloris), and answers 503 + Retry-After to connections beyond ``max_connections``."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.server_state.connections) > max_connections:
                transport.write(_BUSY)
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout, self._head_deadline, self.cycle)

        def _head_deadline(self, cycle_then: object) -> None:
            """Close when no new request head arrived since the timer was armed (and none is being
            answered); otherwise watch the next head."""
            if self.transport.is_closing():
                return
            waiting = self.cycle is None or self.cycle.response_complete
            if self.cycle is cycle_then and waiting:
                self.transport.close()
                return
            self._arm()

    return GuardedH11Protocol


def server_config(app: Any, settings: Settings, host: str, port: int, **more: Any) -> uvicorn.Config:
    """uvicorn settings for the API (logging goes to our handlers; we write the access log ourselves)."""
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                          http=protocol_class(settings.header_timeout, settings.max_connections),
                          timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=16 * 1024, **more)


def serve(app: Any, settings: Settings, host: str, port: int) -> None:
    uvicorn.Server(server_config(app, settings, host, port)).run()
