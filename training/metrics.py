"""Ranking metrics with category relevance (pure numpy, exact and deterministic).

Conventions, shared by evaluation and fine-tuning:

- Ranking: items by descending score; equal scores keep ascending item index (a stable order),
  so a result never depends on BLAS or FAISS tie order. A score of ``-inf`` means "not a
  candidate" (used to exclude a query's own product).
- Relevance: item j is relevant to query i when both carry the same label and that label is
  ``>= 0``; a negative label means uncategorised (never relevant, and such a query is not scored).
- A query with no relevant item (its category holds only itself) cannot be scored: its metrics
  are NaN, it is left out of every mean and counted as ``unscorable``.
- precision@k = relevant items among the first k / k (k stays the divisor even when fewer than
  k candidates exist). Reciprocal rank = 1 / rank of the first relevant item in the *full*
  ranking. AP@k = sum over i <= k of precision@i * rel_i, divided by min(R, k), R = relevant count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_KS = (1, 5, 10)
MAP_K = 10


def encode_labels(labels: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Category strings -> int codes (sorted names); None or blank -> -1 (uncategorised)."""
    names = sorted({str(c) for c in labels if c is not None and str(c).strip()})
    lookup = {name: i for i, name in enumerate(names)}
    codes = [lookup.get(str(c), -1) if c is not None and str(c).strip() else -1 for c in labels]
    return np.asarray(codes, dtype=np.int64), names


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Item indices of the ``k`` best scores per row, ties by ascending index; ``-1`` pads rows with
    fewer than ``k`` candidates (``-inf`` scores are not candidates)."""
    scores = np.asarray(scores)
    n_q, n_items = scores.shape
    k = int(min(k, n_items))
    out = np.full((n_q, k), -1, dtype=np.int64)
    if k == 0:
        return out
    # argpartition finds the k-th best value fast; everything tied with it is then re-ranked
    # exactly, because argpartition alone would cut through a tie arbitrarily.
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1)
    for i in range(n_q):
        row = scores[i]
        cand = np.flatnonzero(row >= kth[i])
        cand = cand[row[cand] > -np.inf]
        best = cand[np.lexsort((cand, -row[cand]))][:k]
        out[i, :len(best)] = best
    return out


@dataclass
class QueryMetrics:
    """Per-query metrics (NaN where a query has no relevant item)."""

    precision: dict[int, np.ndarray]
    reciprocal_rank: np.ndarray
    average_precision: np.ndarray
    num_relevant: np.ndarray
    map_k: int = MAP_K

    @property
    def scorable(self) -> np.ndarray:
        return self.num_relevant > 0

    def subset(self, mask: np.ndarray) -> QueryMetrics:
        return QueryMetrics({k: v[mask] for k, v in self.precision.items()}, self.reciprocal_rank[mask],
                            self.average_precision[mask], self.num_relevant[mask], self.map_k)

    @staticmethod
    def concat(parts: Sequence[QueryMetrics]) -> QueryMetrics:
        first = parts[0]
        return QueryMetrics({k: np.concatenate([p.precision[k] for p in parts]) for k in first.precision},
                            np.concatenate([p.reciprocal_rank for p in parts]),
                            np.concatenate([p.average_precision for p in parts]),
                            np.concatenate([p.num_relevant for p in parts]), first.map_k)


def _relevance(query_labels: np.ndarray, item_labels: np.ndarray) -> np.ndarray:
    return (item_labels[None, :] == query_labels[:, None]) & (query_labels[:, None] >= 0)


def _reciprocal_ranks(scores: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """1 / (1-based rank of the best relevant item), counting ties before it by index."""
    best = np.where(rel, scores, -np.inf).max(axis=1, initial=-np.inf)
    first = np.argmax(rel & (scores == best[:, None]), axis=1)
    idx = np.arange(scores.shape[1])[None, :]
    ahead = (scores > best[:, None]).sum(1) + ((scores == best[:, None]) & (idx < first[:, None])).sum(1)
    return 1.0 / (ahead + 1.0)


def query_metrics(scores: np.ndarray, query_labels: np.ndarray, item_labels: np.ndarray, *,
                  query_items: np.ndarray | None = None, ks: Sequence[int] = DEFAULT_KS,
                  map_k: int = MAP_K) -> QueryMetrics:
    """Metrics for each query row of ``scores`` (n_queries, n_items).

    ``query_items[i]`` is the catalogue row of query i (excluded from its own ranking), or -1.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    rel = _relevance(np.asarray(query_labels), np.asarray(item_labels))
    if query_items is not None:
        rows = np.flatnonzero(np.asarray(query_items) >= 0)
        cols = np.asarray(query_items)[rows]
        scores[rows, cols] = -np.inf
        rel[rows, cols] = False
    num_rel = rel.sum(axis=1)
    ranked = top_k(scores, max(max(ks), map_k))
    hits = np.where(ranked >= 0, np.take_along_axis(rel, np.maximum(ranked, 0), axis=1), False)
    hits = np.pad(hits, ((0, 0), (0, max(0, max(max(ks), map_k) - hits.shape[1]))))
    nan = np.where(num_rel > 0, 1.0, np.nan)
    precision = {k: hits[:, :k].sum(1) / k * nan for k in ks}
    top = hits[:, :map_k]
    prec_at_i = np.cumsum(top, axis=1) / np.arange(1, map_k + 1)
    ap = (prec_at_i * top).sum(1) / np.maximum(np.minimum(num_rel, map_k), 1) * nan
    return QueryMetrics(precision, _reciprocal_ranks(scores, rel) * nan, ap, num_rel, map_k)


def summarize(qm: QueryMetrics) -> dict:
    """Means over scorable queries: precision_at_<k>, mrr, map_at_<map_k>, queries, unscorable."""
    ok = qm.scorable
    out: dict = {}
    for k, values in qm.precision.items():
        out[f"precision_at_{k}"] = _mean(values[ok])
    out["mrr"] = _mean(qm.reciprocal_rank[ok])
    out[f"map_at_{qm.map_k}"] = _mean(qm.average_precision[ok])
    out["queries"] = int(ok.sum())
    out["unscorable"] = int((~ok).sum())
    return out


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def per_category(qm: QueryMetrics, query_labels: np.ndarray, names: Sequence[str],
                 products: np.ndarray | None = None) -> dict[str, dict]:
    """``summarize`` per category of the query; ``products`` counts each category's catalogue size."""
    query_labels = np.asarray(query_labels)
    table: dict[str, dict] = {}
    for code, name in enumerate(names):
        mask = query_labels == code
        row = summarize(qm.subset(mask))
        row["products"] = int(products[code]) if products is not None else int(mask.sum())
        table[name] = row
    return table


def hit_rate(scores: np.ndarray, targets: np.ndarray, k: int) -> float | None:
    """Share of queries whose ``targets[i]`` row ranks in the top ``k`` (nothing excluded)."""
    if len(targets) == 0:
        return None
    ranked = top_k(scores, k)
    return float(np.mean((ranked == np.asarray(targets)[:, None]).any(axis=1)))
