"""The shop page: pick a catalogue, search by photo (optionally cropped), camera, link or words, and browse
a product grid. Shoppers see shop words only; operator details go to the log and the status page."""

from __future__ import annotations

import io
import logging
import math
from typing import Any

import streamlit as st

from ui import catalogues as catalogue_choice
from ui import render
from ui.client import ApiClient, ApiError, ApiUnavailable, api_url_from_env, upload_limit_from_env
from ui.filters import ANY_CATEGORY, Refinements, nothing_found, refinements
from ui.grid import ALL, img_src, show_results
from ui.landing import landing
from ui.query import MAX_WORDS, Query, QueryError, fetch_image, refine, similar_query, text_query
from utils.images import ShapePolicy

logger = logging.getLogger(__name__)

PAGE_SIZE = 12
RETRY_SECONDS = 3.0
MODES = {"photo": "Photo", "camera": "Camera", "link": "Image link", "text": "Describe it"}


@st.cache_resource
def _client(api_url: str) -> ApiClient:
    return ApiClient(api_url)


def _html(markup: str) -> None:
    st.markdown(markup, unsafe_allow_html=True)


# --- catalogues and outages ----------------------------------------------------------------------

def _unavailable(client: ApiClient) -> None:
    _html(render.alert("error", "Search is unavailable, retrying",
                       "We can't search the catalogue right now. This page tries again on its own — "
                       "your photo and search are kept.", testid="api-down"))
    _retry_when_back(client)


@st.fragment(run_every=RETRY_SECONDS)
def _retry_when_back(client: ApiClient) -> None:
    """Every few seconds: once the search service answers again, rerun the whole page (the query stays)."""
    try:
        client.health()
    except (ApiUnavailable, ApiError):
        return
    st.rerun(scope="app")


# --- the query -----------------------------------------------------------------------------------

def _new_search() -> None:
    """A new catalogue, mode or query replaces a "more like this" detour."""
    st.query_params.pop("similar", None)


def _model_changed() -> None:
    _new_search()
    catalogue_choice.forget_link_notice()
    st.session_state["category"] = ANY_CATEGORY  # categories differ between catalogues


def _shot() -> None:
    """A camera shot is a new search, brought into view as an upload's results are."""
    _new_search()
    st.session_state["scroll_to_query"] = True


def _limit_mb(limit: int) -> int:
    return max(1, math.ceil(limit / 1_000_000))


def _photo_query(data: bytes, filename: str) -> Query:
    """A photo as a query, held to the API's own upload limit (the figure the uploader states)."""
    limit = upload_limit_from_env()
    if len(data) > limit:
        raise QueryError(f"that photo is {len(data) / 1e6:.1f} MB; photos up to {_limit_mb(limit)} MB are accepted")
    return Query(kind="image", image=data, filename=filename or "photo.jpg")


