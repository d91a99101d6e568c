"""The results: one ranking (for all models, each catalogue's own results in tabs), product cards with a
shopper's match label, price and link, "More like this", every view of a product, and "Load more"."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import streamlit as st

from ui import render
from ui.client import ApiClient, ApiError, ApiUnavailable
from ui.labels import hit_price, match_label, price_text, product_link
from ui.results import Results, count_text, results_from_pages

ALL = "all"


def _html(markup: str) -> None:
    st.markdown(markup, unsafe_allow_html=True)


def _spec(catalogues: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((m for m in catalogues if m.get("name") == name), {})


def display_name(catalogues: list[dict[str, Any]], name: str) -> str:
    if name == ALL:
        return "All catalogues"
    return str(_spec(catalogues, name).get("display_name") or name.replace("_", " ").title())


@st.cache_data(ttl=900, max_entries=5000, show_spinner=False)
def _image_bytes(api_url: str, path: str) -> bytes:
    """Product image bytes fetched by the UI server, so the browser never has to reach the API."""
    return ApiClient(api_url).image(path)


def _fetchable(client: ApiClient, url: str) -> str:
    """An API image URL as a path we can reach (the API names itself by the address it was called on)."""
    parts = urlsplit(url)
    if parts.scheme and url.startswith(client.base_url):
        return parts.path
    return url


def img_src(client: ApiClient, hit: dict[str, Any]) -> str:
    """A picture the API serves is fetched here and inlined; a remote original is linked as is."""
    url = str(hit.get("image_url") or "")
    if not url:
        return render.PLACEHOLDER_SRC
    path = client.image_path(hit.get("model") or "", hit.get("id", ""))
    if urlsplit(url).path.endswith(path):
        url = path
    elif url.startswith(("http://", "https://")):
        return url
    try:
        return render.image_src(_image_bytes(client.base_url, url))
    except (ApiError, ApiUnavailable):
        return render.PLACEHOLDER_SRC


def _more_like_this(model: str, product_id: str, title: str = "") -> None:
    st.query_params["similar"] = f"{model}/{product_id}"
    st.session_state["similar_title"] = (f"{model}/{product_id}", title)  # the strip's name, even while offline
    st.session_state["scroll_to_query"] = True


@st.dialog("Product", width="large")
def _details(client: ApiClient, hit: dict[str, Any], spec: dict[str, Any]) -> None:
    """Every view of the product, its price and a link to its page."""
    try:
        info = client.product(hit["model"], str(hit.get("id")))
    except (ApiError, ApiUnavailable):
        info = {}
    st.markdown(f"**{hit.get('title', '')}**")
    price = price_text(hit_price(hit), str(spec.get("currency") or ""))
    st.caption(" · ".join(p for p in (str(hit.get("category") or ""), price) if p))
    views = [str(u) for u in info.get("view_urls") or [] if u]
    with st.container(horizontal=True, gap="small", key="views"):
        for n, url in enumerate(views):
            try:
                st.image(_image_bytes(client.base_url, _fetchable(client, url)), width=220,
                         caption=f"View {n + 1} of {len(views)}")
            except (ApiError, ApiUnavailable):
                continue
    link = product_link(hit, str(spec.get("url_template") or ""))
    with st.container(horizontal=True, gap="small"):
        if link:
            st.link_button("Open product page", link, type="primary")
        if st.button("More like this", key="dialog-more"):
            _more_like_this(hit["model"], str(hit.get("id")), str(hit.get("title") or ""))
            st.rerun()


SIMILAR_SHOWN = 24  # near-duplicates listed in the "+N similar" dialog


@st.dialog("Almost the same", width="large")
def _duplicates(client: ApiClient, hit: dict[str, Any], spec: dict[str, Any]) -> None:
    """The products folded into this one because they look almost the same (the API's near-duplicates)."""
    ids = [str(i) for i in hit.get("duplicates") or []]
    st.caption(f"{len(ids)} more product{'' if len(ids) == 1 else 's'} look almost the same as "
               f"“{hit.get('title', '')}”")
    currency, template = str(spec.get("currency") or ""), str(spec.get("url_template") or "")
    with st.container(horizontal=True, gap="small", key="grid-dups"):
        for product_id in ids[:SIMILAR_SHOWN]:
            try:
                info = {**client.product(hit["model"], product_id), "model": hit["model"]}
            except (ApiError, ApiUnavailable):
                continue
            with st.container(key=f"card-dup-{product_id}", gap=None):
                _html(render.product_card(info, img_src(client, info), price=price_text(hit_price(info), currency),
                                          link=product_link(info, template), testid="similar-card"))
    if len(ids) > SIMILAR_SHOWN:
        st.caption(f"and {len(ids) - SIMILAR_SHOWN} more")


def _card(client: ApiClient, catalogues: list[dict[str, Any]], hit: dict[str, Any], *, group: str,
          top_score: float | None, show_model: bool) -> None:
    spec = _spec(catalogues, hit["model"])
    ident = f"{group}-{hit['model']}-{hit.get('id')}"
    heat, note = _heat_map(client, hit, ident)  # "Why this match?" takes the picture's place: the card keeps its size
    with st.container(key=f"card-{ident}", gap=None):
        _html(render.product_card(
            hit, heat or img_src(client, hit), label=match_label(hit, top_score),
            price=price_text(hit_price(hit), str(spec.get("currency") or "")),
            link=product_link(hit, str(spec.get("url_template") or "")),
            show_model=display_name(catalogues, hit["model"]) if show_model else None, note=note))
        with st.container(horizontal=True, gap="small", wrap=False):
            if st.button("All photos", key=f"views-{ident}", icon=":material/photo_library:", help="All photos"):
                _details(client, hit, spec)
            st.button("More like this", key=f"more-{ident}", on_click=_more_like_this,
                      args=(hit["model"], str(hit.get("id")), str(hit.get("title") or "")), width="stretch")
        folded = len(hit.get("duplicates") or [])
        if folded and st.button(f"+{folded} similar", key=f"dups-{ident}", type="tertiary",
                                help="Products that look almost the same"):
            _duplicates(client, hit, spec)
        if st.session_state.get("explain_image"):
            st.toggle("Why this match?", key=f"why-{ident}")


@st.cache_data(ttl=900, max_entries=500, show_spinner=False)
def _explanation(api_url: str, model: str, product_id: str, image: bytes) -> bytes:
    return ApiClient(api_url).explain(model, product_id, image, view="hit")


def _heat_map(client: ApiClient, hit: dict[str, Any], ident: str) -> tuple[str | None, str]:
    """"Why this match?" (photo searches): the product's picture with a heat-map of what in it resembles
    the photo (a data URI) and its caption; (None, "") while the toggle is off."""
    image = st.session_state.get("explain_image")
    if not image or not st.session_state.get(f"why-{ident}"):
        return None, ""
    try:
        png = _explanation(client.base_url, hit["model"], str(hit.get("id")), image)
    except (ApiError, ApiUnavailable):
        return None, "No explanation for this product right now"
    return render.image_src(png, "image/png"), "Warm areas look most like your photo"


def _grid(client: ApiClient, catalogues: list[dict[str, Any]], hits: list[dict[str, Any]], *, group: str,
          show_model: bool = False) -> None:
    top = hits[0].get("score") if hits else None
    top_score = float(top) if isinstance(top, int | float) else None
    with st.container(horizontal=True, gap="small", key=f"grid-{group}"):
        for hit in hits:
            _card(client, catalogues, hit, group=group, top_score=top_score, show_model=show_model)


def _load_more() -> None:
    st.session_state["load_more"] = True


def _tabs(client: ApiClient, catalogues: list[dict[str, Any]], results: Results) -> None:
    names = list(results.per_model)
    tabs = st.tabs([display_name(catalogues, ALL), *(display_name(catalogues, n) for n in names)])
    with tabs[0]:
        st.caption(f"{count_text(len(results.ranking), results.has_more)} from every catalogue, best first")
        _grid(client, catalogues, results.ranking, group="merged", show_model=True)
    for tab, name in zip(tabs[1:], names, strict=True):
        with tab:
            hits = results.per_model[name]
            st.caption(f"{count_text(len(hits), results.has_more)} in {display_name(catalogues, name)}")
            if hits:
                _grid(client, catalogues, hits, group=name)


def show_results(client: ApiClient, catalogues: list[dict[str, Any]], model: str, pages: list[dict[str, Any]],
                 page_size: int) -> bool:
    """The grid (or the merged ranking and a tab per catalogue); False when there is nothing to show."""
    results = results_from_pages(pages, query_model=model, page_size=page_size)
    if not results.ranking:
        return False
    if model == ALL and results.per_model:
        _tabs(client, catalogues, results)
    else:
        st.caption(count_text(len(results.ranking), results.has_more))
        _grid(client, catalogues, results.ranking, group=model)
    if results.has_more:
        st.button("Load more", key="load-more", on_click=_load_more, type="primary")
    return True
