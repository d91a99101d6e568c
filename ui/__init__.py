"""Streamlit shopper UI and its small HTTP client for the API."""
