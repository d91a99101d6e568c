"""Streamlit shopper UI: pick a catalogue, search by photo, camera, link or words, browse a product grid."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

# `streamlit run ui/app.py` puts ui/ (not the project root) on sys.path; the ui package needs the root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from ui import render  # noqa: E402
from ui.client import ApiClient, ApiError, ApiUnavailable, api_url_from_env  # noqa: E402
from ui.query import Query, QueryError, fetch_image, image_query, similar_query, text_query  # noqa: E402
from ui.results import ResultGroup, groups_from_response  # noqa: E402

ALL = "all"
PER_ROW = 5
MODES = ("Upload photo", "Camera", "Image link", "Describe it")


@st.cache_resource
def _client(api_url: str) -> ApiClient:
    return ApiClient(api_url)


@st.cache_data(ttl=900, max_entries=5000, show_spinner=False)
def _image_bytes(api_url: str, path: str) -> bytes:
    """Product image bytes fetched by the UI server, so the browser never has to reach the API."""
    return _client(api_url).image(path)


def _img_src(client: ApiClient, hit: dict) -> str:
    """A picture the API serves is fetched here and inlined; a remote original is linked as is."""
    url = hit.get("image_url")
    if not url:
        return render.PLACEHOLDER_SRC
    path = client.image_path(hit.get("model") or "", hit.get("id", ""))
    if urlsplit(url).path.endswith(path):
        url = path  # the API names itself by the address it was called on; use the one we can reach
    elif url.startswith(("http://", "https://")):
        return url
    try:
        return render.image_src(_image_bytes(client.base_url, url))
    except (ApiError, ApiUnavailable):
        return render.PLACEHOLDER_SRC


def _html(markup: str) -> None:
    st.markdown(markup, unsafe_allow_html=True)


# --- API state -----------------------------------------------------------------------------------

def _api_down(client: ApiClient) -> None:
    _html(render.alert("error", "The search service is offline",
                       f"We can't reach the product search service at {client.base_url} right now. "
                       "Please try again in a moment.", testid="api-down"))
    st.button("Try again", key="retry", type="primary")  # a click reruns the page, checking again


def _load_catalogues(client: ApiClient) -> tuple[dict, list[dict]] | None:
    """``(health, models)``, or None (with the offline message shown) when the API is down."""
    try:
        return client.health(), client.models()
    except ApiUnavailable:
        with st.sidebar:
            _html(render.status_line("down", None))
        _api_down(client)
        return None
    except ApiError as exc:
        _html(render.alert("error", "The search service has a problem", exc.message, testid="api-error"))
        return None


def _display_name(models: list[dict], name: str) -> str:
    if name == ALL:
        return "All models"
    spec = next((m for m in models if m.get("name") == name), {})
    return spec.get("display_name") or name.replace("_", " ").title()


def _product_count(spec: dict, health: dict) -> int | None:
    for key in ("num_products", "products", "product_count"):
        if isinstance(spec.get(key), int):
            return spec[key]
    per_model = (health.get("models") or {}).get(spec.get("name"), {})
    return per_model.get("products") if isinstance(per_model, dict) else None


# --- sidebar and controls ------------------------------------------------------------------------

def _sidebar(health: dict, models: list[dict], model: str) -> tuple[int, str | None, float | None]:
    """Service status, catalogues, and the search options: ``(top_k, category, min_score)``."""
    with st.sidebar:
        st.subheader("Store")
        _html(render.status_line(str(health.get("status", "healthy")), health.get("total_products")))
        per_model = health.get("models") or {}
        for spec in models:
            built = (per_model.get(spec.get("name")) or {}).get("built_at") or spec.get("built_at")
            _html(render.model_box(_display_name(models, spec["name"]), _product_count(spec, health), built,
                                   searchable=bool(spec.get("searchable", True))))
        st.subheader("Refine")
        top_k = st.slider("Results", 1, 100, 10, key="top_k", help="How many products to show (per catalogue)")
        categories = _categories(models, model)
        category = st.selectbox("Category", ["All categories", *categories], key=f"category-{model}")
        min_pct = st.slider("Minimum match", 0, 100, 0, step=5, format="%d%%", key="min_pct")
    return top_k, (None if category == "All categories" else category), (min_pct / 100 if min_pct else None)


def _categories(models: list[dict], model: str) -> list[str]:
    chosen = [m for m in models if model in (ALL, m.get("name"))]
    return sorted({c for m in chosen for c in (m.get("categories") or []) if c})


def _model_selector(models: list[dict]) -> str | None:
    names = [m["name"] for m in models if m.get("searchable", True)]
    if not names:
        _html(render.alert("warning", "No catalogue is ready yet",
                           "The product catalogues are still being built. Please check back shortly.",
                           testid="no-models"))
        return None
    options = names + [ALL] if len(names) > 1 else names
    return st.segmented_control("Search in", options, default=options[0], required=True, key="model",
                                format_func=lambda n: _display_name(models, n), on_change=_clear_similar)


def _clear_similar() -> None:
    st.session_state.pop("similar", None)


def _query_input() -> Query | None:
    """The query from the chosen input; a problem with it is shown and gives None."""
    mode = st.segmented_control("Search by", MODES, default=MODES[0], required=True, key="mode",
                                on_change=_clear_similar, label_visibility="collapsed")
    try:
        if mode == "Upload photo":
            up = st.file_uploader("Upload a product photo", type=["jpg", "jpeg", "png", "webp", "bmp", "gif"],
                                  key="upload", on_change=_clear_similar)
            return image_query(up.getvalue(), up.name) if up else None
        if mode == "Camera":
            shot = st.camera_input("Take a photo of a product", key="camera", on_change=_clear_similar)
            return image_query(shot.getvalue(), "camera.jpg") if shot else None
        if mode == "Image link":
            url = st.text_input("Paste an image link", key="url", placeholder="https://example.com/photo.jpg",
                                on_change=_clear_similar)
            return _cached_fetch(url) if url.strip() else None
        words = st.text_input("Describe what you are looking for", key="text",
                              placeholder="e.g. red ceramic mug", on_change=_clear_similar)
        return text_query(words)
    except QueryError as exc:
        _html(render.alert("warning", "We couldn't use that", str(exc), testid="query-error"))
        return None


def _cached_fetch(url: str) -> Query:
    cached = st.session_state.get("fetched")
    if cached and cached[0] == url:
        return cached[1]
    with st.spinner("Fetching the image…"):
        query = fetch_image(url)
    st.session_state["fetched"] = (url, query)
    return query


# --- searching -----------------------------------------------------------------------------------

def _search(client: ApiClient, model: str, query: Query, opts: dict) -> dict:
    if query.kind == "similar":
        return client.similar(query.product_model, query.product_id, **opts)
    if query.kind == "text":
        return client.search_text(model, query.text, **opts)
    if query.image is None:
        raise ValueError(f"a {query.kind!r} query without an image")
    if model == ALL:
        return client.search_all(query.image, query.filename, **opts)
    return client.search(model, query.image, query.filename, **opts)


def _cached_search(client: ApiClient, model: str, query: Query, opts: dict) -> dict:
    """Search once per distinct query and options; widget reruns (e.g. a click) reuse the answer."""
    key = (client.base_url, model, query.signature, tuple(sorted(opts.items())))
    last = st.session_state.get("last_search")
    if last and last[0] == key:
        return last[1]
    with st.spinner("Searching the catalogue…"):
        response = _search(client, model, query, opts)
    st.session_state["last_search"] = (key, response)
    return response


def _search_failed(client: ApiClient, exc: ApiError | ApiUnavailable, model_name: str) -> None:
    if isinstance(exc, ApiUnavailable):
        _api_down(client)
    elif exc.not_built:
        _html(render.alert("warning", f"{model_name} is not ready yet",
                           f"This catalogue has not been built yet, so it can't be searched. ({exc.message})",
                           testid="not-built"))
    elif exc.status in (400, 413, 415, 422):
        _html(render.alert("warning", "We couldn't read that image" if exc.status != 422
                           else "That search isn't valid", exc.message, testid="bad-query"))
    else:
        _html(render.alert("error", "Search failed", exc.message, testid="search-error"))


# --- results -------------------------------------------------------------------------------------

def _grid(client: ApiClient, group: ResultGroup, models: list[dict]) -> None:
    for start in range(0, len(group.hits), PER_ROW):
        columns = st.columns(PER_ROW, gap="small")
        for column, hit in zip(columns, group.hits[start:start + PER_ROW], strict=False):  # last row may be short
            with column:
                shown = _display_name(models, hit["model"]) if group.show_model else None
                _html(render.product_card(hit, _img_src(client, hit), show_model=shown))
                st.button("More like this", key=f"more-{group.key}-{hit['model']}-{hit.get('id')}-{start}",
                          on_click=_more_like_this, args=(hit["model"], hit.get("id"), hit.get("title", "")),
                          width="stretch")


def _more_like_this(model: str, product_id: str, title: str) -> None:
    st.session_state["similar"] = similar_query(model, product_id, title)


def _query_panel(client: ApiClient, query: Query) -> None:
    if query.kind == "similar":
        src = _img_src(client, {"model": query.product_model, "id": query.product_id,
                                "image_url": client.image_url(query.product_model, query.product_id)})
        _html(render.query_panel("More like", src, query.product_title))
        st.button("← Back", key="back", help="Back to your own search", on_click=_clear_similar,
                  width="stretch")
    elif query.kind == "text":
        _html(render.query_panel("You searched for", text=f"“{query.text}”"))
    else:
        _html(render.query_panel("Your photo", render.image_src(query.image)))


def _results(client: ApiClient, models: list[dict], model: str, query: Query, response: dict) -> None:
    groups = groups_from_response(response, query_model=query.product_model or model)
    total = sum(len(g.hits) for g in groups if not g.merged) if len(groups) > 1 else len(groups[0].hits)
    ms = response.get("search_time_ms")
    timing = f" in {ms:.0f} ms" if isinstance(ms, (int, float)) else ""
    st.caption(f"{total} result{'s' if total != 1 else ''}{timing}")
    if total == 0:
        _html(render.alert("info", "No products matched",
                           "Try another photo, a different category, or a lower minimum match.",
                           testid="no-results"))
        return
    for group in groups:
        title = "Best matches" if group.merged else _display_name(models, group.model)
        _html(render.group_header(title, group.subtitle, testid="merged-group" if group.merged else "model-group",
                                  model=group.model))
        if group.error:
            _html(render.alert("warning", "Not available", group.error, testid="group-error"))
        elif not group.hits:
            st.caption("No products matched in this catalogue.")
        else:
            _grid(client, group, models)


# --- page ----------------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="Visual Product Search", page_icon="🛍️", layout="wide")
    _html(render.CSS)
    _html(render.banner("Visual Product Search", "Snap it, upload it or describe it — find it in our catalogue."))
    client = _client(api_url_from_env())
    loaded = _load_catalogues(client)
    if loaded is None:
        return
    health, models = loaded
    model = _model_selector(models)
    if model is None:
        return
    top_k, category, min_score = _sidebar(health, models, model)
    typed = _query_input()  # always drawn, so an upload survives a "more like this" detour
    query = st.session_state.get("similar") or typed
    if query is None:
        st.caption("Upload a photo, take one, paste a link or describe a product to start shopping.")
        return
    left, right = st.columns([1, 5], gap="medium")
    with left:
        _query_panel(client, query)
    with right:
        try:
            response = _cached_search(client, model, query, dict(top_k=top_k, category=category,
                                                                  min_score=min_score))
        except (ApiUnavailable, ApiError) as exc:
            _search_failed(client, exc, _display_name(models, query.product_model or model))
            return
        _results(client, models, model, query, response)


main()
