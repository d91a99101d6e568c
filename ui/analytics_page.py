"""The merchant's analytics page (``/analytics``, not linked from the shop): a 2-D map of a catalogue,
k-means clusters with representative products and category purity, search analytics from the query log,
and recent background jobs. Everything comes from the API's admin routes, with the admin key the visitor
gave in this browser session (ui/admin_gate.py); without it the page shows only the key form."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui.admin_gate import admin_key, forget_key, lock_button
from ui.client import ApiClient, ApiError, ApiUnavailable, api_url_from_env
from ui.grid import _image_bytes


class _Admin:
    """The API client and this session's admin key."""

    def __init__(self, client: ApiClient, key: str) -> None:
        self.client, self.key = client, key


def _get(admin: _Admin, path: str, **params: Any) -> Any:
    return admin.client.admin_json(path, admin.key, **params)


def _map(admin: _Admin, model: str) -> None:
    import altair as alt
    import pandas as pd

    body = _get(admin, f"/{model}/analytics/map", sample=1500)
    frame = pd.DataFrame(body["points"])
    st.caption(f"{len(frame):,} of {body['products']:,} products, PCA then t-SNE; hover for the product")
    chart = alt.Chart(frame).mark_circle(size=60, opacity=0.8).encode(
        x=alt.X("x", axis=None), y=alt.Y("y", axis=None), color=alt.Color("category", title="category"),
        tooltip=["title", "category", "id"])
    st.altair_chart(chart, width="stretch")


def _clusters(admin: _Admin, model: str) -> None:
    client = admin.client
    k = st.slider("Clusters", 2, 20, 6, key="k")
    for c in _get(admin, f"/{model}/analytics/clusters", k=k)["clusters"]:
        st.markdown(f"**Cluster {c['cluster'] + 1}** · {c['size']} products · mostly *{c['category']}* "
                    f"· purity {c['purity']:.0%}")
        with st.container(horizontal=True, gap="small"):
            for rep in c["representatives"]:
                try:
                    st.image(_image_bytes(client.base_url, client.image_path(model, rep["id"])), width=110,
                             caption=rep["title"])
                except (ApiError, ApiUnavailable):
                    st.caption(rep["title"])


def _searches(admin: _Admin) -> None:
    body = _get(admin, "/analytics/queries", days=30)
    if not body["enabled"]:
        st.info("The query log is switched off (IMAGESEARCH_QUERY_LOG_ENABLED).")
    rows = [{"day": d["day"], "catalogue": d["model"], "searches": d["queries"], "p50 ms": d["p50_ms"],
             "p95 ms": d["p95_ms"], "no results": f"{d['zero_result_rate']:.0%}",
             "top categories": ", ".join(c["category"] for c in d["top_categories"])} for d in body["days"]]
    st.caption(f"Last 30 days, kept {body['retention_days']} days; no query images are stored")
    st.dataframe(rows, hide_index=True, key="searches")


def _jobs(admin: _Admin) -> None:
    rows = [{"kind": j["kind"], "catalogue": j["model"], "status": j["status"], "progress": f"{j['progress']:.0%}",
             "stage": j["stage"], "errors": "; ".join(j["errors"][-2:]), "task": j["task_id"][:8]}
            for j in _get(admin, "/jobs", limit=20)]
    st.dataframe(rows, hide_index=True, key="jobs")


def analytics_page() -> None:
    st.title("Catalogue analytics")
    client = ApiClient(api_url_from_env(), timeout=120.0)
    key = admin_key(client)
    if key is None:
        return
    admin = _Admin(client, key)
    lock_button()
    try:
        models = [m["name"] for m in client.models() if m.get("searchable")]
        model = st.selectbox("Catalogue", models, key="analytics-model")
        map_tab, cluster_tab, search_tab, job_tab = st.tabs(["Map", "Clusters", "Searches", "Jobs"])
        with map_tab:
            if model:
                _map(admin, model)
        with cluster_tab:
            if model:
                _clusters(admin, model)
        with search_tab:
            _searches(admin)
        with job_tab:
            _jobs(admin)
    except ApiUnavailable as exc:
        st.error(f"API unreachable: {exc}")
    except ApiError as exc:
        if exc.status in (401, 403):  # the API no longer takes this key (changed, or revoked)
            forget_key()
            st.rerun()
        st.error(f"API error {exc.status}: {exc.message}")
