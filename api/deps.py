"""Request dependencies: settings, the model catalogue, admin authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from core.config import Settings

from api.catalogue import Catalogue
from api.guards import check_admin_key
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


def require_admin(settings: Annotated[Settings, Depends(get_settings)],
                  x_api_key: Annotated[str | None, Header(description="equal to IMAGESEARCH_API_KEY")] = None) -> None:
    """Admin routes: 403 while no key is configured, 401 without a key, 403 with a wrong one. RequestGuard
    has already checked this before the body was read; kept here so the route stays safe on its own."""
    check_admin_key(settings, x_api_key)
