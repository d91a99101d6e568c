"""Request dependencies: settings, the model catalogue, admin authentication."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from core.config import Settings
from core.keys import Action, ApiKey, KeyRing

from api.auth import AdminRoute, admin_route, admit
from api.catalogue import Catalogue
from api.guards import CALLER
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


def require_admin(request: Request, settings: Annotated[Settings, Depends(get_settings)],
                  x_api_key: Annotated[str | None, Header(description="an API key whose scopes cover this route "
                                                                     "(admin, write:<model> or read:analytics)")]
                  = None) -> ApiKey:
    """The admin route's key: 403 while no key is configured, 401 without a valid key, 403 when its scopes do
    not cover the route. RequestGuard has decided this before the body was read; it is decided again here so
    a route stays safe on its own (a route missing from api.auth's table needs the admin scope)."""
    found: ApiKey | None = getattr(request.state, CALLER, None)
    if found is not None:
        return found
    keys: KeyRing = getattr(request.app.state, "keys", None) or KeyRing()
    route = admin_route(request.method, request.scope["path"]) or AdminRoute(Action.WRITE)
    return admit(keys, settings, x_api_key, route)


Caller = Annotated[ApiKey, Depends(require_admin)]
