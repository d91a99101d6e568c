"""What the shop needs from the API: pages (offset) on every search route, product views, offline docs."""

from __future__ import annotations

import csv
import json

import pytest

from tests.stores import both_stores


def _rows(root, model):
    with open(root / "data" / model / "products.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _image(root, model, row) -> bytes:
    return (root / "data" / model / json.loads(row["images"])[0]).read_bytes()


def _ids(body, key="results"):
    return [(h.get("model"), h["id"], h["rank"]) for h in body[key]]


def _pages_match_one_long_list(get) -> None:
    whole = get(top_k=9, offset=0)
    first, second, third = get(top_k=3, offset=0), get(top_k=3, offset=3), get(top_k=3, offset=6)
    assert _ids(first) + _ids(second) + _ids(third) == _ids(whole)
    assert [h["rank"] for h in second["results"]] == [4, 5, 6]


@pytest.mark.parametrize("route", ["image", "text", "similar", "legacy"])
def test_offset_pages_one_model(client, built_root, route):
    row = _rows(built_root, "general")[0]
    data = _image(built_root, "general", row)

    def get(**params):
        if route == "image":
            r = client.post("/general/search", params=params, files={"file": ("q.jpg", data, "image/jpeg")})
        elif route == "legacy":
            r = client.post("/search_products/", params=params, files={"file": ("q.jpg", data, "image/jpeg")})
        elif route == "text":
            r = client.get("/general/search/text", params={"q": "red mug", **params})
        else:
            r = client.get(f"/general/products/{row['shopify_product_id']}/similar", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    _pages_match_one_long_list(get)


@pytest.mark.parametrize("route", ["image", "text"])
def test_offset_pages_all_models_merged_and_per_model(client, built_root, route):
    data = _image(built_root, "shirts", _rows(built_root, "shirts")[0])

    def get(**params):
        if route == "image":
            r = client.post("/all/search", params=params, files={"file": ("q.jpg", data, "image/jpeg")})
        else:
            r = client.get("/all/search/text", params={"q": "striped shirt", **params})
        assert r.status_code == 200, r.text
        return r.json()

    _pages_match_one_long_list(get)
    whole, second = get(top_k=8, offset=0), get(top_k=4, offset=4)
    for model in ("general", "shirts"):
        assert _ids(second["per_model"][model]) == _ids(whole["per_model"][model])[4:8]


def test_offset_past_the_end_is_an_empty_page_and_bad_offset_is_422(client):
    r = client.get("/general/search/text", params={"q": "mug", "offset": 5000})
    assert r.status_code == 200 and r.json()["results"] == []
    assert client.get("/general/search/text", params={"q": "mug", "offset": -1}).status_code == 422


@both_stores
def test_product_views_are_served_from_the_cache(client, built_root):
    row = next(r for r in _rows(built_root, "general") if len(json.loads(r["images"])) >= 2)
    info = client.get(f"/general/products/{row['shopify_product_id']}").json()
    assert info["images"] == json.loads(row["images"])
    assert len(info["view_urls"]) == len(info["images"]) and all(info["view_urls"])
    first, second = (client.get(u) for u in info["view_urls"][:2])
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "image/jpeg" and first.content != second.content
    missing = client.get(f"/general/products/{row['shopify_product_id']}/views/{len(info['images'])}")
    assert missing.status_code == 404 and missing.json()["error"]


def test_models_list_currency_and_url_template(client):
    general = next(m for m in client.get("/models").json()["models"] if m["name"] == "general")
    assert general["currency"] == "USD" and general["url_template"] == ""  # the demo's model.json


def test_docs_and_redoc_load_their_assets_from_this_server(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn." not in html and "googleapis" not in html
        assets = [part.split('"')[0] for part in html.split('src="')[1:] + html.split("href=\"")[1:]]
        local = [a for a in assets if a.startswith("/static-offline-docs/")]
        assert local, html
        for asset in local:
            assert client.get(asset).status_code == 200, asset
