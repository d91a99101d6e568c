"""Words a shopper reads on a result: how good a match it is, its price with currency, where it leads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CNY": "¥", "INR": "₹", "KRW": "₩",
            "AUD": "A$", "CAD": "C$", "NZD": "NZ$", "CHF": "CHF ", "BRL": "R$"}
_NO_DECIMALS = {"JPY", "KRW"}
_URL_COLUMNS = ("url", "product_url", "link", "product_link")

# A raw cosine score means little to a shopper (a random model gives every image hit 0.99, text hits
# 0.0-0.13), so without a calibrated ``match`` the label says how a hit compares with the best one.
_RELATIVE = ((0.9, "Great match"), (0.75, "Good match"))
_CALIBRATED = ((0.85, "Excellent match"), (0.65, "Great match"), (0.4, "Good match"))
_FALLBACK = "Similar"


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def match_label(hit: Mapping[str, Any], top_score: float | None) -> str:
    """A calibrated ``match`` (0-1) when the API sends one; else rank 1 is the best match and the
    rest are labelled by their score relative to the top hit's. Never a percentage of raw cosine."""
    match = _number(hit.get("match"))
    if match is not None:
        return next((label for floor, label in _CALIBRATED if match >= floor), _FALLBACK)
    if hit.get("rank") == 1:
        return "Best match"
    score = _number(hit.get("score"))
    if score is None or top_score is None or top_score <= 0:
        return _FALLBACK
    return next((label for floor, label in _RELATIVE if score / top_score >= floor), _FALLBACK)


def price_text(value: object, currency: str = "") -> str:
    """``12.5`` with ``USD`` -> ``$12.50``; an unknown code goes after the amount; blank when no price."""
    if value in (None, ""):
        return ""
    code = currency.strip().upper()
    try:
        amount = float(str(value).replace(",", ""))
    except ValueError:
        return str(value)
    number = f"{amount:,.0f}" if code in _NO_DECIMALS else f"{amount:,.2f}"
    if code in _SYMBOLS:
        return f"{_SYMBOLS[code]}{number}"
    return f"{number} {code}" if code else number


def product_link(hit: Mapping[str, Any], url_template: str = "") -> str:
    """The product's page: a ``url``-like CSV column, else the catalogue's template with ``{id}``."""
    extra = hit.get("extra") or {}
    for column in _URL_COLUMNS:
        value = str(extra.get(column) or "").strip()
        if urlsplit(value).scheme in ("http", "https"):
            return value
    if url_template and hit.get("id") not in (None, ""):
        return url_template.replace("{id}", quote(str(hit["id"]), safe=""))
    return ""


def hit_price(hit: Mapping[str, Any]) -> object:
    return hit.get("price", (hit.get("extra") or {}).get("price"))
