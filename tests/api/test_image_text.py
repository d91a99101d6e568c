"""A photo refined by words (q, not, text_weight on the photo routes) against the live server: the words
pull the results toward what they find alone, ``not`` pushes them away, bad values are 422s."""

from __future__ import annotations


import pytest

from tests.api.test_search import _own_image, _single_view

WORDS = "blue lamp"
DEPTH = 66  # the whole general catalogue: every product's rank is seen


def _photo(built_root) -> bytes:
    return _own_image(built_root, "general", _single_view(built_root, "general")[4])


def _ranks(client, path: str, data: bytes, **params) -> dict[str, int]:
    r = client.post(path, params={"top_k": DEPTH, "dedupe": "false", **params}, files={"file": ("q.jpg", data)})
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["per_model"]["general"]["results"] if path == "/all/search" else body["results"]
    return {h["id"]: h["rank"] for h in hits}


def _mean_rank(ranks: dict[str, int], ids: list[str]) -> float:
    return sum(ranks[i] for i in ids) / len(ids)


@pytest.mark.parametrize("path", ["/general/search", "/all/search"])
def test_words_pull_a_photo_toward_what_they_find_and_not_pushes_away(client, built_root, path):
    """The tiny CLIP is random, so "blue" means nothing to it: what the words find on their own (the text
    search's top 10) is the direction, and it must rise with q and sink with not, further with more weight."""
    data = _photo(built_root)
    found = client.get("/general/search/text", params={"q": WORDS, "top_k": 10, "dedupe": "false"}).json()
    wanted = [h["id"] for h in found["results"]]
    photo = _mean_rank(_ranks(client, path, data), wanted)
    light = _mean_rank(_ranks(client, path, data, q=WORDS, text_weight=0.1), wanted)
    toward = _mean_rank(_ranks(client, path, data, q=WORDS), wanted)  # the default weight, 0.3
    away = _mean_rank(_ranks(client, path, data, **{"not": WORDS}), wanted)
    assert toward < light < photo < away
    assert _ranks(client, path, data, q=WORDS, text_weight=0) == _ranks(client, path, data)


def test_refined_answer_names_its_words_and_blank_words_are_the_photo_alone(client, built_root):
    data = _photo(built_root)
    r = client.post("/general/search", params={"q": f"  {WORDS} ", "top_k": 3}, files={"file": ("q.jpg", data)})
    assert r.status_code == 200 and r.json()["query"] == WORDS
    plain = _ranks(client, "/general/search", data)
    assert _ranks(client, "/general/search", data, q="   ", **{"not": ""}) == plain
    assert client.post("/general/search", files={"file": ("q.jpg", data)}).json()["query"] is None


@pytest.mark.parametrize("params", [{"text_weight": "1.5"}, {"text_weight": "-0.1"}, {"text_weight": "nan"},
                                    {"text_weight": "heavy"}, {"q": "x" * 1001}, {"not": "x" * 1001}])
def test_bad_refining_values_are_422_json(client, built_root, params):
    r = client.post("/general/search", params={"q": "red", **params}, files={"file": ("q.jpg", _photo(built_root))})
    assert r.status_code == 422 and r.json()["error"] == "ValidationError"
    assert r.json()["errors"][0]["loc"][-1] == next(iter(params))


def _hits(client, data: bytes, **params) -> list[dict]:
    r = client.post("/general/search", params={"top_k": DEPTH, "dedupe": "false", **params},
                    files={"file": ("q.jpg", data)})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_products_holding_the_added_words_come_first_and_those_holding_avoided_ones_last(client, built_root):
    """The words also act lexically: a lamp refined with "lamp" lists every lamp first (saying so), one refined
    away from "lamp" lists them last; each group keeps the picture's order, and weight 0 is the photo alone."""
    data = _photo(built_root)
    lamps = {h["id"] for h in _hits(client, data) if "lamp" in h["title"].lower()}
    assert len(lamps) == 11  # the demo's general catalogue: 11 lamps of 66 products

    toward = _hits(client, data, q="lamp")
    assert {h["id"] for h in toward[:len(lamps)]} == lamps
    assert all(h["matched"] == ["picture", "words"] and h["matched_words"] == ["lamp"] for h in toward[:len(lamps)])
    assert all(h["matched"] is None for h in toward[len(lamps):])

    away = _hits(client, data, **{"not": "lamp"})
    assert {h["id"] for h in away[-len(lamps):]} == lamps

    assert [h["id"] for h in _hits(client, data, q="lamp", text_weight=0)] == [h["id"] for h in _hits(client, data)]
