"""A fault-injecting HTTP server on 127.0.0.1 for tests: serves path -> Reply, counts requests per path.

Usage::

    from tests.http_server import HttpServer, Reply, http_server  # the last is a pytest fixture

    server.routes["/a.jpg"] = Reply(jpeg_bytes)                       # 200 image/jpeg
    server.routes["/flaky.jpg"] = [Reply(status=503), Reply(jpeg)]    # a list plays in order, last repeats
    server.routes["/slow.jpg"] = Reply(jpeg, delay=2.0)               # answers after 2 s
    url = server.url("/a.jpg"); ...; assert server.count("/a.jpg") == 1

Unknown paths answer 404. A request is "in flight" from its arrival until its response starts
(``delay`` included, body excluded), so ``max_in_flight`` is race-free against a client that only
sends its next request after reading a response.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """What the server sends for one request, faults included."""

    body: bytes = b""
    status: int = 200
    content_type: str | None = "image/jpeg"  # None: no Content-Type header
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line (timeouts, concurrency)
    drip: float = 0.0  # seconds between body pieces of ``drip_bytes`` (slow-drip server)
    drip_bytes: int = 1
    length: int | None = None  # Content-Length to announce (default len(body)); -1: none, close instead
    abort: bool = False  # close the connection without any answer

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status=status, content_type=None, headers={"Location": location})

    @classmethod
    def html(cls, text: str = "<html><body>not here</body></html>", status: int = 200) -> Reply:
        return cls(text.encode(), status=status, content_type="text/html; charset=utf-8")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    host: str
    headers: dict[str, str]


class HttpServer:
    """ThreadingHTTPServer in a background thread on a free port of 127.0.0.1."""

    def __init__(self, routes: dict[str, Reply | list[Reply]] | None = None) -> None:
        self.routes: dict[str, Reply | list[Reply]] = dict(routes or {})
        self.counts: Counter[str] = Counter()
        self.requests: list[RequestRecord] = []
        self.max_in_flight: Counter[str] = Counter()  # per Host header hostname
        self.max_in_flight_total = 0
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def count(self, path: str) -> int:
        return self.counts[path]

    @property
    def total_requests(self) -> int:
        return sum(self.counts.values())

    def reset(self) -> None:
        """Forget counts and records (routes stay)."""
        with self._lock:
            self.counts.clear()
            self.requests.clear()
            self.max_in_flight.clear()
            self.max_in_flight_total = 0

    def start(self) -> HttpServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.app = self  # type: ignore[attr-defined]
        # a short poll interval keeps shutdown (once per test) fast
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a delay or drip
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _begin(self, method: str, path: str, host: str, headers: dict[str, str]) -> Reply:
        with self._lock:
            n = self.counts[path]
            self.counts[path] += 1
            self.requests.append(RequestRecord(method, path, host, headers))
            self._in_flight[host] += 1
            self.max_in_flight[host] = max(self.max_in_flight[host], self._in_flight[host])
            self.max_in_flight_total = max(self.max_in_flight_total, sum(self._in_flight.values()))
        route = self.routes.get(path)
        if isinstance(route, list):
            return route[min(n, len(route) - 1)]
        return route if route is not None else Reply.html("<html>no such page</html>", status=404)

    def _end(self, host: str) -> None:
        with self._lock:
            self._in_flight[host] -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # a client hanging up (timeouts, aborted transfers) is routine here, not worth a traceback
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers (the client reuses connections)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        app: HttpServer = self.server.app  # type: ignore[attr-defined]
        host = (urlsplit(f"//{self.headers.get('Host', '')}").hostname or "").lower()
        reply = app._begin("GET", urlsplit(self.path).path, host, dict(self.headers.items()))
        try:
            if reply.delay:
                app._stopping.wait(reply.delay)
        finally:
            app._end(host)
        try:
            self._send(reply, app._stopping)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout test): nothing to do

    def _send(self, reply: Reply, stopping: threading.Event) -> None:
        if reply.abort:
            self.close_connection = True
            return
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        length = len(reply.body) if reply.length is None else reply.length
        if length >= 0:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._write_body(reply, stopping)
        if reply.length is not None and reply.length != len(reply.body):
            self.close_connection = True  # we lied about the length: the connection is unusable

    def _write_body(self, reply: Reply, stopping: threading.Event) -> None:
        if not reply.drip:
            self.wfile.write(reply.body)
            return
        for start in range(0, len(reply.body), reply.drip_bytes):
            self.wfile.write(reply.body[start:start + reply.drip_bytes])
            self.wfile.flush()
            if stopping.wait(reply.drip):
                return

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        logger.debug("test server: " + format, *args)


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A started HttpServer with no routes; add them via ``http_server.routes[path] = Reply(...)``."""
    with HttpServer() as server:
        yield server
