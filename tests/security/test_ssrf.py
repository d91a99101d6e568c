"""Server-side fetches refuse non-public addresses before connecting, on every hop, pinned to the checked address."""

from __future__ import annotations

import socket

import pytest

from tests.api import images
from tests.http_server import Reply
from tests.ports import free_port
from tests.security.conftest import KEY
from utils.http_fetch import AddressGuard, FetchError, FetchPolicy, Fetcher


def _reason(url: str, guard: AddressGuard | None = None) -> str:
    with Fetcher(FetchPolicy(timeout=2, retries=0, guard=guard or AddressGuard())) as fetcher:
        try:
            fetcher.fetch(url)
        except FetchError as err:
            return err.reason
    return "fetched"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0.0.0.0"])
def test_loopback_in_every_spelling_is_refused_before_connecting(http_server, host):
    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    assert _reason(f"http://{host}:{http_server.port}/a.jpg") == "address not allowed"
    assert http_server.total_requests == 0


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                     "224.0.0.1", "240.0.0.1", "[fe80::1]", "[fc00::1]", "[ff02::1]",
                                     "[::ffff:10.0.0.1]", "[2002:a00:1::]"])
def test_private_link_local_multicast_reserved_literals_are_refused(address):
    # literal addresses are judged before any socket is opened, so no traffic leaves this machine
    assert _reason(f"http://{address}/x.jpg") == "address not allowed"


def test_refusal_is_the_same_for_an_open_and_a_closed_port(http_server):
    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    assert _reason(http_server.url("/a.jpg")) == _reason(f"http://127.0.0.1:{free_port()}/a.jpg")


def test_redirect_to_a_private_address_is_refused_on_that_hop(http_server):
    http_server.routes["/hop"] = Reply.redirect(http_server.url("/secret.jpg"))  # 127.0.0.1: not allowlisted
    http_server.routes["/secret.jpg"] = Reply(images.jpeg())
    guard = AddressGuard.from_text(False, "localhost")
    assert _reason(http_server.url("/hop", host="localhost"), guard) == "address not allowed"
    assert http_server.count("/hop") == 1 and http_server.count("/secret.jpg") == 0


def test_connects_to_the_address_it_checked(http_server, monkeypatch):
    """A resolver that answers differently the second time (DNS rebinding) is asked once per connection,
    and the connection goes to the address that passed the check, with the Host header kept."""
    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    answers = ["127.0.0.1", "127.0.0.2"]  # the second would be where a rebind points; nothing listens there
    calls: list[str] = []
    real = socket.getaddrinfo

    def resolver(host, port, *args, **kwargs):
        if host != "images.example":
            return real(host, port, *args, **kwargs)  # the literal address being connected to
        calls.append(host)
        ip = answers[min(len(calls), 2) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    guard = AddressGuard.from_text(False, "127.0.0.1/32")
    with Fetcher(FetchPolicy(timeout=2, retries=0, guard=guard)) as fetcher:
        assert fetcher.fetch(f"http://images.example:{http_server.port}/a.jpg") == images.jpeg()
    assert calls == ["images.example"]
    assert http_server.requests[-1].host == "images.example"


def test_allow_private_and_allowlist_lift_the_refusal(http_server):
    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    assert _reason(http_server.url("/a.jpg"), AddressGuard(allow_private=True)) == "fetched"
    assert _reason(http_server.url("/a.jpg"), AddressGuard.from_text(False, "127.0.0.0/8")) == "fetched"


def test_admin_edit_refuses_private_urls_with_one_reason(guarded, http_server):
    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    with guarded.client() as client:
        bodies = []
        for url in (http_server.url("/a.jpg"), f"http://127.0.0.1:{free_port()}/a.jpg"):
            r = client.post("/general/products", headers=KEY, json={"id": "X1", "title": "x", "images": [url]})
            assert r.status_code == 400 and "address not allowed" in r.json()["detail"]
            bodies.append(r.json()["detail"].replace(url, "URL"))
    assert bodies[0] == bodies[1]  # an open port and a closed one look the same
    assert http_server.total_requests == 0


def test_ui_image_link_refuses_private_urls(http_server, monkeypatch):
    from ui.query import QueryError, fetch_image

    monkeypatch.delenv("IMAGESEARCH_ALLOW_PRIVATE_URLS")
    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    with pytest.raises(QueryError, match="private network"):
        fetch_image(http_server.url("/a.jpg"))
    assert http_server.total_requests == 0


def test_pipeline_download_records_the_refusal(make_settings, http_server, tmp_path):
    from core.errors import ImageSearchError
    from core.model_config import ModelRegistry
    from pipeline.runner import run_model
    from utils.atomic import read_json

    http_server.routes["/a.jpg"] = Reply(images.jpeg())
    settings = make_settings(allow_private_urls=False)
    csv = settings.data_dir / "shop" / "products.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text(f"id,title,images\nP1,Mug,{http_server.url('/a.jpg')}\n")
    with pytest.raises(ImageSearchError):  # nothing usable to index: the run stops with a typed error
        run_model(settings, ModelRegistry.discover(settings).get("shop"), progress=False)
    report = read_json(settings.models_dir / "shop" / "download_report.json")
    assert report["failed"] == {"address not allowed": 1} and report["examples"]["address not allowed"] == [
        f"row 2: {http_server.url('/a.jpg')}"]
    assert http_server.total_requests == 0
