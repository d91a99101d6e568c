"""Real servers on 127.0.0.1 with the address guard on (allow_private_urls=False) and tight limits."""

from __future__ import annotations

import csv
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import Settings, load_settings
from tests.api.conftest import API_KEY, LiveServer, build_models, start_server, stop_server
from tests.fake_images import huge_png, jpeg_bytes
from tests.http_server import (
    HttpServer,
    Reply,
    http_server,  # noqa: F401 - re-exported pytest fixture
)
from tests.processes import REPO, ApiProcess, env, peak_rss_command

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


def raw_connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


# --- a hostile catalogue: badly shaped images and credentials in image URLs, built by the real CLI ----------

# Secrets planted in image URLs; none may appear in any output (tests/security/test_redaction.py).
SECRETS = ("S3CRETPW", "PASSVAL", "TOKVAL", "JWTVAL", "CODEVAL", "ACCESSVAL", "SIGVAL", "FTPPW")


@dataclass
class HostileBuild:
    root: Path
    server: HttpServer
    rows: dict[str, int]  # product id -> CSV row
    stdout: str
    stderr: str
    returncode: int
    peak_rss: int  # the build process's resident-set high-water mark, bytes


def secret_url(server: HttpServer, path: str, user: str = "alice") -> str:
    """A URL to ``path`` on the test server carrying a credential in every place one hides."""
    return (f"http://{user}:S3CRETPW@127.0.0.1:{server.port}{path}?pass=PASSVAL&token=TOKVAL&jwt=JWTVAL"
            f"&code=CODEVAL&X-Amz-Signature=SIGVAL#access_token=ACCESSVAL")


def _hostile_csv(root: Path, server: HttpServer) -> dict[str, int]:
    folder = root / "data" / "shop"
    (folder / "images").mkdir(parents=True)
    rows = [("id", "title", "images")]
    for i in range(5):
        (folder / "images" / f"g{i}.jpg").write_bytes(jpeg_bytes(120, 90, seed=40 + i))
        rows.append((f"G{i}", f"Good {i}", f"images/g{i}.jpg"))
    (folder / "images" / "wide.png").write_bytes(huge_png(70_000, 400))  # 28 megapixels in a few KB
    (folder / "images" / "line.png").write_bytes(huge_png(20_000, 1))
    server.routes["/ok.jpg"] = Reply(jpeg_bytes(120, 90, seed=60))
    server.routes["/tall.png"] = Reply(huge_png(1, 60_000), content_type="image/png")
    rows += [("S1", "Wide strip", "images/wide.png"), ("S2", "Thin line", "images/line.png"),
             ("S3", "Tall strip", f"http://127.0.0.1:{server.port}/tall.png?token=TOKVAL"),
             ("U1", "Signed picture", secret_url(server, "/ok.jpg")),
             ("U2", "Gone picture", f"{secret_url(server, '/gone.jpg', 'bob')}|images/g0.jpg"),
             ("U3", "Bad scheme", "ftp://carol:FTPPW@127.0.0.1/x.jpg|images/g1.jpg")]
    with (folder / "products.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return {pid: n for n, (pid, *_) in enumerate(rows, start=1) if n > 1}


@pytest.fixture(scope="session")
def hostile_build(tmp_path_factory, tiny_clip) -> Iterator[HostileBuild]:
    """``run_training.py shop`` over the hostile catalogue, its console, exit code and peak memory kept."""
    root = tmp_path_factory.mktemp("hostile_root")
    server = HttpServer().start()
    try:
        rows = _hostile_csv(root, server)
        out, err, peak = root / "build.out", root / "build.err", root / "build.peak"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            code = subprocess.call(peak_rss_command(peak, REPO / "run_training.py", "shop", "--no-progress"),
                                   env=env(root, tiny_clip, IMAGESEARCH_DOWNLOAD_RETRIES="0"), cwd=root,
                                   stdout=stdout, stderr=stderr, timeout=600)
        yield HostileBuild(root=root, server=server, rows=rows, stdout=out.read_text(), stderr=err.read_text(),
                           returncode=code, peak_rss=int(peak.read_text()))
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hostile_api(hostile_build, tiny_clip) -> Iterator[ApiProcess]:
    """``run_api.py`` over the hostile build, in its own process (its peak memory is its own)."""
    api = ApiProcess(hostile_build.root, tiny_clip, console=hostile_build.root / "api.out",
                     IMAGESEARCH_API_KEY=API_KEY, IMAGESEARCH_DOWNLOAD_RETRIES="0")
    try:
        api.wait_ready()
        yield api
    finally:
        api.stop()
