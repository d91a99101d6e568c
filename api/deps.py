"""Request dependencies: settings, the model catalogue, admin authentication."""

from __future__ import annotations

import hmac

from fastapi import Depends, Header, Request

from core.config import Settings
from core.errors import AuthError

from api.catalogue import Catalogue
from api.metrics import Metrics


def get_settings(request: Request) -> Settings:
    """The app's Settings; tests swap them with ``app.dependency_overrides[get_settings]``."""
    settings: Settings = request.app.state.settings
    return settings


def get_catalogue(request: Request) -> Catalogue:
    catalogue: Catalogue = request.app.state.catalogue
    return catalogue


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def require_admin(settings: Settings = Depends(get_settings),
                  x_api_key: str | None = Header(None, description="equal to IMAGESEARCH_API_KEY")) -> None:
    """Admin routes: 403 while no key is configured, 401 without a key, 403 with a wrong one."""
    if not settings.api_key:
        raise AuthError("admin routes are disabled: set IMAGESEARCH_API_KEY on the server to enable them", 403)
    if not x_api_key:
        raise AuthError("admin route: send the key in header X-API-Key", 401)
    if not hmac.compare_digest(x_api_key.encode("utf-8", "surrogateescape"), settings.api_key.encode("utf-8")):
        raise AuthError("admin route: wrong X-API-Key", 403)
