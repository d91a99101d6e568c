"""Image, text, all-models and legacy search against the live server."""

from __future__ import annotations

import csv
import json

import pytest

from tests.api import images
from tests.stores import both_stores


def _products(root, model):
    with open(root / "data" / model / "products.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _single_view(root, model):
    """Products with one image: their indexed vector is exactly that view's (others are averages)."""
    return [r for r in _products(root, model) if len(json.loads(r["images"])) == 1]


def _own_image(root, model, row) -> bytes:
    return (root / "data" / model / json.loads(row["images"])[0]).read_bytes()


@both_stores
@pytest.mark.parametrize("model", ["general", "shirts"])
def test_a_products_own_image_finds_that_product_first(client, built_root, model):
    rows = _single_view(built_root, model)
    assert len(rows) >= 5
    for row in rows[::3]:
        r = client.post(f"/{model}/search", files={"file": ("q.jpg", _own_image(built_root, model, row), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["id"] == row["shopify_product_id"]
        assert body["results"][0]["title"] == row["title"]


@both_stores
def test_search_response_shape(client, built_root):
    row = _products(built_root, "general")[0]
    r = client.post("/general/search", params={"top_k": 5},
                    files={"file": ("mug.jpg", _own_image(built_root, "general", row), "image/jpeg")})
    body = r.json()
    assert body["model"] == "general" and body["query_filename"] == "mug.jpg"
    assert body["num_results"] == len(body["results"]) == 5
    assert body["search_time_ms"] > 0
    hit = body["results"][0]
    assert [h["rank"] for h in body["results"]] == [1, 2, 3, 4, 5]
    assert -1.0 <= hit["score"] <= 1.0 and hit["score"] > 0.9
    assert hit["category"] == row["category"] and hit["preview_image"] == row["preview_image"]
    assert hit["model"] == "general"  # single-model hits name their model too
    assert hit["extra"] == {"price": float(row["price"]), "vendor": row["vendor"]}  # a number column as numbers
    assert client.get(f"/general/products/{hit['id']}").json()["extra"]["price"] == float(row["price"])
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True)
    image = client.get(hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"


def test_raw_image_body_works_too(client, built_root):
    row = _single_view(built_root, "shirts")[1]
    r = client.post("/shirts/search", content=_own_image(built_root, "shirts", row),
                    headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["id"] == row["shopify_product_id"]


@both_stores
def test_category_and_min_score_filters(client, built_root):
    data = _own_image(built_root, "general", _products(built_root, "general")[0])
    r = client.post("/general/search", params={"category": "lamps", "top_k": 20}, files={"file": ("q.jpg", data)})
    assert r.status_code == 200
    assert r.json()["num_results"] == 11 and {h["category"] for h in r.json()["results"]} == {"lamps"}
    assert client.post("/general/search", params={"category": "nothing-like-this"},
                       files={"file": ("q.jpg", data)}).json()["results"] == []
    r = client.post("/general/search", params={"min_score": 0.999, "top_k": 100}, files={"file": ("q.jpg", data)})
    assert all(h["score"] >= 0.999 for h in r.json()["results"]) and r.json()["num_results"] >= 1


@both_stores
def test_extra_column_filters_equality_and_ranges(client, built_root):
    rows = _products(built_root, "general")
    data = _own_image(built_root, "general", rows[0])
    cheap = {r["shopify_product_id"] for r in rows if 20 <= float(r["price"]) <= 60}

    def ids(**params) -> set[str]:
        r = client.post("/general/search", params={"top_k": 100, "dedupe": "false", **params},
                        files={"file": ("q.jpg", data)})
        assert r.status_code == 200, r.text
        return {h["id"] for h in r.json()["results"]}

    assert ids(range="price:20:60") == cheap and ids(price_min=20, price_max=60) == cheap
    assert len(ids(filter="vendor:Demo Co")) == 66 and ids(filter='vendor:Demo Co" or "') == set()
    assert ids(range="price:60:20") == set()
    mugs = {r["shopify_product_id"] for r in rows if r["category"] == "mugs" and float(r["price"]) >= 20}
    assert ids(category="mugs", price_min=20) == mugs
    r = client.post("/general/search", params={"filter": "colour:red"}, files={"file": ("q.jpg", data)})
    assert r.status_code == 400 and "price" in r.json()["detail"]


@both_stores
def test_sort_orders_the_best_matches_by_a_column(client, built_root):
    """sort=price / -price orders the best matches (after the filters) by price, pages continue within
    them, /all sorts its merged ranking the same way, and a column the model lacks is a 400."""
    data = _own_image(built_root, "general", _products(built_root, "general")[0])

    def prices(path="/general/search", **params) -> list[float]:
        r = client.post(path, params={"top_k": 12, **params}, files={"file": ("q.jpg", data)})
        assert r.status_code == 200, r.text
        return [h["extra"]["price"] for h in r.json()["results"]]

    cheapest, page2 = prices(sort="price"), prices(sort="price", offset=12)
    assert cheapest == sorted(cheapest) and page2 == sorted(page2) and cheapest[-1] <= page2[0]
    dearest = prices(sort="-price", category="lamps", top_k=20)
    lamps = sorted((float(r["price"]) for r in _products(built_root, "general") if r["category"] == "lamps"),
                   reverse=True)
    assert dearest == lamps  # the whole category, dearest first
    merged = prices("/all/search", sort="price")
    assert merged == sorted(merged) and len(merged) == 12
    r = client.post("/general/search", params={"sort": "colour"}, files={"file": ("q.jpg", data)})
    assert r.status_code == 400 and "price" in r.json()["detail"]
    assert client.post("/general/search", params={"sort": "price;drop"}, files={"file": ("q.jpg", data)}
                       ).status_code == 422


def _queries_embedded(live) -> int:
    return sum(q for _, q in live.app.state.catalogue.batch_stats().values())


@both_stores
def test_all_search_merges_models(client, live, built_root):
    row = _single_view(built_root, "shirts")[0]
    before = _queries_embedded(live)
    r = client.post("/all/search", params={"top_k": 4},
                    files={"file": ("q.jpg", _own_image(built_root, "shirts", row), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert _queries_embedded(live) == before + 1  # both models share the backbone: one forward
    body = r.json()
    assert set(body["per_model"]) == {"general", "shirts"}
    assert body["per_model"]["shirts"]["results"][0]["id"] == row["shopify_product_id"]
    assert body["results"][0]["id"] == row["shopify_product_id"] and body["results"][0]["model"] == "shirts"
    matches = [h["match"] for h in body["results"]]  # merged by calibrated match by default
    assert matches == sorted(matches, reverse=True) and len(matches) == 4 and body["search_time_ms"] > 0
    by_score = client.post("/all/search", params={"top_k": 4, "merge": "score"},
                           files={"file": ("q.jpg", _own_image(built_root, "shirts", row), "image/jpeg")}).json()
    scores = [h["score"] for h in by_score["results"]]
    assert scores == sorted(scores, reverse=True)


def test_legacy_route_is_general_search(client, built_root):
    row = _products(built_root, "general")[10]
    data = _own_image(built_root, "general", row)
    legacy = client.post("/search_products/", files={"file": ("q.jpg", data, "image/jpeg")}).json()
    direct = client.post("/general/search", files={"file": ("q.jpg", data, "image/jpeg")}).json()
    assert legacy["model"] == "general"
    assert [h["id"] for h in legacy["results"]] == [h["id"] for h in direct["results"]]


def test_text_search(client):
    r = client.get("/general/search/text", params={"q": "red ceramic mug", "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "red ceramic mug" and body["num_results"] == 3 and body["search_time_ms"] > 0


@both_stores
def test_text_search_in_all_models_merges_one_ranking(client):
    r = client.get("/all/search/text", params={"q": "blue striped polo", "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "blue striped polo" and set(body["per_model"]) == {"general", "shirts"}
    every = [h for m in body["per_model"].values() for h in m["results"]]
    best = sorted(every, key=lambda h: (-h["match"], -h["score"]))[:5]  # the text map's calibrated match
    assert [(h["model"], h["id"]) for h in body["results"]] == [(h["model"], h["id"]) for h in best]
    assert [h["rank"] for h in body["results"]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("q", ["", "x" * 10_001])
def test_text_query_empty_or_huge_is_422(client, q):
    r = client.get("/general/search/text", params={"q": q})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"


def test_text_query_blank_is_400(client):
    r = client.get("/general/search/text", params={"q": "   "})
    assert r.status_code == 400 and "empty" in r.json()["detail"]


@pytest.mark.parametrize("top_k", ["0", "-1", str(10**9), "abc"])
def test_bad_top_k_is_422(client, top_k):
    r = client.post("/general/search", params={"top_k": top_k}, files={"file": ("q.jpg", images.jpeg())})
    assert r.status_code == 422
    assert "top_k" in r.json()["detail"]
    assert client.get("/general/search/text", params={"q": "mug", "top_k": top_k}).status_code == 422


@both_stores
def test_top_k_bounds_are_served(client):
    for top_k, expected in ((1, 1), (100, 66)):
        r = client.post("/general/search", params={"top_k": top_k}, files={"file": ("q.jpg", images.jpeg())})
        assert r.status_code == 200 and r.json()["num_results"] == expected


def test_the_tiny_demo_model_shows_a_full_page_out_of_the_box(built_root, tiny_clip, monkeypatch):
    """The README's demo (the tiny random CLIP, no threshold set anywhere) answers a photo with a full page
    of distinct products, not one hit with everything folded into it."""
    from core.config import load_settings
    from tests.api.conftest import start_server, stop_server

    monkeypatch.delenv("IMAGESEARCH_DUPLICATE_THRESHOLD")
    server = start_server(load_settings(root=built_root, clip_model=str(tiny_clip), device="cpu"))
    row = _products(built_root, "general")[0]
    try:
        with server.client() as c:
            body = c.post("/general/search", params={"top_k": 12},
                          files={"file": ("q.jpg", _own_image(built_root, "general", row))}).json()
    finally:
        stop_server(server)
    assert body["num_results"] == 12 and len({h["id"] for h in body["results"]}) == 12
    assert body["results"][0]["id"] == row["shopify_product_id"]
