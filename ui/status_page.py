"""The status page (``/status``, not linked from the shop). Anyone sees whether search is up and each
catalogue's product count; the operator details (the API address, each catalogue's index, backbone and error,
which may name folders and commands) only after the admin key is given in this browser session."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui.admin_gate import admin_key, lock_button
from ui.client import ApiClient, ApiError, ApiUnavailable, api_url_from_env, upload_limit_from_env


def _rows(health: dict[str, Any], *, operator: bool) -> list[dict[str, Any]]:
    rows = []
    for name, m in sorted((health.get("models") or {}).items()):
        if not isinstance(m, dict):
            continue
        row = {"catalogue": name, "searchable": bool(m.get("searchable")), "products": m.get("products"),
               "built at": m.get("built_at") or ""}
        if operator:
            row.update({"index": m.get("index_type") or "", "backbone": m.get("backbone") or "",
                        "error": m.get("error") or ""})
        rows.append(row)
    return rows


def status_page() -> None:
    st.title("Service status")
    client = ApiClient(api_url_from_env(), timeout=5.0)
    try:
        health = client.health()
    except (ApiUnavailable, ApiError):
        st.error("The search service is not answering right now.")
        return
    key = admin_key(client, ask=False)
    st.metric("Status", str(health.get("status", "?")), border=True)
    st.write(f"{health.get('total_products', 0):,} searchable products in "
             f"{len(health.get('available_models') or [])} catalogue(s)")
    st.dataframe(_rows(health, operator=key is not None), hide_index=True)
    if key is None:
        with st.expander("Operator details"):
            admin_key(client)
        return
    st.write(f"Search API: `{client.base_url}` · upload limit {upload_limit_from_env():,} bytes")
    lock_button()
