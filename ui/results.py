"""Turns the pages of a search (one model or all models) into what the shop shows: one ranking, and for
all models each catalogue's own results, with "load more" while a page came back full."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Results:
    """``ranking``: the merged ranking (or the one model's hits); ``per_model``: each catalogue's own
    hits, for all-models searches only, catalogues that could not be searched left out."""

    ranking: list[dict[str, Any]] = field(default_factory=list)
    per_model: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    has_more: bool = False

    @property
    def top_score(self) -> float | None:
        score = self.ranking[0].get("score") if self.ranking else None
        return float(score) if isinstance(score, int | float) else None


def _hits(raw: object, model: str) -> list[dict[str, Any]]:
    hits = [dict(h) for h in raw or [] if isinstance(h, dict)] if isinstance(raw, list) else []
    for hit in hits:
        hit["model"] = hit.get("model") or model
    return hits


def _per_model(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    per = response.get("per_model")
    if isinstance(per, list):
        return {str(g.get("model")): g for g in per if isinstance(g, dict)}
    return {str(k): v for k, v in per.items() if isinstance(v, dict)} if isinstance(per, dict) else {}


def results_from_pages(pages: list[dict[str, Any]], *, query_model: str, page_size: int) -> Results:
    """Pages in order (offset 0, page_size, ...) joined into one Results."""
    results = Results()
    for page in pages:
        model = str(page.get("model") or query_model)
        results.ranking += _hits(page.get("results"), "" if model == "all" else model)
        for name, sub in sorted(_per_model(page).items()):
            if sub.get("error"):  # a catalogue that is not built: the shopper never sees it
                continue
            results.per_model.setdefault(name, []).extend(_hits(sub.get("results"), name))
    results.has_more = bool(pages) and len(pages[-1].get("results") or []) >= page_size
    return results


def count_text(n: int, more: bool = False) -> str:
    """``1 product``, ``12 products``; ``12+ products`` while more can be loaded."""
    return f"{n}{'+' if more else ''} product{'' if n == 1 and not more else 's'}"
