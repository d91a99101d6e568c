"""The HTTP fetcher on its own (the API may reuse it for search-by-URL): URL checks and retry timing."""

from __future__ import annotations

import email.utils
import time

import pytest

from tests.fake_images import jpeg_bytes
from tests.http_server import Reply
from utils.http_fetch import AddressGuard, FetchError, FetchPolicy, Fetcher, _retry_after, check_url


@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "bad scheme"), ("ftp://example.com/a.jpg", "bad scheme"),
    ("javascript:alert(1)", "bad scheme"), ("http:///a.jpg", "bad url"), ("http://h:99999/a.jpg", "bad url"),
])
def test_check_url_rejects_unusable_urls(url, reason):
    with pytest.raises(FetchError) as info:
        check_url(url)
    assert info.value.reason == reason and not info.value.transient


def test_check_url_returns_the_lowercased_host():
    assert check_url("HTTPS://Shop.Example.COM:8443/a.jpg") == "shop.example.com"


def test_retry_after_reads_seconds_and_http_dates():
    assert _retry_after("2") == 2.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(later) <= 31
    assert _retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_fetcher_returns_bytes_and_respects_max_redirects(http_server):
    image = jpeg_bytes(seed=1)
    http_server.routes.update({"/a.jpg": Reply(image), "/hop": Reply.redirect("/a.jpg")})
    with Fetcher(FetchPolicy(timeout=1, retries=0, max_redirects=0, guard=AddressGuard(allow_private=True))) as fetcher:
        assert fetcher.fetch(http_server.url("/a.jpg")) == image
        with pytest.raises(FetchError, match="too many redirects"):
            fetcher.fetch(http_server.url("/hop"))
