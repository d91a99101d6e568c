"""Request counters and latency histograms per route and model, rendered as Prometheus text.

Hand-rolled (a few dozen lines) rather than a new dependency. Also the ASGI middleware that
feeds it and writes one access-log line per request.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_logger = logging.getLogger("api.access")

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PREFIX = "imagesearch_http"

Labels = tuple[str, str, str]  # route, model, method


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


class Metrics:
    """Thread-safe counters; ``render()`` gives the Prometheus text exposition format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[Labels, str], int] = defaultdict(int)
        self._buckets: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = defaultdict(float)

    def observe(self, route: str, model: str, method: str, status: int, seconds: float) -> None:
        key = (route, model, method)
        with self._lock:
            self._counts[(key, str(status))] += 1
            buckets = self._buckets.setdefault(key, [0] * (len(BUCKETS) + 1))
            buckets[bisect_left(BUCKETS, seconds)] += 1
            self._sums[key] += seconds

    def render(self, gauges: Mapping[str, Sequence[tuple[dict[str, str], float]]] | None = None) -> str:
        with self._lock:
            counts, buckets, sums = dict(self._counts), {k: list(v) for k, v in self._buckets.items()}, dict(self._sums)
        out = [f"# HELP {_PREFIX}_requests_total HTTP requests by route, model, method and status.",
               f"# TYPE {_PREFIX}_requests_total counter"]
        for (key, status), n in sorted(counts.items()):
            out.append(f"{_PREFIX}_requests_total{_labels(self._pairs(key, status=status))} {n}")
        out += [f"# HELP {_PREFIX}_request_duration_seconds Request latency by route and model.",
                f"# TYPE {_PREFIX}_request_duration_seconds histogram"]
        for key in sorted(buckets):
            out += self._histogram(key, buckets[key], sums[key])
        for name, samples in (gauges or {}).items():
            out.append(f"# TYPE {name} gauge")
            out += [f"{name}{_labels(labels)} {value}" for labels, value in samples]
        return "\n".join(out) + "\n"

    @staticmethod
    def _pairs(key: Labels, **more: str) -> dict[str, str]:
        return {"route": key[0], "model": key[1], "method": key[2], **more}

    def _histogram(self, key: Labels, counts: list[int], total: float) -> list[str]:
        lines, running = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f"{_PREFIX}_request_duration_seconds_bucket{_labels(self._pairs(key, le=le))} {running}")
        lines.append(f"{_PREFIX}_request_duration_seconds_sum{_labels(self._pairs(key))} {total:.6f}")
        lines.append(f"{_PREFIX}_request_duration_seconds_count{_labels(self._pairs(key))} {running}")
        return lines


def _route_labels(scope: Scope, status: int) -> tuple[str, str]:
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    model = str(scope.get("path_params", {}).get("model", "")) if route is not None else ""
    if template == "/all/search":
        model = "all"
    elif template == "/search_products/":
        model = "general"
    elif status == 404:
        model = ""  # junk names would grow the label set without bound
    return template, model


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): times each request, counts it, logs it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            seconds = time.perf_counter() - start
            route, model = _route_labels(scope, status)
            self.metrics.observe(route, model, scope["method"], status, seconds)
            client = scope.get("client") or ("-", 0)
            access_logger.info("%s %s %s %d %.1fms", client[0], scope["method"], scope["path"], status,
                               seconds * 1000)
