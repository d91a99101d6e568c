"""Streamlit entry point: the shop at ``/``, the operator's status page at ``/status`` and the merchant's
analytics at ``/analytics``."""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run ui/app.py` puts ui/ (not the project root) on sys.path; the ui package needs the root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from ui.analytics_page import analytics_page  # noqa: E402
from ui.shop import shop_page  # noqa: E402
from ui.status_page import status_page  # noqa: E402


def main() -> None:
    st.set_page_config(page_title="Visual Product Search", page_icon="🛍️", layout="wide",
                       initial_sidebar_state="collapsed")
    pages = [st.Page(shop_page, title="Visual Product Search", icon="🛍️", default=True),
             st.Page(status_page, title="Service status", url_path="status"),
             st.Page(analytics_page, title="Catalogue analytics", url_path="analytics")]
    st.navigation(pages, position="hidden").run()


main()
