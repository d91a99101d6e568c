"""A real uvicorn on 127.0.0.1 serving general + shirts, built from the demo catalogue with the tiny CLIP, on
any store: ``live`` and ``client`` serve the local build, or the milvus-lite or real-Milvus one in a test
parametrised with ``tests.stores.both_stores`` (each build is made once per session, on first use)."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.config import Settings, load_settings
from tests.ports import free_port
from tests.stores import milvus_overrides

API_KEY = "test-admin-key"


def build_models(settings: Settings, names: tuple[str, ...] = ("general", "shirts")) -> None:
    from core.model_config import ModelRegistry
    from pipeline.runner import run_model

    registry = ModelRegistry.discover(settings)
    for name in names:
        run_model(settings, registry.get(name), progress=False)


@dataclass
class LiveServer:
    url: str
    settings: Settings
    app: object
    server: object

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)


def start_server(settings: Settings, *, watch_interval: float = 0.2) -> LiveServer:
    import uvicorn

    from api.app import create_app
    from api.server import server_config

    app = create_app(settings, watch_interval=watch_interval)
    port = free_port()
    server = uvicorn.Server(server_config(app, settings, "127.0.0.1", port, lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    live = LiveServer(url=f"http://127.0.0.1:{port}", settings=settings, app=app, server=server)
    live.thread = thread
    return live


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(15)


@pytest.fixture(scope="session")
def built_root(tmp_path_factory, tiny_clip) -> Path:
    """Demo catalogue + the real pipeline (validation, download, extraction, index) for both models."""
    from utils.demo_catalogue import write_demo

    root = tmp_path_factory.mktemp("api_root")
    write_demo(root / "data")
    build_models(load_settings(root=root, clip_model=str(tiny_clip), device="cpu", torch_threads=1))
    return root


def _serve(root: Path, tiny_clip: Path, **overrides: str) -> LiveServer:
    settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", api_key=API_KEY,
                             max_upload_bytes=2_000_000, max_image_pixels=50_000_000,
                             admin_failures_per_minute=10_000,  # many tests try wrong keys on this one server
                             **overrides)
    return start_server(settings)


def _built_in_milvus(factory, tiny_clip: Path, overrides: dict[str, str]) -> Path:
    """The same demo catalogue built by the real pipeline into Milvus."""
    from utils.demo_catalogue import write_demo

    root = factory.mktemp("api_milvus_root")
    write_demo(root / "data")
    build_models(load_settings(root=root, clip_model=str(tiny_clip), device="cpu", torch_threads=1, **overrides))
    return root


@pytest.fixture(scope="session")
def milvus_api(milvus_server) -> dict[str, str]:
    """Settings overrides of the session's milvus-lite build (its own collection prefix on the shared server)."""
    return milvus_overrides(milvus_server.uri, "api_")


@pytest.fixture(scope="session")
def milvus_built_root(tmp_path_factory, tiny_clip, milvus_api) -> Path:
    return _built_in_milvus(tmp_path_factory, tiny_clip, milvus_api)


@pytest.fixture(scope="session")
def standalone_api(milvus_standalone) -> dict[str, str]:
    """Settings overrides of the session's build in the real Milvus server."""
    return milvus_overrides(milvus_standalone, f"api{uuid.uuid4().hex[:8]}_")  # an outside server may hold others'


@pytest.fixture(scope="session")
def standalone_built_root(tmp_path_factory, tiny_clip, standalone_api) -> Path:
    return _built_in_milvus(tmp_path_factory, tiny_clip, standalone_api)


@pytest.fixture(scope="session")
def local_live(built_root, tiny_clip) -> Iterator[LiveServer]:
    server = _serve(built_root, tiny_clip)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def milvus_live(milvus_built_root, tiny_clip, milvus_api) -> Iterator[LiveServer]:
    server = _serve(milvus_built_root, tiny_clip, **milvus_api)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def standalone_live(standalone_built_root, tiny_clip, standalone_api) -> Iterator[LiveServer]:
    server = _serve(standalone_built_root, tiny_clip, **standalone_api)
    yield server
    stop_server(server)


def _prefix(store: str) -> str:
    """The session fixtures' name prefix for a store ("milvus-server" is the standalone)."""
    return "standalone" if store == "milvus-server" else store


@pytest.fixture
def live(request, store) -> LiveServer:
    """The server of this test's store (each is started once per session)."""
    return request.getfixturevalue(f"{_prefix(store)}_live")


@pytest.fixture(scope="session")
def local_client(local_live) -> Iterator[httpx.Client]:
    with local_live.client() as c:
        yield c


@pytest.fixture(scope="session")
def milvus_client(milvus_live) -> Iterator[httpx.Client]:
    with milvus_live.client() as c:
        yield c


@pytest.fixture(scope="session")
def standalone_client(standalone_live) -> Iterator[httpx.Client]:
    with standalone_live.client() as c:
        yield c


@pytest.fixture
def client(request, store) -> httpx.Client:
    return request.getfixturevalue(f"{_prefix(store)}_client")


@pytest.fixture
def copy_built(request, store, store_overrides, tiny_clip):
    """A factory of private copies of this test's store's demo build (edits must not leak into other tests):
    ``copy_built(root, **settings) -> Settings``. The local store's files are copied whole; a Milvus catalogue
    is built again under a prefix of its own from the copied build state (images and views cached: nothing
    is downloaded or embedded again)."""

    def make(root: Path, names: tuple[str, ...] = ("general", "shirts"), **kwargs: object) -> Settings:
        source = request.getfixturevalue(f"{'built' if store == 'local' else _prefix(store) + '_built'}_root")
        settings = load_settings(root=root, clip_model=str(tiny_clip), device="cpu", **store_overrides, **kwargs)
        for sub in ("data", "models", "checkpoints") if store == "local" else ("data", "models"):
            # the jobs database's write-ahead files come and go while the shared root's API runs (a copy that
            # listed them could fail to find them: a CI flake); its main file alone is a consistent database
            shutil.copytree(source / sub, root / sub, ignore=shutil.ignore_patterns("jobs.db-wal", "jobs.db-shm"))
        if store != "local":
            build_models(settings, names)
        return settings

    return make
