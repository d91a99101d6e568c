"""Request counters and latency histograms per route and model (prometheus_client, one registry per app),
and the ASGI middleware that feeds them and writes one access-log line per request.

Every label has a bounded set of values: routes are templates (or "unmatched"), models are the
catalogue's names (anything else folds into "other"), methods the standard verbs, so no client can
grow /metrics by sending junk."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from utils.redact import escape_control

access_logger = logging.getLogger("api.access")
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created would double the page

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PREFIX = "imagesearch_http"
OTHER = "other"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Metrics:
    """One registry per app (tests start several apps in one process); ``render()`` gives the text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("route", "model", "method")
        self._requests = Counter(f"{_PREFIX}_requests", "HTTP requests by route, model, method and status.",
                                 (*labels, "status"), registry=self.registry)
        self._latency = Histogram(f"{_PREFIX}_request_duration_seconds", "Request latency by route and model.",
                                  labels, buckets=BUCKETS, registry=self.registry)
        self._gauges: dict[str, Gauge] = {}

    def observe(self, route: str, model: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, model, method, str(status)).inc()
        self._latency.labels(route, model, method).observe(seconds)

    def render(self, gauges: Mapping[str, Sequence[tuple[dict[str, str], float]]] | None = None) -> str:
        """The registry as Prometheus text, with ``gauges`` (name -> [(labels, value)]) set to these values."""
        with self._lock:
            for name, samples in (gauges or {}).items():
                gauge = self._gauge(name, tuple(samples[0][0]) if samples else ())
                if gauge is None:
                    continue
                gauge.clear()
                for labels, value in samples:
                    gauge.labels(**labels).set(value)
            return generate_latest(self.registry).decode("utf-8")

    def _gauge(self, name: str, labelnames: tuple[str, ...]) -> Gauge | None:
        gauge = self._gauges.get(name)
        if gauge is None and labelnames:
            gauge = self._gauges[name] = Gauge(name, name.replace("_", " "), labelnames, registry=self.registry)
        return gauge


def _known_models(scope: Scope) -> set[str]:
    catalogue = getattr(getattr(scope.get("app"), "state", None), "catalogue", None)
    return set(catalogue.names()) if catalogue is not None else set()


def _route_labels(scope: Scope) -> tuple[str, str, str]:
    """(route template, model, method), each from a bounded set."""
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    model = str(scope.get("path_params", {}).get("model", "")) if route is not None else ""
    if template.startswith("/all/"):
        model = "all"
    elif template == "/search_products/":
        model = "general"
    elif model and model not in _known_models(scope):
        model = OTHER  # junk names would grow the label set without bound
    method = scope["method"] if scope["method"] in _METHODS else OTHER
    return template, model, method


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
            route, model, method = _route_labels(scope)
            self.metrics.observe(route, model, method, status, seconds)
            client = scope.get("client") or ("-", 0)
            # the path is the client's: escaped here too, whatever formatter the log ends up with
            access_logger.info("%s %s %s %d %.1fms", client[0], escape_control(scope["method"]),
                               escape_control(scope["path"]), status, seconds * 1000)
