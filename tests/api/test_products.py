"""Product metadata, similar products and preview images."""

from __future__ import annotations

from tests.stores import both_stores


@both_stores
def test_product_metadata(client):
    r = client.get("/general/products/G1001")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "G1001" and body["title"] == "Red Ceramic Mug" and body["category"] == "mugs"
    assert body["images"] and body["extra"]["vendor"] == "Demo Co"
    assert body["image_url"].endswith("/general/products/G1001/image")


@both_stores
def test_similar_leaves_the_product_out(client):
    r = client.get("/shirts/products/S1001/similar", params={"top_k": 5})
    assert r.status_code == 200
    ids = [h["id"] for h in r.json()["results"]]
    assert len(ids) == 5 and "S1001" not in ids
    assert r.json()["search_time_ms"] >= 0


@both_stores
def test_preview_image(client):
    r = client.get("/shirts/products/S1002/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"


@both_stores
def test_unknown_product_is_404(client):
    for path in ("/general/products/NOPE", "/general/products/NOPE/similar", "/general/products/NOPE/image"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"] == "ProductNotFoundError", path


def test_similar_top_k_validated(client):
    assert client.get("/general/products/G1001/similar", params={"top_k": 0}).status_code == 422
