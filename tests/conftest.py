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
    MilvusStandalone,
    milvus_overrides,
    need_pymilvus,
    standalone_unavailable,
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
    """The URI of a real Milvus server for the session: IMAGESEARCH_TEST_MILVUS_URI's, or a Milvus standalone
    started here (stopped at the end, Ctrl-C included). Skips saying why where it cannot start, and fails
    instead under IMAGESEARCH_TEST_REQUIRE_MILVUS_SERVER=1."""
    if OUTSIDE_URI:
        yield OUTSIDE_URI
        return
    why = standalone_unavailable()
    if why is not None:
        if REQUIRE_SERVER:
            pytest.fail(f"IMAGESEARCH_TEST_REQUIRE_MILVUS_SERVER is set but {why}", pytrace=False)
        pytest.skip(why)
    kept = tmp_path_factory.getbasetemp().parent / "milvus-standalone-bin"  # beside pytest's numbered folders
    server = MilvusStandalone(tmp_path_factory.mktemp("milvus-standalone"), binaries=kept)
    try:
        server.start()
    except RuntimeError as exc:
        if REQUIRE_SERVER:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    try:
        yield server.uri
    finally:
        if "core.milvus_client" in sys.modules:  # a client left open on a stopped server keeps this process alive
            from core.milvus_client import close_clients

            close_clients()
        server.stop()
        server.remove_data()


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
    """Under pytest-xdist (the suite runs on several workers, ``--dist loadgroup``), the tests that share what one
    machine has only one of run on one worker: the real Milvus standalone (its etcd binds port 2379) and a local
    Ray instance."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        params = list(getattr(getattr(item, "callspec", None), "params", {}).values())
        fixtures = getattr(item, "fixturenames", ())
        if "milvus_standalone" in fixtures or "milvus-server" in params:
            item.add_marker(pytest.mark.xdist_group("milvus-server"))
        elif item.nodeid.startswith("tests/pipeline/test_ray_executor.py"):
            item.add_marker(pytest.mark.xdist_group("ray"))
