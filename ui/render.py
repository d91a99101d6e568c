"""Pure HTML/CSS for the shopper UI: product cards, alerts, the query strip (every text escaped)."""

from __future__ import annotations

import base64
import html

PLACEHOLDER_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 100 100'>"
                   "<rect width='100' height='100' fill='%23eef0f3'/>"
                   "<text x='50' y='56' font-size='12' text-anchor='middle' fill='%239aa3ad'>no image</text></svg>")
PLACEHOLDER_SRC = "data:image/svg+xml;utf8," + PLACEHOLDER_SVG

# Cards sit in a wrapping flex row (st.container(horizontal=True, key="grid-...")): six across on a
# desktop, three on a tablet, two on a phone. Streamlit's own header, padding and input hints are
# trimmed so that on a phone the first results show without scrolling.
CSS = """
<style>
header[data-testid="stHeader"] {height: 0; min-height: 0;}
.block-container {padding: 1rem 1.2rem 3rem; max-width: 1500px;}
[data-testid="InputInstructions"] {display: none;}
.shop-banner {padding:.7rem 1.1rem; border-radius:12px; color:#fff; margin-bottom:.2rem;
  background:linear-gradient(90deg,#1f2a44 0%,#35508a 100%);}
.shop-banner__title {font-size:1.35rem; font-weight:700; color:#fff; line-height:1.25;}
.shop-banner p {margin:0; opacity:.85; font-size:.88rem;}
div[class*="st-key-grid-"] {gap: .75rem !important;}
div[class*="st-key-grid-"] > div:has(> div[class*="st-key-card-"]) {flex: 0 0 calc((100% - 5 * .75rem) / 6) !important;
  width: calc((100% - 5 * .75rem) / 6) !important; min-width: 0 !important; gap: .3rem !important;}
.shop-card {background:#fff; border:1px solid #e6e8ec; border-radius:12px; overflow:hidden;
  box-shadow:0 1px 3px rgba(16,24,40,.06); margin-bottom:.35rem;}
.shop-card__img {position:relative; aspect-ratio:1/1; background:#f6f7f9; display:flex;
  align-items:center; justify-content:center;}
.shop-card__img img {width:100%; height:100%; object-fit:contain;}
.shop-card__match {position:absolute; top:6px; left:6px; background:#e8f6ee; color:#137a3d;
  font-size:.7rem; font-weight:700; padding:2px 7px; border-radius:10px;}
.shop-card__match.best {background:#1f2a44; color:#fff;}
.shop-card__note {position:absolute; bottom:6px; left:6px; right:6px; background:rgba(255,255,255,.88);
  color:#1d2433; font-size:.68rem; padding:2px 6px; border-radius:8px; text-align:center;}
/* the photos button is an icon; its words stay for screen readers (its accessible name) */
div[class*="st-key-views-"] button [data-testid="stMarkdownContainer"] {position:absolute !important;
  width:1px; height:1px; overflow:hidden; clip-path:inset(50%); white-space:nowrap;}
div[class*="st-key-dups-"] button {min-height:0; padding:0 .4rem; color:#35508a;}
/* the camera: small enough on a desktop that "Take Photo" and the first results fit the screen */
[data-testid="stCameraInput"] {max-width: 480px;}
.shop-card__body {padding:.45rem .6rem .5rem;}
.shop-card__cat {color:#6b7380; font-size:.68rem; text-transform:uppercase; letter-spacing:.04em;}
.shop-card__title {color:#1d2433; font-weight:600; font-size:.88rem; line-height:1.25; min-height:2.5em;
  overflow:hidden; display:-webkit-box; -webkit-line-clamp:2; -webkit-box-orient:vertical;}
.shop-card__title a {color:inherit; text-decoration:none;} .shop-card__title a:hover {text-decoration:underline;}
.shop-card__price {color:#1d2433; font-weight:700; font-size:.95rem; margin-top:.15rem;}
.shop-card__model {color:#35508a; font-size:.7rem; margin-top:.1rem;}
.shop-query {display:flex; align-items:center; gap:.6rem; background:#fff; border:1px solid #e6e8ec;
  border-radius:12px; padding:.4rem .6rem;}
.shop-query img {width:52px; height:52px; object-fit:cover; border-radius:8px;}
.shop-query__label {color:#6b7380; font-size:.72rem; text-transform:uppercase; letter-spacing:.05em;}
.shop-query__text {font-size:.9rem; font-weight:600; color:#1d2433;}
.shop-alert {border-radius:12px; padding:.8rem 1.1rem; margin:.4rem 0; border:1px solid;}
.shop-alert__title {margin:0 0 .2rem; font-size:1.02rem; font-weight:700;}
.shop-alert p {margin:0; font-size:.9rem;}
.shop-alert.error {background:#fdf0f0; border-color:#f3c5c5; color:#7a1f1f;}
.shop-alert.warning {background:#fff8ec; border-color:#f5dcaa; color:#7a4b00;}
.shop-alert.info {background:#eef4fd; border-color:#c9dbf6; color:#1f3f73;}
@media (max-width: 1000px) {
  div[class*="st-key-grid-"] > div:has(> div[class*="st-key-card-"]) {
    flex-basis: calc((100% - 2 * .75rem) / 3) !important; width: calc((100% - 2 * .75rem) / 3) !important;}
}
@media (max-width: 640px) {
  .block-container {padding: .5rem .7rem 2rem;}
  .shop-banner {padding:.45rem .8rem;} .shop-banner__title {font-size:1.1rem;} .shop-banner p {display:none;}
  div[class*="st-key-grid-"] {gap: .5rem !important;}
  div[class*="st-key-grid-"] > div:has(> div[class*="st-key-card-"]) {flex-basis: calc((100% - .5rem) / 2) !important;
    width: calc((100% - .5rem) / 2) !important;}
  [data-testid="stFileUploaderDropzone"] {padding: .5rem;}
  /* the refinements share two rows beside the query, so the first results still show without scrolling */
  .st-key-filters {gap: .4rem !important;}
  .st-key-filters > .st-key-category {flex: 1 1 150px !important; width: auto !important;}
  .st-key-filters > .st-key-quality {flex: 1 1 100px !important; width: auto !important;}
  .st-key-filters > .st-key-sort {flex: 1 1 120px !important; width: auto !important;}
}
</style>
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def image_src(data: bytes | None, content_type: str = "image/jpeg") -> str:
    """A data: URI for image bytes (the browser never needs to reach the API), or a placeholder."""
    if not data:
        return PLACEHOLDER_SRC
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def product_card(hit: dict, img_src: str, *, label: str = "", price: str = "", link: str = "",
                 show_model: str | None = None, note: str = "", testid: str = "result-card") -> str:
    """One product card; ``data-*`` attributes carry id, rank and model for tests and scripts. ``note``
    captions the picture (e.g. what a heat-map shows); no ``label``, no match badge."""
    title = _e(hit.get("title"))
    if link:
        title = f'<a href="{_e(link)}" target="_blank" rel="noopener" data-testid="product-link">{title}</a>'
    badge = (f'<span class="shop-card__match{" best" if hit.get("rank") == 1 else ""}" data-testid="match-label">'
             f"{_e(label)}</span>") if label else ""
    caption = f'<span class="shop-card__note" data-testid="card-note">{_e(note)}</span>' if note else ""
    return (
        f'<div class="shop-card" data-testid="{_e(testid)}" data-product-id="{_e(hit.get("id"))}" '
        f'data-rank="{_e(hit.get("rank") or "")}" data-model="{_e(hit.get("model") or "")}" '
        f'data-category="{_e(hit.get("category") or "")}">'
        f'<div class="shop-card__img"><img src="{_e(img_src)}" alt="{_e(hit.get("title"))}" loading="lazy"/>'
        f"{badge}{caption}</div>"
        f'<div class="shop-card__body"><div class="shop-card__cat">{_e(hit.get("category") or "")}</div>'
        f'<div class="shop-card__title" title="{_e(hit.get("title"))}">{title}</div>'
        + (f'<div class="shop-card__price" data-testid="price">{_e(price)}</div>' if price else "")
        + (f'<div class="shop-card__model">in {_e(show_model)}</div>' if show_model else "")
        + "</div></div>"
    )


def category_tile(category: str, count: int | None, img_src: str, *, model: str) -> str:
    """A landing tile: a catalogue's category with one of its products' pictures."""
    counted = f'<div class="shop-card__cat">{count} product{"" if count == 1 else "s"}</div>' if count else ""
    return (f'<div class="shop-card" data-testid="category-tile" data-model="{_e(model)}" '
            f'data-category="{_e(category)}"><div class="shop-card__img"><img src="{_e(img_src)}" '
            f'alt="{_e(category)}" loading="lazy"/></div><div class="shop-card__body">'
            f'<div class="shop-card__title">{_e(category.capitalize())}</div>{counted}</div></div>')


def alert(kind: str, title: str, message: str, *, testid: str) -> str:
    """A friendly message box; ``kind`` is error | warning | info."""
    return (f'<div class="shop-alert {_e(kind)}" data-testid="{_e(testid)}" role="alert">'
            f'<div class="shop-alert__title">{_e(title)}</div><p>{_e(message)}</p></div>')


def banner(title: str, subtitle: str) -> str:
    return (f'<div class="shop-banner"><div class="shop-banner__title">{_e(title)}</div>'
            f"<p>{_e(subtitle)}</p></div>")


def query_panel(label: str, img_src: str | None = None, text: str | None = None) -> str:
    """The shopper's query (a thumbnail and/or words) in one slim strip above the results."""
    body = f'<img src="{_e(img_src)}" alt="your photo"/>' if img_src else ""
    words = f'<div class="shop-query__text">{_e(text)}</div>' if text else ""
    return (f'<div class="shop-query" data-testid="query-panel">{body}<div>'
            f'<div class="shop-query__label">{_e(label)}</div>{words}</div></div>')
