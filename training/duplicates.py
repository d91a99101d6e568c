"""Near-duplicate groups in a catalogue (the same photo under several ids), for merchants:
``python run_training.py <model> --duplicates`` writes ``models/<m>/duplicates.json``.

Every product's few nearest neighbours come from the store's own index, a batch of stored vectors at
a time; pairs at or above the model's ``duplicate_threshold`` join groups (union-find over the
products involved only), so memory stays bounded by the batch and the duplicates found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any


from core.config import Settings
from core.errors import StoreError
from core.model_config import ModelSpec
from utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

DUPLICATES_JSON = "duplicates.json"
NEIGHBOURS = 16  # neighbours looked at per product
BATCH = 4096


@dataclass
class DuplicateReport:
    model: str
    threshold: float
    products: int
    groups: list[dict[str, Any]]
    path: str

    @property
    def products_in_groups(self) -> int:
        return sum(len(g["ids"]) for g in self.groups)


class _Groups:
    """Union-find over the ids of products that have a duplicate."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.best: dict[str, float] = {}

    def find(self, v: str) -> str:
        self.parent.setdefault(v, v)
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def union(self, a: str, b: str, score: float) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
        root = self.find(a)
        self.best[root] = min(self.best.get(ra, score), self.best.get(rb, score), score)

    def members(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for v in self.parent:
            out.setdefault(self.find(v), []).append(v)
        return out


def find_duplicates(settings: Settings, spec: ModelSpec, *, threshold: float | None = None) -> DuplicateReport:
    """Group the model's near-duplicates and write ``duplicates.json`` (largest group first)."""
    from core.catalogue_store import open_store

    limit = threshold if threshold is not None else spec.duplicate_threshold_for(settings)
    store = open_store(settings, spec)
    try:
        if store.open_index() is None:
            raise StoreError(spec.name, "the catalogue is empty: nothing to compare")
        groups = _Groups()
        for ids, vectors in store.scan_vectors(BATCH):
            for pid, hits in zip(ids, store.search(vectors, NEIGHBOURS), strict=True):
                for hit in hits:
                    if hit.product.id != pid and hit.score >= limit:
                        groups.union(pid, hit.product.id, hit.score)
        listed: list[dict[str, Any]] = []
        for root, members in groups.members().items():
            ids = sorted(members)
            if len(ids) > 1:
                listed.append({"ids": ids, "size": len(ids), "min_score": round(groups.best.get(root, 1.0), 6)})
        listed.sort(key=lambda g: (-g["size"], g["ids"][0]))
        count = store.count()
    finally:
        store.close()
    path = spec.paths(settings).models / DUPLICATES_JSON
    write_json_atomic(path, {"model": spec.name, "threshold": limit, "products": count,
                             "products_in_groups": sum(g["size"] for g in listed), "groups": listed})
    logger.info("%s: %d duplicate groups at cosine >= %.3f", spec.name, len(listed), limit)
    return DuplicateReport(model=spec.name, threshold=limit, products=count, groups=listed, path=str(path))


def format_duplicates(report: DuplicateReport, show: int = 5) -> str:
    lines = [f"model {report.model}: {len(report.groups)} groups of near-duplicates (cosine >= {report.threshold}), "
             f"{report.products_in_groups} of {report.products} products",
             f"written to {report.path}"]
    for group in report.groups[:show]:
        ids = ", ".join(group["ids"][:10]) + (" ..." if group["size"] > 10 else "")
        lines.append(f"  {group['size']} products (cosine >= {group['min_score']}): {ids}")
    return "\n".join(lines)
