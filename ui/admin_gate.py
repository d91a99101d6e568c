"""The one place the UI lets a visitor into admin data: the visitor gives the admin key, the API checks it,
and the UI keeps it in that browser session only, sending it with each admin call. The UI process holds no
key of its own (run_streamlit.py does not pass IMAGESEARCH_API_KEY on), so a visitor who gives none sees no
admin data. Scoped keys (e.g. ``read:analytics``) plug in at ``_verify``: the API says what a key may read."""

from __future__ import annotations

import streamlit as st

from ui.client import ApiClient, ApiError, ApiUnavailable

_KEY = "admin-key"  # session state: the key this browser session gave and the API accepted
_REFUSED = "That key was not accepted."


def admin_key(client: ApiClient, *, ask: bool = True) -> str | None:
    """The accepted key of this browser session; otherwise None, after showing the key form when ``ask``."""
    key = st.session_state.get(_KEY)
    if isinstance(key, str) and key:
        return key
    if ask:
        _form(client)
    return None


def forget_key() -> None:
    """Lock the admin pages again in this browser session (a "Lock" click, or a key the API stopped taking)."""
    st.session_state.pop(_KEY, None)


def lock_button() -> None:
    if st.button("Lock", key="admin-lock", help="forget the admin key in this browser tab"):
        forget_key()
        st.rerun()


def _form(client: ApiClient) -> None:
    with st.form("admin-key-form", border=True):
        st.write("This page is for the shop's operators. Enter the admin key; it is kept in this browser tab "
                 "until you lock it or close the tab.")
        entered = st.text_input("Admin key", type="password", key="admin-key-input")
        submitted = st.form_submit_button("Unlock")
    if not (submitted and entered):
        return
    refused = _verify(client, entered)
    if refused:
        st.error(refused)
        return
    st.session_state[_KEY] = entered
    st.rerun()


def _verify(client: ApiClient, key: str) -> str | None:
    """None when the API accepts ``key`` for admin reads, else what to tell the visitor."""
    try:
        client.admin_json("/jobs", key, limit=1)
    except ApiUnavailable:
        return "The search service is not answering; try again shortly."
    except ApiError as exc:
        if exc.status == 429:
            return "Too many wrong keys; wait a minute, then try again."
        return _REFUSED if exc.status in (401, 403) else f"The search service refused: {exc.message}"
    return None
