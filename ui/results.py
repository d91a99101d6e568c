"""Turns a search response (one model or all models) into ordered groups of hits for display."""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass, field


@dataclass
class ResultGroup:
    """Hits to show under one header; ``merged`` marks the all-models ranking shown on top."""

    key: str
    model: str
    hits: list[dict] = field(default_factory=list)
    merged: bool = False
    show_model: bool = False
    error: str = ""
    search_time_ms: float | None = None

    @property
    def subtitle(self) -> str:
        if self.error:
            return "unavailable"
        count = f"{len(self.hits)} product{'s' if len(self.hits) != 1 else ''}"
        return count + (" from every catalogue" if self.merged else "")


def _hits(raw: Any, model: str) -> list[dict]:
    hits = [dict(h) for h in raw or [] if isinstance(h, dict)]
    for hit in hits:
        hit.setdefault("model", model)
        if not hit.get("model"):
            hit["model"] = model
    return hits


def _per_model(response: dict) -> dict[str, dict]:
    per = response.get("per_model")
    if isinstance(per, list):
        return {str(g.get("model")): g for g in per if isinstance(g, dict)}
    return dict(per) if isinstance(per, dict) else {}


def groups_from_response(response: dict, *, query_model: str) -> list[ResultGroup]:
    """One group for a single-model answer; for all models the merged ranking first, then each model."""
    per_model = _per_model(response)
    if not per_model:
        model = str(response.get("model") or query_model)
        return [ResultGroup(key=model, model=model, hits=_hits(response.get("results"), model),
                            search_time_ms=response.get("search_time_ms"))]
    groups = [ResultGroup(key="merged", model="all", hits=_hits(response.get("results"), ""), merged=True,
                          show_model=True)]
    for name in sorted(per_model):
        sub = per_model[name] or {}
        groups.append(ResultGroup(key=name, model=name, hits=_hits(sub.get("results"), name),
                                  error=str(sub.get("error") or ""), search_time_ms=sub.get("search_time_ms")))
    return groups
