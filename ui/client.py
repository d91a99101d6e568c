"""Small HTTP client for the search API: the UI's only way to reach models, indexes and images."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urljoin

import requests

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_URL_ENV = "IMAGESEARCH_API_URL"
UPLOAD_LIMIT_ENV = "IMAGESEARCH_MAX_UPLOAD_BYTES"
DEFAULT_MODEL_ENV = "IMAGESEARCH_UI_DEFAULT_MODEL"
DEFAULT_MODEL = "general"
DEFAULT_UPLOAD_LIMIT = 10_000_000


class ApiUnavailable(Exception):
    """The API cannot be reached at all (refused, timed out, DNS): the service is down."""

    def __init__(self, base_url: str, reason: str = "") -> None:
        super().__init__(f"search API unreachable at {base_url}" + (f" ({reason})" if reason else ""))
        self.base_url = base_url
        self.reason = reason


class ApiError(Exception):
    """The API answered with an error status; ``message`` is its own explanation."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(f"{status}: {message}")
        self.message = message
        self.status = status

    @property
    def not_built(self) -> bool:
        """503 means the model exists but its index has not been built (or is being reloaded)."""
        return self.status == 503

    @property
    def not_found(self) -> bool:
        return self.status == 404


def default_model_from_env() -> str:
    """The catalogue the shop opens on (IMAGESEARCH_UI_DEFAULT_MODEL: a catalogue name or ``all``)."""
    return (os.environ.get(DEFAULT_MODEL_ENV) or DEFAULT_MODEL).strip().lower()


def api_url_from_env() -> str:
    """The API address from IMAGESEARCH_API_URL, else the local default."""
    return (os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


def upload_limit_from_env() -> int:
    """The API's upload limit in bytes (IMAGESEARCH_MAX_UPLOAD_BYTES, as the API reads it), so the shop
    states and enforces the same figure."""
    raw = os.environ.get(UPLOAD_LIMIT_ENV, "").strip().replace("_", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_UPLOAD_LIMIT


def _error_message(response: requests.Response) -> str:
    """The message out of a JSON error body (``message``/``detail``/``error``), else the raw text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason or "error"
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value:  # FastAPI validation errors: [{"msg": ...}]
                return "; ".join(str(v.get("msg", v)) if isinstance(v, dict) else str(v) for v in value)
    return str(body)[:300]


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ""}


class ApiClient:
    """Calls the API over HTTP; raises ApiUnavailable when it is down and ApiError on a 4xx/5xx."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 30.0,
                 session: requests.Session | None = None) -> None:
        self.base_url = (base_url or api_url_from_env()).rstrip("/")
        self.timeout = timeout
        self._session = session or requests.Session()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = self.url(path)
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self._session.request(method, url, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ApiUnavailable(self.base_url, type(exc).__name__) from None
        if response.status_code >= 400:
            raise ApiError(_error_message(response), response.status_code)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"expected JSON from {path}, got {response.headers.get('content-type')}",
                           response.status_code) from None

    def url(self, path: str) -> str:
        """Absolute URL for an API path; absolute URLs (http/https) are returned unchanged."""
        if path.startswith(("http://", "https://")):
            return path
        return urljoin(self.base_url + "/", path.lstrip("/"))

    def health(self) -> dict:
        return self._json("GET", "/health", timeout=min(self.timeout, 5.0))

    def models(self) -> list[dict]:
        body = self._json("GET", "/models", timeout=min(self.timeout, 5.0))
        return body.get("models", []) if isinstance(body, dict) else list(body)

    def explain(self, model: str, product_id: str, image: bytes, *, view: str = "both") -> bytes:
        """PNG heat-map overlay: why ``product_id`` matched this photo (``POST /<model>/explain``)."""
        return self._request("POST", f"/{quote(model)}/explain", params={"product_id": product_id, "view": view},
                             files={"file": ("query.jpg", image)}).content

    def admin_json(self, path: str, api_key: str, **params: Any) -> Any:
        """GET an admin route (analytics, jobs) with the merchant's key."""
        return self._json("GET", path, params=_params(**params), headers={"X-API-Key": api_key})

    def search(self, model: str, image: bytes, filename: str = "query.jpg", *, top_k: int = 10, offset: int = 0,
               words: str = "", avoid: str = "", **filters: Any) -> dict:
        """Image search in one model (``POST /<model>/search``); ``offset`` skips earlier pages; ``words`` and
        ``avoid`` refine the photo (the API's q and not); ``filters``: category, min_score, min_match, sort,
        price_min, price_max, text_weight (None: not sent)."""
        return self._json("POST", f"/{quote(model)}/search",
                          params=_params(top_k=top_k, offset=offset or None, q=words, **{"not": avoid}, **filters),
                          files={"file": (filename or "query.jpg", image)})

    def search_all(self, image: bytes, filename: str = "query.jpg", *, top_k: int = 10, offset: int = 0,
                   words: str = "", avoid: str = "", **filters: Any) -> dict:
        """Image search in every built model plus a merged ranking (``POST /all/search``)."""
        return self.search("all", image, filename, top_k=top_k, offset=offset, words=words, avoid=avoid, **filters)

    def search_text(self, model: str, query: str, *, top_k: int = 10, offset: int = 0, **filters: Any) -> dict:
        """Text-to-image search (``GET /<model>/search/text?q=``); ``model="all"`` searches every model."""
        return self._json("GET", f"/{quote(model)}/search/text",
                          params=_params(q=query, top_k=top_k, offset=offset or None, **filters))

    def similar(self, model: str, product_id: str, *, top_k: int = 10, offset: int = 0, **filters: Any) -> dict:
        """Products that look like a catalogue product, itself left out (``/<model>/products/<id>/similar``)."""
        return self._json("GET", f"/{quote(model)}/products/{quote(str(product_id), safe='')}/similar",
                          params=_params(top_k=top_k, offset=offset or None, **filters))

    def product(self, model: str, product_id: str) -> dict:
        return self._json("GET", f"/{quote(model)}/products/{quote(str(product_id), safe='')}")

    @staticmethod
    def image_path(model: str, product_id: str) -> str:
        return f"/{quote(model)}/products/{quote(str(product_id), safe='')}/image"

    def image_url(self, model: str, product_id: str) -> str:
        return self.url(self.image_path(model, product_id))

    def image(self, path_or_url: str) -> bytes:
        """Bytes of a product image served by the API (relative path or absolute URL)."""
        return self._request("GET", path_or_url, timeout=min(self.timeout, 10.0)).content
