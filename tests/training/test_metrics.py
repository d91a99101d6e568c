"""Ranking metrics against rankings worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import QueryMetrics, encode_labels, hit_rate, per_category, query_metrics, summarize, top_k


def test_top_k_breaks_ties_by_index_even_across_the_cut():
    scores = np.array([[0.1, 0.9, 0.5, 0.5, 0.5, 0.5]])
    assert top_k(scores, 3).tolist() == [[1, 2, 3]]
    assert top_k(np.array([[0.5, 0.5, 0.5]]), 5).tolist() == [[0, 1, 2]]


def test_top_k_skips_minus_inf_and_pads():
    scores = np.array([[-np.inf, 0.2, 0.3]])
    assert top_k(scores, 3).tolist() == [[2, 1, -1]]


def test_single_query_by_hand():
    # ranking 0 (rel), 2, 3, 4 (rel), 1 (rel): R = 3
    items = np.array([0, 0, 1, 1, 0])
    qm = query_metrics(np.array([[0.9, 0.1, 0.8, 0.7, 0.5]]), np.array([0]), items)
    assert qm.precision[1][0] == 1.0
    assert qm.precision[5][0] == pytest.approx(3 / 5)
    assert qm.precision[10][0] == pytest.approx(3 / 10)  # k stays the divisor
    assert qm.reciprocal_rank[0] == 1.0
    assert qm.average_precision[0] == pytest.approx((1 / 1 + 2 / 4 + 3 / 5) / 3)


def test_all_ties_rank_by_index():
    # equal scores -> order 0,1,2,3,4 with relevance F,T,F,T,T
    items = np.array([1, 0, 1, 0, 0])
    qm = query_metrics(np.full((1, 5), 0.5), np.array([0]), items)
    assert qm.precision[1][0] == 0.0
    assert qm.reciprocal_rank[0] == 0.5
    assert qm.average_precision[0] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)


def test_tie_between_relevant_and_irrelevant_counts_in_reciprocal_rank():
    # item 2 (irrelevant) beats the tie; item 0 (irrelevant) precedes item 3 (relevant) at 0.5 by index
    items = np.array([1, 1, 1, 0])
    qm = query_metrics(np.array([[0.5, 0.1, 0.9, 0.5]]), np.array([0]), items)
    assert qm.reciprocal_rank[0] == pytest.approx(1 / 3)


def test_self_is_excluded_and_ap_uses_min_r_k():
    items = np.array([0, 0, 1, 1])
    scores = np.array([[1.0, 0.2, 0.9, 0.3]])  # query is item 0; left: 2, 3, 1 (rel)
    qm = query_metrics(scores, np.array([0]), items, query_items=np.array([0]))
    assert qm.num_relevant[0] == 1
    assert qm.precision[1][0] == 0.0
    assert qm.reciprocal_rank[0] == pytest.approx(1 / 3)
    assert qm.average_precision[0] == pytest.approx(1 / 3)


def test_ap_at_k_divides_by_k_when_more_relevant_than_k():
    items = np.zeros(12, dtype=int)
    qm = query_metrics(np.linspace(1, 0, 12)[None, :], np.array([0]), items, map_k=10)
    assert qm.average_precision[0] == pytest.approx(1.0)


def test_single_product_categories_are_unscorable_and_reported():
    labels = np.array([0, 0, 1, 2, -1])  # 1 and 2 have one product; 4 is uncategorised
    vecs = np.eye(5)
    qm = query_metrics(vecs @ vecs.T, labels, labels, query_items=np.arange(5))
    summary = summarize(qm)
    assert summary["queries"] == 2 and summary["unscorable"] == 3
    # all scores tie at 0 once self is out: the lowest index wins, so 0 finds 1 and 1 finds 0
    assert summary["precision_at_1"] == 1.0 and summary["mrr"] == 1.0
    assert summary["precision_at_5"] == pytest.approx(1 / 5)
    table = per_category(qm, labels, ["a", "b", "c"], products=np.array([2, 1, 1]))
    assert table["b"]["queries"] == 0 and table["b"]["unscorable"] == 1
    assert table["b"]["precision_at_5"] is None and table["b"]["products"] == 1
    assert table["a"]["queries"] == 2


def test_uncategorised_items_are_never_relevant():
    qm = query_metrics(np.array([[0.9, 0.8]]), np.array([-1]), np.array([-1, -1]))
    assert qm.num_relevant[0] == 0 and math.isnan(qm.average_precision[0])


def test_concat_and_subset_keep_alignment():
    items = np.array([0, 1])
    a = query_metrics(np.array([[0.9, 0.1]]), np.array([0]), items)
    b = query_metrics(np.array([[0.9, 0.1]]), np.array([1]), items)
    both = QueryMetrics.concat([a, b])
    assert both.reciprocal_rank.tolist() == [1.0, 0.5]
    assert both.subset(np.array([False, True])).reciprocal_rank.tolist() == [0.5]


def test_hit_rate_counts_self_in_top_k():
    scores = np.array([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5]])
    assert hit_rate(scores, np.array([0, 1]), 2) == 0.5
    assert hit_rate(scores[:0], np.array([], dtype=int), 5) is None


def test_encode_labels_maps_blank_to_minus_one():
    codes, names = encode_labels(["shoe", None, "bag", "", "shoe"])
    assert names == ["bag", "shoe"]
    assert codes.tolist() == [1, -1, 0, -1, 1]
