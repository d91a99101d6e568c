"""Which catalogue the shopper searches in: the built ones from the API, the one a link names (``?model=``,
an id or a display name, any case), the shop's default (IMAGESEARCH_UI_DEFAULT_MODEL), and a shop-worded
notice when a link names a catalogue that is not there or not open yet."""

from __future__ import annotations

import logging
import os
from typing import Any

import streamlit as st

from ui import render
from ui.client import ApiClient, ApiError, ApiUnavailable, DEFAULT_MODEL_ENV, default_model_from_env
from ui.grid import ALL, display_name

logger = logging.getLogger(__name__)

PARAM = "model"


def catalogues(client: ApiClient) -> list[dict[str, Any]] | None:
    """The searchable catalogues; while the API is down, the last ones seen (None before any). Every
    catalogue the API lists, built or not, is kept in ``st.session_state["known"]`` for links."""
    try:
        models = client.models()
    except (ApiUnavailable, ApiError) as exc:
        logger.warning("catalogue list unavailable from %s: %s", client.base_url, exc)
        return st.session_state.get("catalogues")
    ready = [m for m in models if m.get("searchable", True) and m.get("name")]
    st.session_state["catalogues"] = ready
    st.session_state["known"] = {str(m["name"]) for m in models if m.get("name")}
    return ready


def _default(options: list[str]) -> str:
    wanted = default_model_from_env()
    if wanted in options:
        return wanted
    if os.environ.get(DEFAULT_MODEL_ENV):
        logger.warning("%s=%r is not an open catalogue; the shop opens on %r", DEFAULT_MODEL_ENV, wanted, options[0])
    return options[0]


def _from_link(raw: str, options: list[str], ready: list[dict[str, Any]]) -> tuple[str | None, str]:
    """The option a link names (by id or display name, any case), else None and what to tell the shopper."""
    wanted = raw.strip().casefold()
    for option in options:
        if wanted in (option.casefold(), display_name(ready, option).casefold()):
            return option, ""
    return None, "closed" if wanted in {k.casefold() for k in st.session_state.get("known", ())} else "unknown"


def _notice(kind: str, shown: str) -> None:
    title, message = {
        "closed": ("That catalogue isn't open yet", f"It is coming soon. Meanwhile, here is {shown}."),
        "unknown": ("We couldn't find that catalogue", f"The link may be out of date. Here is {shown} instead."),
    }[kind]
    st.markdown(render.alert("info", title, message, testid="link-notice"), unsafe_allow_html=True)


def selector(ready: list[dict[str, Any]], on_change: Any) -> str:
    """The catalogue control. A new ``?model=`` (first load, Back, a shared link) picks the catalogue it
    names; the choice is written back to the URL as its id (none for the default)."""
    names = [str(m["name"]) for m in ready]
    options = [*names, ALL] if len(names) > 1 else names
    default = _default(options)
    raw = st.query_params.get(PARAM)
    if raw != st.session_state.get("model_link"):  # the URL moved under us: it decides
        st.session_state["model_link"] = raw
        choice, notice = _from_link(raw, options, ready) if raw else (default, "")
        st.session_state["model"] = choice or default
        st.session_state["link_notice"] = notice
    if st.session_state.get("model") not in options:
        st.session_state["model"] = default
    chosen = str(st.segmented_control("Search in", options, required=True, key="model", on_change=on_change,
                                      label_visibility="collapsed", format_func=lambda n: display_name(ready, n))
                 or default)
    param = None if chosen == default else chosen
    if raw != param:
        if param is None:
            st.query_params.pop(PARAM, None)
        else:
            st.query_params[PARAM] = param
        st.session_state["model_link"] = param
    if st.session_state.get("link_notice"):
        _notice(st.session_state["link_notice"], display_name(ready, chosen))
    return chosen


def forget_link_notice() -> None:
    """The shopper chose a catalogue: a notice about the link is done with."""
    st.session_state["link_notice"] = ""
