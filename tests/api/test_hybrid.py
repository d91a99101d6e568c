"""Text search by words and pictures (mode=hybrid|semantic|lexical) against a live server: an admin edit is
findable by its words at once, filters still apply, what users type is words, exact identifiers come first."""

from __future__ import annotations

import pytest

from tests.api.conftest import API_KEY
from tests.stores import both_stores

KEY = {"X-API-Key": API_KEY}


@pytest.fixture
def shop(local_client):
    """The session's local server (its admin key is API_KEY): a test that edits it undoes its edits."""
    return local_client


def _text(c, q: str, model: str = "general", **params) -> list[dict]:
    r = c.get(f"/{model}/search/text", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def _ids(hits: list[dict]) -> list[str]:
    return [h["id"] for h in hits]


def test_words_find_an_admin_upsert_at_once_and_leave_with_its_edit_and_delete(shop):
    product = {"id": "LEX-1", "title": "Zorblax merino cardigan", "category": "knitwear",
               "images": ["images/G1001_0.jpg"], "extra": {"sku": "ZX-9041", "vendor": "Quillon Crème"}}
    assert _text(shop, "zorblax", mode="lexical") == []
    assert shop.post("/general/products", json=product, headers=KEY).status_code == 200
    try:
        _words_come_and_go(shop, product)
    finally:
        shop.delete("/general/products/LEX-1", headers=KEY)


def _words_come_and_go(shop, product: dict) -> None:

    top = _text(shop, "Zorblax cardigan")[0]
    assert top["id"] == "LEX-1" and "words" in top["matched"] and top["matched_words"] == ["zorblax", "cardigan"]
    assert _ids(_text(shop, "quillon creme", mode="lexical")) == ["LEX-1"]  # an extra column, accents folded
    assert _ids(_text(shop, "zorbl", mode="lexical")) == ["LEX-1"]  # the last word typed as a prefix
    exact = _text(shop, "ZX-9041")[0]
    assert exact["id"] == "LEX-1" and exact["matched"][0] == "id" and exact["match"] == 1.0

    product["title"] = "Plain cardigan"
    assert shop.post("/general/products", json=product, headers=KEY).status_code == 200
    assert _text(shop, "zorblax", mode="lexical") == []
    assert shop.delete("/general/products/LEX-1", headers=KEY).status_code == 200
    assert "LEX-1" not in _ids(_text(shop, "cardigan quillon", top_k=100))
    assert _text(shop, "ZX-9041", mode="lexical") == []


def test_a_product_whose_words_match_but_filters_do_not_is_not_returned(shop):
    assert _text(shop, "Red Ceramic Mug")[0]["id"] == "G1001"
    assert "G1001" not in _ids(_text(shop, "Red Ceramic Mug", category="shirts", top_k=100))
    assert "G1001" not in _ids(_text(shop, "Red Ceramic Mug", price_max=10, top_k=100))
    assert "G1001" not in _ids(_text(shop, "G1001", filter="vendor:Nobody", top_k=100))
    kept = _text(shop, "mug", mode="lexical", category="mugs", price_max=40, top_k=100)
    assert kept and all(h["category"] == "mugs" and h["extra"]["price"] <= 40 for h in kept)


TYPED = ['"', '"red mug', "mug*", "*", "NEAR(red mug)", "red NEAR mug", "-mug", "mug -red", "(((", "mug)",
         "AND", "OR NOT", "title:mug", "^mug", "{mug}", "'", "\\", "mug AND", "red + mug", "%_", "mug;--",
         "NEAR(red mug, 2)", "ünïcödé mug", "red mug " * 1250]  # the last: 10 kB


def test_what_users_type_is_words_never_an_engine_error(shop):
    for q in TYPED:  # hybrid: the identifier lookup, the words and the pictures all see it
        r = shop.get("/general/search/text", params={"q": q})
        assert r.status_code == 200, (q, r.text)
        if "mug" in q and "mug" in q.replace("-mug", ""):
            assert any("mug" in (h["matched_words"] or []) for h in r.json()["results"]), q


def test_modes_say_why_each_hit_came(shop):
    semantic = _text(shop, "blue striped polo", mode="semantic", top_k=5)
    assert len(semantic) == 5 and all(h["matched"] == ["picture"] for h in semantic)
    lexical = _text(shop, "mug", mode="lexical", top_k=100)
    assert lexical and all(h["matched"] == ["words"] and h["matched_words"] == ["mug"] for h in lexical)
    assert _text(shop, "qwzxv", mode="lexical") == [] and len(_text(shop, "qwzxv", top_k=3)) == 3
    hybrid = _text(shop, "mug", top_k=100)
    assert set(_ids(lexical)) <= set(_ids(hybrid)) and any("picture" in h["matched"] for h in hybrid)


def test_all_models_merge_hybrid_results_by_match(shop):
    r = shop.get("/all/search/text", params={"q": "Red Ceramic Mug", "top_k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    every = [h for m in body["per_model"].values() for h in m["results"]]
    best = sorted(every, key=lambda h: (-h["match"], -h["score"]))[:5]
    assert [(h["model"], h["id"]) for h in body["results"]] == [(h["model"], h["id"]) for h in best]
    assert body["results"][0]["id"] == "G1001" and "words" in body["results"][0]["matched"]


@both_stores
def test_an_exact_product_id_comes_first(client):
    for mode in ("hybrid", "lexical"):
        hits = _text(client, "G1010", mode=mode)
        assert hits[0]["id"] == "G1010" and hits[0]["matched"][0] == "id" and hits[0]["match"] == 1.0
    words = client.get("/models").json()
    assert {m["name"]: m["words"] for m in words["models"]}["general"]
