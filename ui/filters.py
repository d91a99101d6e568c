"""The controls above the results that narrow or order a search (category, match, price, sort), all kept
in the URL, and what to say when they leave nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import streamlit as st

from ui import render
from ui.grid import ALL

ANY_CATEGORY = "All categories"
# the minimum-match control: the API's calibrated ``match`` (the labels' "Good" and "Great" floors)
MATCH_FLOORS = {"Any match": None, "Good matches": 0.4, "Great matches": 0.65}
# the API orders the best matches by a column: sort=price, or -price for descending
SORTS = {"Best match": None, "Price: low to high": "price", "Price: high to low": "-price"}


@dataclass(frozen=True)
class Refinements:
    """What the shopper narrowed the search to; ``params()`` are the API's query parameters."""

    category: str | None = None
    min_match: float | None = None
    sort: str | None = None
    price_min: float | None = None
    price_max: float | None = None

    def params(self) -> dict[str, Any]:
        return asdict(self)


def _chosen(catalogues: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    return [m for m in catalogues if model in (ALL, m.get("name"))]


def _category(catalogues: list[dict[str, Any]], model: str) -> str | None:
    categories = sorted({str(c) for m in _chosen(catalogues, model) for c in (m.get("categories") or []) if c})
    if st.session_state.get("category") not in (None, ANY_CATEGORY, *categories):
        st.session_state["category"] = ANY_CATEGORY
    value = st.selectbox("Category", [ANY_CATEGORY, *categories], key="category", bind="query-params",
                         label_visibility="collapsed", width=220)
    return None if value in (None, ANY_CATEGORY) else str(value)


def _choice(label: str, choices: dict[str, Any], key: str, width: int) -> Any:
    if st.session_state.get(key) not in choices:
        st.session_state[key] = next(iter(choices))
    value = st.selectbox(label, list(choices), key=key, bind="query-params", label_visibility="collapsed",
                         width=width)
    return choices.get(str(value))


def priced(catalogues: list[dict[str, Any]], model: str) -> bool:
    """Whether a searched catalogue has a numeric price column (GET /models' ``filters``)."""
    return any((m.get("filters") or {}).get("price") == "number" for m in _chosen(catalogues, model))


def _price() -> tuple[float | None, float | None]:
    low, high = st.session_state.get("price_min"), st.session_state.get("price_max")
    label = "Price" if low is None and high is None else \
        f"Price: {'' if low is None else f'{low:g}'}–{'' if high is None else f'{high:g}'}"
    with st.popover(label, key="price"):
        low = st.number_input("From", min_value=0.0, value=None, step=1.0, key="price_min", bind="query-params",
                              placeholder="any")
        high = st.number_input("To", min_value=0.0, value=None, step=1.0, key="price_max", bind="query-params",
                               placeholder="any")
    return low, high


def refinements(catalogues: list[dict[str, Any]], model: str) -> Refinements:
    """Draw the controls (price and sort only where a searched catalogue has prices) and read them."""
    category = _category(catalogues, model)
    min_match = _choice("Match", MATCH_FLOORS, "quality", 170)
    if not priced(catalogues, model):
        return Refinements(category=category, min_match=min_match)
    sort = _choice("Sort", SORTS, "sort", 190)
    low, high = _price()
    return Refinements(category=category, min_match=min_match, sort=sort, price_min=low, price_max=high)


def _any_match() -> None:
    st.session_state["quality"] = next(iter(MATCH_FLOORS))


def _any_price() -> None:
    st.session_state["price_min"] = st.session_state["price_max"] = None


def nothing_found(refined: Refinements) -> None:
    """No product matched: say which control to loosen (the match floor first, then the price, the category)."""
    floor = next((name for name, value in MATCH_FLOORS.items() if value == refined.min_match), "")
    if refined.min_match is not None:
        title, message, fix, undo = (f"No {floor.lower()}", "Other products come close: show every match.",
                                     "Show every match", _any_match)
    elif refined.price_min is not None or refined.price_max is not None:
        title, message, fix, undo = ("Nothing in that price range", "Try a wider price range.", "Any price",
                                     _any_price)
    elif refined.category:
        title, message, fix, undo = (f"No products matched in {refined.category}",
                                     "Try another category, another photo or other words.", "", None)
    else:
        title, message, fix, undo = ("No products matched", "Try another photo or other words.", "", None)
    st.markdown(render.alert("info", title, message, testid="no-results"), unsafe_allow_html=True)
    if undo is not None:
        st.button(fix, key="loosen", on_click=undo, type="primary")
