"""What the shop shows before any search: each catalogue's categories, each with one of its products'
pictures (the product the category's own name finds first). A tile opens that category."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import render
from ui.client import ApiClient, ApiError, ApiUnavailable
from ui.grid import ALL, display_name, img_src

TILES = 12  # categories shown per catalogue, the largest first


@st.cache_data(ttl=300, max_entries=500, show_spinner=False)
def _featured(api_url: str, model: str, category: str) -> dict[str, Any] | None:
    """The product the category's name finds first within the category (cached: a landing is drawn often)."""
    body = ApiClient(api_url).search_text(model, category, top_k=1, category=category)
    hits = body.get("results") or []
    return {**hits[0], "model": model} if hits else None


def _categories(spec: dict[str, Any]) -> list[tuple[str, int | None]]:
    """The catalogue's categories, the largest first, with their product counts (when the API has them)."""
    counts = {str(c): int(n) for c, n in (spec.get("category_counts") or {}).items() if c}
    names = sorted(counts, key=lambda c: (-counts[c], c)) or [str(c) for c in spec.get("categories") or [] if c]
    return [(c, counts.get(c)) for c in names[:TILES]]


def _open(model: str, category: str) -> None:
    """Browse a category: its products, best matching its own name first."""
    st.session_state.update(model=model, mode="text", q=category, category=category)
    st.query_params.pop("similar", None)


def landing(client: ApiClient, catalogues: list[dict[str, Any]], model: str) -> None:
    """Category tiles for the chosen catalogue, or for each catalogue under its name (All catalogues)."""
    chosen = [m for m in catalogues if model in (ALL, m.get("name"))]
    for spec in chosen:
        name = str(spec["name"])
        categories = _categories(spec)
        if not categories:
            continue
        st.markdown(f"**Shop {display_name(catalogues, name)}**" if model == ALL else "**Shop by category**")
        with st.container(horizontal=True, gap="small", key=f"grid-landing-{name}"):
            for i, (category, count) in enumerate(categories):
                try:
                    hit = _featured(client.base_url, name, category)
                except (ApiError, ApiUnavailable):
                    hit = None
                with st.container(key=f"card-cat-{name}-{i}", gap=None):
                    st.markdown(render.category_tile(category, count, img_src(client, hit) if hit else
                                                     render.PLACEHOLDER_SRC, model=name), unsafe_allow_html=True)
                    st.button(f"Shop {category}", key=f"shop-{name}-{i}", on_click=_open, args=(name, category),
                              width="stretch")
