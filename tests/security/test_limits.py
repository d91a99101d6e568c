"""Bounded memory per request, slow and excess clients, failed-key limits: against a real uvicorn."""

from __future__ import annotations

import io
import threading
import time

import httpx
import psutil
import pytest
from PIL import Image

from tests.api import images
from tests.api.conftest import start_server, stop_server
from tests.security.conftest import KEY, guarded_settings, raw_connect

MB = 1024 * 1024


def _rss() -> int:
    return psutil.Process().memory_info().rss  # the server runs in this process


def _read_response(sock, limit: float = 10.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data and b'"}' in data:
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_extreme_aspect_ratio_is_refused_cheaply(guarded):
    buf = io.BytesIO()
    Image.new("RGB", (20000, 1), "red").save(buf, "PNG")
    before = _rss()
    with guarded.client() as client:
        r = client.post("/general/search", content=buf.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 400 and "aspect ratio" in r.json()["detail"]
    assert _rss() - before < 50 * MB


def test_unauthenticated_admin_body_is_refused_before_it_is_read(guarded):
    before = _rss()
    sock = raw_connect(guarded.url)
    sock.sendall(b"POST /general/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 200000000\r\n\r\n{\"id\": \"" + b"x" * MB)

    def _flood() -> None:  # the rest of the 200 MB, as fast as the server takes it
        try:
            for _ in range(199):
                sock.sendall(b"x" * MB)
        except OSError:
            pass

    threading.Thread(target=_flood, daemon=True).start()
    reply = _read_response(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 401")
    assert _rss() - before < 20 * MB


def test_upload_over_the_limit_gets_413_while_it_is_still_streaming(guarded):
    """No Content-Length (chunked): the 413 arrives although the body never ends."""
    sock = raw_connect(guarded.url)
    sock.sendall(b"POST /general/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = 64 * 1024
    for _ in range(guarded.settings.max_upload_bytes // chunk + 2):  # the limit plus one chunk, then we stall
        sock.sendall(b"%x\r\n" % chunk + b"\xff" * chunk + b"\r\n")
    reply = _read_response(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 413")


def test_slow_headers_are_cut_off(guarded):
    sock = raw_connect(guarded.url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    start = time.monotonic()
    closed = False
    while time.monotonic() - start < 6:
        try:
            sock.sendall(b"X")  # one header byte at a time, never the blank line
        except OSError:
            closed = True
            break
        sock.settimeout(0.3)
        try:
            if sock.recv(1024) == b"":
                closed = True
                break
        except TimeoutError:
            pass
    sock.close()
    assert closed and time.monotonic() - start < guarded.settings.header_timeout * 2 + 1.5


def test_dribbled_body_gets_408(guarded):
    sock = raw_connect(guarded.url)
    sock.sendall(b"POST /general/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 5000\r\n\r\n")
    start = time.monotonic()
    sock.settimeout(0.4)
    reply = b""
    while time.monotonic() - start < 8 and not reply:
        try:
            sock.sendall(b"\xff" * 10)
            reply = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - start < guarded.settings.body_timeout + 2


def test_searches_beyond_the_bound_get_503_with_retry_after(guarded):
    holders = []
    for _ in range(guarded.settings.max_inflight_searches):  # searches that hold their slot (slow bodies)
        sock = raw_connect(guarded.url)
        sock.sendall(b"POST /general/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 5000\r\n\r\nxx")
        holders.append(sock)
    time.sleep(0.2)
    try:
        with guarded.client() as client:
            r = client.post("/general/search", content=images.jpeg(), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            assert client.get("/health").status_code == 200  # other routes still answer
    finally:
        for sock in holders:
            sock.close()


def test_connections_beyond_the_bound_get_503_with_retry_after(guarded):
    socks = [raw_connect(guarded.url) for _ in range(guarded.settings.max_connections)]
    try:
        time.sleep(0.2)
        extra = raw_connect(guarded.url)
        reply = _read_response(extra, 3)
        extra.close()
        assert reply.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in reply.lower()
    finally:
        for sock in socks:
            sock.close()


def test_failed_admin_keys_are_rate_limited_per_client(sec_root, tiny_clip):
    server = start_server(guarded_settings(sec_root, tiny_clip, admin_failures_per_minute=3))
    try:
        with server.client() as client:
            for _ in range(3):
                assert client.post("/general/reload", headers={"X-API-Key": "guess"}).status_code == 401
            r = client.post("/general/reload", headers={"X-API-Key": "guess"})
            assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
            assert client.post("/general/reload", headers=KEY).status_code == 429  # even the right key waits
            assert client.get("/health").status_code == 200
    finally:
        stop_server(server)


@pytest.mark.slow
def test_metrics_stay_small_after_2000_junk_requests(guarded):
    # a label per junk path would be 2,000 series of a dozen lines each: megabytes, where the cap is 100 kB
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        for i in range(2_000):
            path = (f"/junk{i}/search/text?q=a", f"/junk{i}/products/p{i}", f"/x{i}/y{i}")[i % 3]
            client.request(("GET", "DELETE", "PATCH")[i % 3], path)
        r = client.get("/metrics")
    assert r.status_code == 200 and len(r.content) < 100_000
    assert "junk" not in r.text
