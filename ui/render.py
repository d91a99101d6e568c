"""Pure HTML/CSS for the shopper UI: product cards, group headers, alerts (every text escaped)."""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime

PLACEHOLDER_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 100 100'>"
                   "<rect width='100' height='100' fill='%23eef0f3'/>"
                   "<text x='50' y='56' font-size='12' text-anchor='middle' fill='%239aa3ad'>no image</text></svg>")
PLACEHOLDER_SRC = "data:image/svg+xml;utf8," + PLACEHOLDER_SVG

CSS = """
<style>
.block-container {padding-top: 3.2rem; max-width: 1500px;}
.shop-banner {display:flex; align-items:center; gap:.9rem; padding:1rem 1.3rem; border-radius:14px;
  background:linear-gradient(90deg,#1f2a44 0%,#35508a 100%); color:#fff; margin-bottom:1rem;}
.shop-banner__title {font-size:1.55rem; font-weight:700; color:#fff; line-height:1.3;}
.shop-banner p {margin:0; opacity:.85; font-size:.92rem;}
.shop-card {background:#fff; border:1px solid #e6e8ec; border-radius:12px; overflow:hidden;
  box-shadow:0 1px 3px rgba(16,24,40,.06); transition:box-shadow .15s, transform .15s; margin-bottom:.35rem;}
.shop-card:hover {box-shadow:0 6px 18px rgba(16,24,40,.14); transform:translateY(-2px);}
.shop-card__img {position:relative; aspect-ratio:1/1; background:#f6f7f9; display:flex;
  align-items:center; justify-content:center;}
.shop-card__img img {width:100%; height:100%; object-fit:contain;}
.shop-card__rank {position:absolute; top:8px; left:8px; background:rgba(31,42,68,.88); color:#fff;
  font-size:.72rem; font-weight:600; padding:2px 7px; border-radius:10px;}
.shop-card__match {position:absolute; top:8px; right:8px; background:#e8f6ee; color:#137a3d;
  font-size:.72rem; font-weight:700; padding:2px 7px; border-radius:10px;}
.shop-card__match.low {background:#fff4e5; color:#9a5b00;}
.shop-card__body {padding:.55rem .7rem .65rem;}
.shop-card__cat {color:#6b7380; font-size:.7rem; text-transform:uppercase; letter-spacing:.04em;}
.shop-card__title {color:#1d2433; font-weight:600; font-size:.9rem; line-height:1.25; min-height:2.5em;
  overflow:hidden; display:-webkit-box; -webkit-line-clamp:2; -webkit-box-orient:vertical;}
.shop-card__price {color:#1d2433; font-weight:700; font-size:1rem; margin-top:.2rem;}
.shop-card__model {color:#35508a; font-size:.7rem; margin-top:.15rem;}
.shop-group {display:flex; align-items:baseline; gap:.6rem; margin:1.1rem 0 .5rem;
  border-bottom:2px solid #eef0f3; padding-bottom:.3rem;}
.shop-group__title {font-size:1.15rem; font-weight:700; color:#1d2433;}
.shop-group span {color:#6b7380; font-size:.85rem;}
.shop-query {background:#fff; border:1px solid #e6e8ec; border-radius:12px; padding:.7rem;}
.shop-query img {width:100%; border-radius:8px;}
.shop-query__label {color:#6b7380; font-size:.75rem; text-transform:uppercase; letter-spacing:.05em;}
.shop-query__text {font-size:.92rem; font-weight:600; color:#1d2433; margin-top:.3rem;}
.shop-alert {border-radius:12px; padding:1rem 1.2rem; margin:.6rem 0; border:1px solid;}
.shop-alert__title {margin:0 0 .25rem; font-size:1.05rem; font-weight:700;}
.shop-alert p {margin:0; font-size:.92rem;}
.shop-alert.error {background:#fdf0f0; border-color:#f3c5c5; color:#7a1f1f;}
.shop-alert.warning {background:#fff8ec; border-color:#f5dcaa; color:#7a4b00;}
.shop-alert.info {background:#eef4fd; border-color:#c9dbf6; color:#1f3f73;}
.shop-status {font-size:.9rem; margin-bottom:.3rem;}
.shop-status b.ok {color:#137a3d;} .shop-status b.warn {color:#9a5b00;} .shop-status b.down {color:#b42318;}
.shop-model {border:1px solid #e6e8ec; border-radius:10px; padding:.45rem .6rem; margin-bottom:.4rem;
  background:#fff; font-size:.83rem;}
.shop-model b {color:#1d2433;} .shop-model div {color:#6b7380; font-size:.75rem;}
</style>
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def image_src(data: bytes | None, content_type: str = "image/jpeg") -> str:
    """A data: URI for image bytes (the browser never needs to reach the API), or a placeholder."""
    if not data:
        return PLACEHOLDER_SRC
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def match_percent(score: float | None) -> int:
    """Cosine similarity as a 0-100 match percentage, rounded down (only an exact match shows 100)."""
    if score is None:
        return 0
    return max(0, min(100, math.floor(float(score) * 100 + 1e-6)))


def _price(value: object) -> str:
    if value in (None, ""):
        return ""
    try:
        return f"{float(str(value).replace(',', '')):,.2f}"
    except ValueError:
        return str(value)


def product_card(hit: dict, img_src: str, *, show_model: str | None = None) -> str:
    """One result card; ``data-*`` attributes carry id, rank and model for tests and scripts."""
    pct = match_percent(hit.get("score"))
    price = _price(hit.get("price", (hit.get("extra") or {}).get("price")))
    model = hit.get("model") or ""
    score = hit.get("score")
    score_title = f"cosine similarity {float(score):.3f}" if score is not None else ""
    return (
        f'<div class="shop-card" data-testid="result-card" data-product-id="{_e(hit.get("id"))}" '
        f'data-rank="{_e(hit.get("rank"))}" data-model="{_e(model)}">'
        f'<div class="shop-card__img"><img src="{_e(img_src)}" alt="{_e(hit.get("title"))}" loading="lazy"/>'
        f'<span class="shop-card__rank">#{_e(hit.get("rank"))}</span>'
        f'<span class="shop-card__match{"" if pct >= 50 else " low"}" title="{_e(score_title)}">'
        f'{pct}% match</span></div>'
        f'<div class="shop-card__body"><div class="shop-card__cat">{_e(hit.get("category") or "")}</div>'
        f'<div class="shop-card__title" title="{_e(hit.get("title"))}">{_e(hit.get("title"))}</div>'
        + (f'<div class="shop-card__price">{_e(price)}</div>' if price else "")
        + (f'<div class="shop-card__model">in {_e(show_model)}</div>' if show_model else "")
        + "</div></div>"
    )


def group_header(title: str, subtitle: str, *, testid: str, model: str = "") -> str:
    return (f'<div class="shop-group" data-testid="{_e(testid)}" data-model="{_e(model)}">'
            f'<div class="shop-group__title">{_e(title)}</div><span>{_e(subtitle)}</span></div>')


def alert(kind: str, title: str, message: str, *, testid: str) -> str:
    """A friendly message box; ``kind`` is error | warning | info."""
    return (f'<div class="shop-alert {_e(kind)}" data-testid="{_e(testid)}" role="alert">'
            f'<div class="shop-alert__title">{_e(title)}</div><p>{_e(message)}</p></div>')


def banner(title: str, subtitle: str) -> str:
    return (f'<div class="shop-banner"><div><div class="shop-banner__title">{_e(title)}</div>'
            f"<p>{_e(subtitle)}</p></div></div>")


def query_panel(label: str, img_src: str | None = None, text: str | None = None) -> str:
    """The shopper's query (photo and/or words) shown beside the results."""
    body = f'<img src="{_e(img_src)}" alt="your photo"/>' if img_src else ""
    if text:
        body += f'<div class="shop-query__text">{_e(text)}</div>'
    return (f'<div class="shop-query" data-testid="query-panel"><div class="shop-query__label">{_e(label)}</div>'
            f"{body}</div>")


def status_line(status: str, total_products: int | None) -> str:
    cls = {"healthy": "ok", "degraded": "warn"}.get(status, "down")
    label = {"healthy": "Online", "degraded": "Degraded", "down": "Offline"}.get(status, status.title())
    count = f" · {total_products:,} products" if total_products is not None else ""
    return (f'<div class="shop-status" data-testid="api-status">Search service: '
            f'<b class="{cls}">{_e(label)}</b>{_e(count)}</div>')


def built_at_text(value: object) -> str:
    """``2025-01-02T03:04:05Z`` (or a Unix time) as ``2025-01-02 03:04``; blank when unknown."""
    if value in (None, ""):
        return ""
    try:
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):
        return str(value)


def model_box(display_name: str, products: int | None, built_at: object, *, searchable: bool) -> str:
    count = f"{products:,} products" if products is not None else "no products"
    built = built_at_text(built_at)
    state = f"built {built}" if built else ("ready" if searchable else "not built yet")
    return (f'<div class="shop-model" data-testid="model-status"><b>{_e(display_name)}</b>'
            f"<div>{_e(count)} · {_e(state)}</div></div>")
