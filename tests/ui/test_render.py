"""What a shopper reads on a result: escaped cards, match labels, prices, links, pages joined in order."""

from __future__ import annotations

import pytest

from ui import render
from ui.labels import match_label, price_text, product_link
from ui.results import count_text, results_from_pages


def test_card_escapes_text_and_carries_hooks():
    hit = {"id": 'G"1', "rank": 2, "model": "general", "title": "<script>alert(1)</script>",
           "category": "mugs & cups", "score": 0.873}
    card = render.product_card(hit, render.image_src(b"\xff\xd8"), label="Great match", price="$1,234.50",
                               link="https://shop.example/p/G1?a=1&b=2", show_model="General")
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert 'data-product-id="G&quot;1"' in card and 'data-rank="2"' in card and 'data-model="general"' in card
    assert "Great match" in card and "$1,234.50" in card and "mugs &amp; cups" in card and "in General" in card
    assert 'href="https://shop.example/p/G1?a=1&amp;b=2"' in card and 'target="_blank"' in card
    assert "data:image/jpeg;base64,/9g=" in card and "%" not in card.replace("%23", "")


def test_missing_image_gets_a_placeholder_and_alerts_escape():
    assert render.image_src(None) == render.PLACEHOLDER_SRC
    assert "&lt;b&gt;" in render.alert("error", "Down", "<b>", testid="api-down")


@pytest.mark.parametrize("scores", [[0.99, 0.985, 0.98, 0.97], [0.131, 0.12, 0.09, 0.02]])
def test_labels_are_relative_to_the_best_hit_never_a_raw_percentage(scores):
    """Image hits with a random model (all near 0.99) and text hits (0.0-0.13) read sensibly alike."""
    hits = [{"rank": n, "score": s} for n, s in enumerate(scores, start=1)]
    labels = [match_label(h, scores[0]) for h in hits]
    assert labels[0] == "Best match" and all("%" not in label for label in labels)
    assert labels[1] == "Great match"
    if scores[0] < 0.5:  # text: a far weaker hit is only "Similar", not "0% match"
        assert labels[-1] == "Similar"


def test_a_calibrated_match_wins_when_the_api_sends_one():
    assert match_label({"rank": 1, "score": 0.2, "match": 0.9}, 0.2) == "Excellent match"
    assert match_label({"rank": 3, "score": 0.2, "match": 0.5}, 0.3) == "Good match"
    assert match_label({"rank": 9, "score": 0.1, "match": 0.0}, 0.3) == "Similar"
    assert match_label({"rank": 2, "score": None}, None) == "Similar"


@pytest.mark.parametrize(("value", "currency", "text"), [
    ("12.5", "USD", "$12.50"), (1234.5, "eur", "€1,234.50"), ("1200", "JPY", "¥1,200"),
    ("9.99", "SEK", "9.99 SEK"), ("9.99", "", "9.99"), ("", "USD", ""), (None, "USD", ""), ("ask us", "USD", "ask us"),
])
def test_prices_carry_their_currency(value, currency, text):
    assert price_text(value, currency) == text


def test_links_come_from_a_url_column_or_the_catalogue_template():
    assert product_link({"id": "A1", "extra": {"url": "https://shop.example/a1"}}, "https://x/{id}") \
        == "https://shop.example/a1"
    assert product_link({"id": "A 1/2", "extra": {"url": "javascript:alert(1)"}}, "https://x/p/{id}") \
        == "https://x/p/A%201%2F2"
    assert product_link({"id": "A1", "extra": {}}) == ""


def _page(model, ids, start=1, per_model=None):
    hits = [{"rank": start + n, "id": i, "score": 1 - (start + n) / 100} for n, i in enumerate(ids)]
    return {"model": model, "results": hits, **({"per_model": per_model} if per_model is not None else {})}


def test_pages_join_in_order_and_say_when_more_can_load():
    pages = [_page("general", ["a", "b"]), _page("general", ["c", "d"], start=3)]
    results = results_from_pages(pages, query_model="general", page_size=2)
    assert [h["id"] for h in results.ranking] == ["a", "b", "c", "d"] and results.has_more
    assert {h["model"] for h in results.ranking} == {"general"} and results.top_score == 0.99
    last = results_from_pages([*pages, _page("general", ["e"], start=5)], query_model="general", page_size=2)
    assert not last.has_more and len(last.ranking) == 5


def test_all_models_keep_one_ranking_and_each_catalogues_own_but_not_the_unbuilt():
    per = {"general": {"model": "general", "results": [{"rank": 1, "id": "g1", "score": 0.9}]},
           "toys": {"model": "toys", "results": [], "error": "not built yet: run python run_training.py toys"}}
    merged = [{"rank": 1, "id": "g1", "score": 0.9, "model": "general"}]
    results = results_from_pages([{"model": "all", "results": merged, "per_model": per}], query_model="all",
                                 page_size=10)
    assert [h["id"] for h in results.ranking] == ["g1"] and list(results.per_model) == ["general"]
    assert not results.has_more


def test_counts():
    assert [count_text(1), count_text(12), count_text(12, more=True), count_text(0)] == \
        ["1 product", "12 products", "12+ products", "0 products"]
