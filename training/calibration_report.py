"""Calibration in the evaluation: does ``match`` mean what it says? A reliability diagram (per bin of
predicted match, the share of hits that are really relevant) and the expected calibration error.

The hits are each evaluation query's top ``k`` (itself left out), relevance is the same category, and
``match`` is the model's fitted image map (``calibration.json``) applied to the hit's cosine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.calibration import load_calibration
from core.types import Embeddings
from training.report import save_png

BINS = 10
TOP_K = 10
_CHUNK = 256


def reliability(predicted: np.ndarray, relevant: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """Per equal-width bin of predicted probability: count, mean predicted, observed relevant share;
    and ECE, the count-weighted mean gap between the two."""
    predicted, relevant = np.asarray(predicted, np.float64), np.asarray(relevant, np.float64)
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        mean_p = float(predicted[inside].mean()) if n else None
        observed = float(relevant[inside].mean()) if n else None
        if n and mean_p is not None and observed is not None:
            ece += n / len(predicted) * abs(observed - mean_p)
        table.append({"low": b / bins, "high": (b + 1) / bins, "count": n,
                      "mean_match": None if mean_p is None else round(mean_p, 4),
                      "relevant_share": None if observed is None else round(observed, 4)})
    return {"bins": table, "ece": round(ece, 4), "pairs": len(predicted)}


def top_hits(queries: Embeddings, rows: np.ndarray, vectors: Embeddings, labels: np.ndarray,
             k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and relevance (same category) of each query's top ``k`` products, itself excluded."""
    scores_out, relevant_out = [], []
    for s in range(0, len(rows), _CHUNK):
        scores = queries[s:s + _CHUNK] @ vectors.T
        scores[np.arange(len(scores)), rows[s:s + _CHUNK]] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores_out.append(np.take_along_axis(scores, top, axis=1).ravel())
        own = labels[rows[s:s + _CHUNK]][:, None]
        relevant_out.append(((labels[top] == own) & (own >= 0)).ravel())
    return np.concatenate(scores_out), np.concatenate(relevant_out)


def calibration_section(folder: Path, queries: Embeddings, rows: np.ndarray, vectors: Embeddings,
                        labels: np.ndarray, *, title: str) -> dict[str, Any]:
    """The ``calibration`` block of evaluation.json (and its chart beside it)."""
    cal = load_calibration(folder)
    if cal is None:
        return {"note": "no calibration.json: run the index phase (python run_training.py <model>) first"}
    scores, relevant = top_hits(queries, rows, vectors, labels)
    keep = np.isfinite(scores)
    result = reliability(cal.image(scores[keep]), relevant[keep])
    result.update({"k": TOP_K, "method": cal.method, "image_map": cal.image.to_json(),
                   "fitted_at": cal.fitted_at})
    chart = plot_reliability(result, folder / "evaluation_reliability.png", title=title)
    result["chart"] = str(chart) if chart else None
    return result


def plot_reliability(result: dict[str, Any], path: Path, *, title: str) -> Path | None:
    """Reliability diagram: observed relevant share against mean match per bin, the diagonal for reference."""
    used = [b for b in result["bins"] if b["count"]]
    if not used:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    try:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfectly calibrated")
        ax.plot([b["mean_match"] for b in used], [b["relevant_share"] for b in used], marker="o", color="#4c72b0",
                label=f"this model (ECE {result['ece']:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("match (calibrated)")
        ax.set_ylabel("share of hits in the query's category")
        ax.set_title(title)
        ax.legend(loc="upper left")
        save_png(fig, path)
    finally:
        plt.close(fig)
    return path



