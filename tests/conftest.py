"""Shared fixtures: a tiny CLIP written once per session and Settings rooted in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import Settings, load_settings

# The suite's image servers live on 127.0.0.1, so its fetches must be let through the address guard.
# Set for the whole session (module- and session-scoped fixtures build Settings before any function
# fixture runs); tests/security builds its Settings with allow_private_urls=False explicitly.
ALLOW_PRIVATE = "IMAGESEARCH_ALLOW_PRIVATE_URLS"
os.environ[ALLOW_PRIVATE] = "1"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No IMAGESEARCH_* variable or .env file from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("IMAGESEARCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(ALLOW_PRIVATE, "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from utils.tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture
def make_settings(tiny_clip, tmp_path):
    """Settings rooted at a fresh folder, using the tiny CLIP and fast download timings."""

    def make(root: Path | None = None, **overrides) -> Settings:
        base = dict(root=root or tmp_path / "root", clip_model=str(tiny_clip), device="cpu",
                    torch_threads=1, download_timeout=3.0, download_backoff=0.01, download_retries=2)
        base.update(overrides)
        return load_settings(**base)

    return make
