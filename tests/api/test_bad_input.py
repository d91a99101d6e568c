"""Bad uploads and names: always a 4xx JSON answer, never a 5xx, and the server stays healthy."""

from __future__ import annotations

import pytest

from tests.api import images


@pytest.fixture(autouse=True)
def _still_healthy(client):
    yield
    assert client.get("/health").json()["status"] == "healthy"


def _search(client, data: bytes, name: str = "q.jpg", ctype: str = "image/jpeg", model: str = "general"):
    return client.post(f"/{model}/search", files={"file": (name, data, ctype)})


@pytest.mark.parametrize("maker", [images.cmyk_jpeg, images.png_16bit, images.palette_png, images.rgba_png,
                                   images.animated_gif, images.animated_webp, images.webp])
def test_unusual_but_valid_images_work(client, maker):
    r = _search(client, maker(), name=f"q.{maker.__name__}")
    assert r.status_code == 200, r.text
    assert r.json()["num_results"] == 10


def test_no_file_field(client):
    r = client.post("/general/search", files={"other": ("q.jpg", images.jpeg(), "image/jpeg")})
    assert r.status_code == 400 and "'file'" in r.json()["detail"]
    r = client.post("/general/search", data={"file": "not a file"})
    assert r.status_code == 400


def test_no_body_at_all(client):
    r = client.post("/general/search")
    assert r.status_code == 400 and r.json()["error"] == "BadRequestError"


def test_empty_file(client):
    r = _search(client, b"")
    assert r.status_code == 400 and "empty" in r.json()["detail"]


def test_text_file_named_jpg(client):
    r = _search(client, b"hello, I am plainly text\n" * 20, name="photo.jpg")
    assert r.status_code == 400 and "not an image" in r.json()["detail"]


def test_truncated_jpeg(client):
    r = _search(client, images.truncated_jpeg())
    assert r.status_code == 400 and "truncated" in r.json()["detail"]


def test_upload_over_the_limit_is_413(client, live):
    limit = live.settings.max_upload_bytes
    big = images.jpeg() + b"\x00" * (limit + 1)
    r = _search(client, big)
    assert r.status_code == 413 and str(limit) in r.json()["detail"]
    r = client.post("/general/search", content=big, headers={"content-type": "image/jpeg"})
    assert r.status_code == 413


def test_upload_over_the_limit_without_content_length_is_413(client, live):
    limit = live.settings.max_upload_bytes

    def chunks():
        for _ in range(limit // 65536 + 4):
            yield b"\x00" * 65536

    r = client.post("/general/search", content=chunks(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 413


def test_decompression_bomb_is_refused(client):
    r = _search(client, images.bomb_png(), name="bomb.png", ctype="image/png")
    assert r.status_code == 413 and "too many pixels" in r.json()["detail"]


def test_unsupported_content_type(client):
    r = client.post("/general/search", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "content type" in r.json()["detail"]


def test_unknown_model_lists_available(client):
    r = _search(client, images.jpeg(), model="nope")
    assert r.status_code == 404
    assert r.json()["available"] == ["general", "shirts"] and "general, shirts" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/..%2F..%2Fetc/search", "/general%2F..%2Fshirts/search", "/%2E%2E/search",
                                  "/G%C3%A9n%C3%A9ral/search", "/%F0%9F%91%95/search", "/ALL/search",
                                  "/" + "a" * 65 + "/search", "/a%00b/search", "/all/products/x"])
def test_junk_model_names_are_404_json(client, path):
    r = client.post(path, files={"file": ("q.jpg", images.jpeg())}) if path.endswith("search") else client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json") and r.json()["detail"]


def test_junk_names_on_every_model_route(client):
    for path in ("/%C3%BC/search/text?q=x", "/%C3%BC/products/1", "/%C3%BC/products/1/similar",
                 "/%C3%BC/products/1/image"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"] == "InvalidModelNameError", path
