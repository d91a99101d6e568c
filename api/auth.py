"""Admin access: what each admin route needs (``core.keys`` says which key may do it), decided on the
request's method, path and X-API-Key header before any body is read; and one audit line per admin write or
refusal, naming the key (never the key itself), the route and the product."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from core.config import Settings
from core.errors import AuthError, ConfigError
from core.keys import Action, ApiKey, KeyRing

logger = logging.getLogger(__name__)
audit_log = logging.getLogger("audit")

# (method, path, what it needs); a route naming a model checks the key against that model ("all" included:
# no write:<model> key covers it). The jobs list and one job are checked again by the route, per job.
_ROUTES: tuple[tuple[str, re.Pattern[str], Action], ...] = (
    ("GET", re.compile(r"^/jobs(/[^/]+)?/?$"), Action.JOBS),
    ("DELETE", re.compile(r"^/jobs/[^/]+/?$"), Action.JOBS),
    ("GET", re.compile(r"^/([^/]+/)?analytics/[^/]+/?$"), Action.ANALYTICS),
    ("POST", re.compile(r"^/(?P<model>[^/]+)/products/?$"), Action.WRITE),
    ("DELETE", re.compile(r"^/(?P<model>[^/]+)/products/[^/]+$"), Action.WRITE),
    ("POST", re.compile(r"^/(?P<model>[^/]+)/reload/?$"), Action.WRITE),
    ("POST", re.compile(r"^/(?P<model>[^/]+)/jobs/[^/]+/?$"), Action.WRITE),
    ("POST", re.compile(r"^/(?P<model>[^/]+)/backups/?$"), Action.WRITE),
    ("GET", re.compile(r"^/(?P<model>[^/]+)/backups/?$"), Action.WRITE),
)
_VERB = {Action.WRITE: "write to", Action.ANALYTICS: "read analytics", Action.JOBS: "read jobs"}


@dataclass(frozen=True)
class AdminRoute:
    action: Action
    model: str | None = None


def admin_route(method: str, path: str) -> AdminRoute | None:
    """What an admin request needs, or None for a public route."""
    for verb, pattern, action in _ROUTES:
        found = pattern.match(path) if method == verb else None
        if found is not None:
            return AdminRoute(action, found.groupdict().get("model"))
    return None


def is_admin_route(method: str, path: str) -> bool:
    return admin_route(method, path) is not None


def admit(ring: KeyRing, settings: Settings, presented: str | None, route: AdminRoute) -> ApiKey:
    """The key sent, when it may use ``route``. 403 while no key is configured at all, 401 without a key or
    with one that is not (or no longer) valid, 403 when its scopes do not cover the route."""
    key = authenticate(ring, settings, presented)
    check(key, route.action, route.model)
    return key


def authenticate(ring: KeyRing, settings: Settings, presented: str | None) -> ApiKey:
    """The key sent: 403 while no key is configured at all, 401 without a key or with one that is not (or no
    longer) valid."""
    try:
        table = ring.table(settings)
    except ConfigError as exc:  # a hand-edited keys file: refuse every key until it is fixed
        logger.error("admin keys unusable: %s", exc.message)
        raise AuthError("admin routes are unavailable: the server's keys file cannot be read "
                        "(its log says why)", 503) from None
    if not table.configured:
        raise AuthError("admin routes are disabled: set IMAGESEARCH_API_KEY on the server, or add a key with "
                        "python run_keys.py add", 403)
    if not presented:
        raise AuthError("admin route: send the key in header X-API-Key", 401)
    key = table.find(presented)
    if key is None:
        raise AuthError("admin route: this X-API-Key is not valid (wrong, or removed)", 401)
    return key


def check(key: ApiKey, action: Action, model: str | None) -> None:
    """403 unless ``key`` may do ``action`` (on ``model``)."""
    if not key.may(action, model):
        what = f"{_VERB[action]} model {model!r}" if model is not None else _VERB[action]
        raise AuthError(f"key {key.name!r} (scopes: {', '.join(sorted(key.scopes))}) may not {what}", 403)


def audit(key: ApiKey | None, method: str, path: str, status: int, product: str | None) -> None:
    """One line in the audit log (logs/audit.log): who, which route, which product, and the answer."""
    who = f"{key.name} ({key.id})" if key is not None else "-"
    item = f" product={product[:200]}" if product else ""
    audit_log.info("key=%s %s %s%s -> %d", who, method, path[:300], item, status)