def _cropped(data: bytes, name: str) -> Query:
    """Like Lens: the shopper drags a box over the photo and only that region is searched."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    from streamlit_cropper import st_cropper

    try:
        opened = Image.open(io.BytesIO(data))
        # the shape policy's defaults, from the header: a strip or a pixel bomb is not decoded here (the API,
        # which knows the configured limits, says what is wrong with it)
        if ShapePolicy().refusal(*opened.size) is not None:
            return _photo_query(data, name)
        image = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return _photo_query(data, name)  # not a readable photo: the API says so, kindly
    region = st_cropper(image, realtime_update=True, box_color="#35508a", key=f"cropper-{name}-{len(data)}")
    out = io.BytesIO()
    region.convert("RGB").save(out, "JPEG", quality=92)
    return _photo_query(out.getvalue(), f"crop-{name}")


def _upload() -> Query | None:
    mb = _limit_mb(upload_limit_from_env())
    up = st.file_uploader("Upload a product photo", type=["jpg", "jpeg", "png", "webp", "bmp", "gif"],
                          key="upload", on_change=_new_search, max_upload_size=mb, label_visibility="collapsed",
                          help=f"Photos up to {mb} MB")
    if up is None:
        return None
    if st.toggle("Crop: search only part of the photo", key="crop", on_change=_new_search):
        return _cropped(up.getvalue(), up.name)
    return _photo_query(up.getvalue(), up.name)


def _text() -> Query | None:
    with st.form("text-search", border=False, enter_to_submit=True), \
            st.container(horizontal=True, vertical_alignment="bottom", gap="small"):
        st.text_input("Describe what you are looking for", key="q", bind="query-params",
                      placeholder="e.g. red ceramic mug", label_visibility="collapsed")
        st.form_submit_button("Search", type="primary", on_click=_new_search)
    return text_query(str(st.session_state.get("q") or ""))


def _link() -> Query | None:
    url = st.text_input("Paste an image link", key="url", placeholder="https://example.com/photo.jpg",
                        on_change=_new_search)
    if not url.strip():
        return None
    cached = st.session_state.get("fetched")
    if cached and cached[0] == url:
        return cached[1]
    with st.spinner("Fetching the image…"):
        query = fetch_image(url)
    st.session_state["fetched"] = (url, query)
    return query


def _query_input() -> Query | None:
    """The query from the chosen input; a problem with it is shown and gives None."""
    mode = st.segmented_control("Search by", list(MODES), default="photo", required=True, key="mode",
                                bind="query-params", on_change=_new_search, label_visibility="collapsed",
                                format_func=lambda m: MODES.get(m, m))
    try:
        if mode == "camera":
            shot = st.camera_input("Take a photo of a product", key="camera", on_change=_shot)
            return _photo_query(shot.getvalue(), "camera.jpg") if shot else None
        if mode == "link":
            return _link()
        if mode == "text":
            return _text()
        return _upload()
    except QueryError as exc:
        _html(render.alert("warning", "We couldn't use that", str(exc), testid="query-error"))
        return None


def _refine_box(query: Query) -> Query:
    """Under the photo: words that steer its search ("in red") and words to avoid ("stripes"), sent together."""
    with st.form("refine", border=False, enter_to_submit=True), \
            st.container(horizontal=True, vertical_alignment="bottom", gap="small", key="refine-box"):
        st.text_input("Refine with words", key="words", max_chars=MAX_WORDS, label_visibility="collapsed",
                      placeholder="Refine with words, e.g. in red")
        st.text_input("Words to avoid", key="avoid", max_chars=MAX_WORDS, label_visibility="collapsed",
                      placeholder="Avoid, e.g. stripes")
        st.form_submit_button("Refine", on_click=_new_search)
    return refine(query, str(st.session_state.get("words") or ""), str(st.session_state.get("avoid") or ""))


def _similar_from_url(client: ApiClient, catalogues: list[dict[str, Any]]) -> Query | None:
    """``?similar=<model>/<id>``: "more like this" lives in the URL, so Back, refresh and links keep it."""
    raw = st.query_params.get("similar") or ""
    model, _, product_id = raw.partition("/")
    if not product_id or model not in {m["name"] for m in catalogues}:
        return None
    cached = st.session_state.get("similar_title")
    if not cached or cached[0] != raw or not cached[1]:  # a link, or a name the API could not give before
        try:
            cached = (raw, str(client.product(model, product_id).get("title") or ""))
        except (ApiUnavailable, ApiError):
            cached = (raw, "")  # asked again on the next run, once the API is back
        st.session_state["similar_title"] = cached
    return similar_query(model, product_id, cached[1])


# --- searching -----------------------------------------------------------------------------------

def _search(client: ApiClient, model: str, query: Query, refined: Refinements, offset: int) -> dict[str, Any]:
    opts: dict[str, Any] = {"top_k": PAGE_SIZE, "offset": offset, **refined.params()}
    if query.kind == "similar":
        return client.similar(query.product_model, query.product_id, **opts)
    if query.kind == "text":
        return client.search_text(model, query.text, **opts)
    opts.update(words=query.words, avoid=query.avoid)
    if model == ALL:
        return client.search_all(query.image or b"", query.filename, **opts)
    return client.search(model, query.image or b"", query.filename, **opts)


def _pages(client: ApiClient, model: str, query: Query, refined: Refinements) -> list[dict[str, Any]]:
    """The pages fetched so far for this search: the first on a new search, one more per "Load more"."""
    key = (client.base_url, model, query.signature, refined)
    state = st.session_state.get("pages")
    if not state or state[0] != key:
        with st.spinner("Searching…"):
            state = (key, [_search(client, model, query, refined, 0)])
        st.session_state["pages"] = state
    if st.session_state.pop("load_more", False) and len(state[1][-1].get("results") or []) >= PAGE_SIZE:
        offset = sum(len(p.get("results") or []) for p in state[1])
        with st.spinner("Loading more…"):
            state[1].append(_search(client, model, query, refined, offset))
    return list(state[1])


_NARROW_WORDS = ("aspect", "elongated", "narrow")


def _bad_image(message: str) -> tuple[str, str]:
    """What the shopper reads when the API could not use the photo, in its words where they say what is wrong
    (the API's reason: "extreme aspect ratio (4000x150 is more elongated than 20:1)")."""
    reason = message.split(": ", 1)[-1].strip()
    detail = reason[reason.find("(") + 1:reason.rfind(")")] if "(" in reason and reason.endswith(")") else reason
    lowered = reason.lower()
    if any(word in lowered for word in _NARROW_WORDS):
        return "That photo is too long and narrow", f"{detail[:1].upper()}{detail[1:]}. Please crop it closer " \
                                                    "to the product, or use another photo."
    if "pixel" in lowered or "too large" in lowered or "side" in lowered:
        return "That photo is too large", f"{detail[:1].upper()}{detail[1:]}. Please use a smaller photo."
    return "We couldn't read that image", "Please try another photo (JPEG, PNG, WebP, GIF or BMP)."


def _search_failed(client: ApiClient, exc: ApiError | ApiUnavailable) -> None:
    logger.warning("search failed: %r", exc)  # operator details go to the log, never to the shopper
    if isinstance(exc, ApiUnavailable) or exc.status >= 500:
        _unavailable(client)
        return
    limit = _limit_mb(upload_limit_from_env())
    title, message, testid = {
        413: ("That photo is too large", f"Please use a photo under {limit} MB.", "bad-query"),
        404: ("That product is no longer available", "Please start a new search.", "gone"),
        422: ("That search isn't valid", "Please change your search and try again.", "bad-query"),
    }.get(exc.status, (*_bad_image(exc.message), "bad-query"))
    _html(render.alert("warning", title, message, testid=testid))


# --- page ----------------------------------------------------------------------------------------

def _query_strip(client: ApiClient, query: Query) -> None:
    if query.kind == "similar":
        src = img_src(client, {"model": query.product_model, "id": query.product_id,
                               "image_url": client.image_url(query.product_model, query.product_id)})
        _html(render.query_panel("More like", src, query.product_title))
        st.button("← Back to your search", key="back", on_click=_new_search)
    elif query.kind == "text":
        _html(render.query_panel("You searched for", text=f"“{query.text}”"))
    else:
        _html(render.query_panel("Your photo", render.image_src(query.image), query.refinement or None))


def _scroll_to_query() -> None:
    """After "More like this" or a camera shot the new query and its results come into view (Streamlit keeps
    the scroll position). Drawn after the results, so the page is long enough to scroll that far."""
    if st.session_state.pop("scroll_to_query", False):
        st.html("<script>setTimeout(() => window.parent.document.querySelector('[data-testid=query-panel]')"
                "?.scrollIntoView({block: 'start'}), 150)</script>", unsafe_allow_javascript=True)


def shop_page() -> None:
    _html(render.CSS)
    _html(render.banner("Visual Product Search", "Snap it, upload it or describe it — find it in our catalogue."))
    client = _client(api_url_from_env())
    catalogues = catalogue_choice.catalogues(client)
    if catalogues is None:
        _unavailable(client)
        return
    if not catalogues:
        _html(render.alert("info", "Our catalogue is coming soon",
                           "Products are being added. Please check back shortly.", testid="no-models"))
        return
    model = catalogue_choice.selector(catalogues, _model_changed)
    typed = _query_input()  # always drawn, so an upload survives a "more like this" detour and outages
    if typed is not None and typed.kind == "image":
        typed = _refine_box(typed)
    query = _similar_from_url(client, catalogues) or typed
    if query is None:
        st.caption("Upload a photo, take one, paste a link or describe a product to start shopping.")
        landing(client, catalogues, model)
        return
    with st.container(horizontal=True, vertical_alignment="center", gap="small", key="filters"):
        _query_strip(client, query)
        refined = refinements(catalogues, model)
    try:
        pages = _pages(client, query.product_model or model, query, refined)
    except (ApiUnavailable, ApiError) as exc:
        _search_failed(client, exc)
        return
    st.session_state["explain_image"] = query.image if query.kind == "image" else None  # "Why this match?"
    if not show_results(client, catalogues, model if query.kind != "similar" else query.product_model, pages,
                        PAGE_SIZE):
        nothing_found(refined)
    _scroll_to_query()
