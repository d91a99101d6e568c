"""Real servers on 127.0.0.1 with the address guard on (allow_private_urls=False) and tight limits."""

from __future__ import annotations

from tests.http_server import http_server  # noqa: F401 - re-exported pytest fixture

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from tests.api.conftest import API_KEY, LiveServer, build_models, start_server, stop_server

KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="session")
def sec_root(tmp_path_factory, tiny_clip) -> Path:
    from utils.demo_catalogue import write_demo

    root = tmp_path_factory.mktemp("sec_root")
    write_demo(root / "data", general_per_category=2, shirts_per_category=2)
    build_models(load_settings(root=root, clip_model=str(tiny_clip), device="cpu", torch_threads=1), ("general",))
    return root


def guarded_settings(root: Path, tiny_clip: Path, **more: object) -> Settings:
    """The guard on (private addresses refused) except for the host name ``localhost``."""
    base: dict[str, object] = dict(root=root, clip_model=str(tiny_clip), device="cpu", torch_threads=1,
                                   api_key=API_KEY, allow_private_urls=False, fetch_allowlist="localhost",
                                   download_retries=0, download_timeout=3.0, header_timeout=1.0, body_timeout=2.0,
                                   max_upload_bytes=1_000_000, max_inflight_searches=2, max_connections=30,
                                   admin_failures_per_minute=10_000)
    base.update(more)
    return load_settings(**base)


@pytest.fixture(scope="module")
def guarded(sec_root, tiny_clip) -> Iterator[LiveServer]:
    server = start_server(guarded_settings(sec_root, tiny_clip))
    yield server
    stop_server(server)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)
