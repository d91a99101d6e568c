"""The operator's status page (``/status``, not linked from the shop): service health, each catalogue's
products, build time, index and error, and the API address the shop uses."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui.client import ApiClient, ApiError, ApiUnavailable, api_url_from_env, upload_limit_from_env


def _rows(health: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"catalogue": name, "state": m.get("state") or "", "products": m.get("products"),
             "built at": m.get("built_at") or "", "index": m.get("index_type") or "",
             "backbone": m.get("backbone") or "", "error": m.get("error") or ""}
            for name, m in sorted((health.get("models") or {}).items()) if isinstance(m, dict)]


def status_page() -> None:
    st.title("Service status")
    client = ApiClient(api_url_from_env(), timeout=5.0)
    st.write(f"Search API: `{client.base_url}` · upload limit {upload_limit_from_env():,} bytes")
    try:
        health = client.health()
    except ApiUnavailable as exc:
        st.error(f"API unreachable: {exc}")
        return
    except ApiError as exc:
        st.error(f"API error {exc.status}: {exc.message}")
        return
    st.metric("Status", str(health.get("status", "?")), border=True)
    st.write(f"{health.get('total_products', 0):,} searchable products in "
             f"{health.get('available_models', 0)} catalogue(s)")
    st.dataframe(_rows(health), hide_index=True)
