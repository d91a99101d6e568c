"""Shared fixtures: a tiny CLIP written once per session, Settings rooted in a temp folder, and the
catalogue store a test runs on (local, or Milvus through a session-wide milvus-lite server or real Milvus
standalone)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from tests.stores import (
    OUTSIDE_URI,
    REQUIRE_SERVER,
    MilvusServer,
    milvus_overrides,
    need_pymilvus,
    session_standalone,
    stop_session_standalone,
)

# The suite's image servers live on 127.0.0.1, so its fetches must be let through the address guard.
# Set for the whole session (module- and session-scoped fixtures build Settings before any function
# fixture runs); tests/security builds its Settings with allow_private_urls=False explicitly.
ALLOW_PRIVATE = "IMAGESEARCH_ALLOW_PRIVATE_URLS"
os.environ[ALLOW_PRIVATE] = "1"
# The tiny random CLIP puts every image within cosine 0.9999 of every other, so the real near-duplicate
# default (0.94) would collapse a whole test catalogue into one hit: tests collapse exact copies only.
DUPLICATES = "IMAGESEARCH_DUPLICATE_THRESHOLD"
TINY_DUPLICATE_THRESHOLD = "0.99995"
os.environ[DUPLICATES] = TINY_DUPLICATE_THRESHOLD


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No IMAGESEARCH_* variable or .env file from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.startswith("IMAGESEARCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(ALLOW_PRIVATE, "1")
    monkeypatch.setenv(DUPLICATES, TINY_DUPLICATE_THRESHOLD)
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


@pytest.fixture
def store(request) -> str:
    """The catalogue store this test runs on: "local" unless parametrised (``tests.stores.both_stores``)."""
    return str(getattr(request, "param", "local"))


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory) -> Iterator[MilvusServer]:
    """One milvus-lite server for the session; each test keeps to its own collection prefix."""
    need_pymilvus()
    server = MilvusServer(tmp_path_factory.mktemp("milvus")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def milvus_standalone(tmp_path_factory) -> Iterator[str]:
    """The URI of a real Milvus server for the session: IMAGESEARCH_TEST_MILVUS_URI's, or the session's Milvus
    standalone (``tests.stores.session_standalone``: one for all xdist workers, stopped as the session ends,
    Ctrl-C included). Skips saying why where it cannot start, and fails instead under
    IMAGESEARCH_TEST_REQUIRE_MILVUS_SERVER=1."""
    if OUTSIDE_URI:
        yield OUTSIDE_URI
        return
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder
    kept = shared.parent / "milvus-standalone-bin"  # beside pytest's numbered folders
    try:
        uri = session_standalone(shared / "milvus-standalone", kept)
    except RuntimeError as exc:
        if REQUIRE_SERVER:
            pytest.fail(f"IMAGESEARCH_TEST_REQUIRE_MILVUS_SERVER is set but {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield uri
    finally:
        if "core.milvus_client" in sys.modules:  # a client left open on a stopped server keeps this process alive
            from core.milvus_client import close_clients

            close_clients()


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's controlling process stops the Milvus standalone a worker started."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        stop_session_standalone()


@pytest.fixture
def milvus_uri(request, store) -> str:
    """The URI of this test's Milvus: the session's milvus-lite server, or the real one."""
    if store == "milvus-server":
        return str(request.getfixturevalue("milvus_standalone"))
    return str(request.getfixturevalue("milvus_server").uri)


@pytest.fixture
def store_overrides(request, store) -> dict[str, str]:
    """Settings overrides for this test's store: none for local; for Milvus, the shared server and a
    collection prefix of this test's own (``make_settings(**store_overrides)``)."""
    if store == "local":
        return {}
    return milvus_overrides(request.getfixturevalue("milvus_uri"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (the suite runs on several workers, ``--dist loadgroup``), tests that share something
    costly keep to one worker, which builds it once: the browser tests' stacks (a built catalogue, run_api.py and
    Streamlit, one for both viewports: a second stack cost more than running the viewports side by side saved),
    the hostile catalogue tests/security serves from a process of its own, the API tests on the real Milvus
    standalone (their built catalogue) and a local Ray instance (one a machine). The standalone itself is one for
    all workers (``milvus_standalone``)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        callspec = getattr(item, "callspec", None)
        params = getattr(callspec, "params", {})
        fixtures = getattr(item, "fixturenames", ())
        if module in _OWN_STACK:
            group = module
        elif "hostile_build" in fixtures:
            group = "hostile"
        elif module.startswith("tests/api/") and "milvus-server" in params.values():
            group = "milvus-server-api"
        elif module == "tests/pipeline/test_ray_executor.py":
            group = "ray"
        else:
            continue
        item.add_marker(pytest.mark.xdist_group(group))


_OWN_STACK = ("tests/ui/test_e2e_browser.py", "tests/ui/test_analytics_browser.py")
