"""Card and message markup: escaped text, stable test hooks, readable numbers."""

from __future__ import annotations

from ui import render
from ui.results import groups_from_response


def test_card_escapes_text_and_carries_hooks():
    hit = {"id": 'G"1', "rank": 2, "model": "general", "title": "<script>alert(1)</script>",
           "category": "mugs & cups", "score": 0.873, "extra": {"price": "1234.5"}}
    card = render.product_card(hit, render.image_src(b"\xff\xd8"), show_model="General")
    assert "<script>" not in card and "&lt;script&gt;" in card
    assert 'data-product-id="G&quot;1"' in card and 'data-rank="2"' in card
    assert "87% match" in card and "1,234.50" in card and "mugs &amp; cups" in card
    assert "data:image/jpeg;base64,/9g=" in card


def test_match_percent_clamps_cosine():
    assert [render.match_percent(s) for s in (-0.4, 0.0, 0.555, 0.9999, 1.0, None)] == [0, 0, 55, 99, 100, 0]


def test_missing_image_gets_a_placeholder():
    assert render.image_src(None) == render.PLACEHOLDER_SRC


def test_built_at_is_short_and_tolerant():
    assert render.built_at_text("2025-01-02T03:04:05Z") == "2025-01-02 03:04"
    assert render.built_at_text(None) == "" and render.built_at_text("soon") == "soon"


def test_alert_escapes_message():
    assert "&lt;b&gt;" in render.alert("error", "Down", "<b>", testid="api-down")


def test_single_model_response_is_one_group_tagged_with_its_model():
    groups = groups_from_response({"model": "general", "results": [{"id": "a", "rank": 1}]},
                                  query_model="general")
    assert len(groups) == 1 and groups[0].hits[0]["model"] == "general" and not groups[0].merged


def test_all_models_response_puts_the_merged_ranking_first():
    response = {"results": [{"id": "s1", "model": "shirts"}, {"id": "g1", "model": "general"}],
                "per_model": {"shirts": {"results": [{"id": "s1"}]}, "general": {"results": [{"id": "g1"}]},
                              "broken": {"results": [], "error": "not built"}}}
    groups = groups_from_response(response, query_model="all")
    assert [g.model for g in groups] == ["all", "broken", "general", "shirts"]
    assert groups[0].merged and groups[0].show_model and groups[1].error == "not built"
    assert groups[3].hits[0]["model"] == "shirts"
