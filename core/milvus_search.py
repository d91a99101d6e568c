"""Searching a catalogue collection: the request (the filter as an expression, ``core.milvus_expr``, and the
served index's search parameters), the answer as hits scored as cosine similarity, as the local store scores
them; searches by words (BM25, where the collection has them); and seeded samples of the catalogue found by
search (no scan)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.config import Settings
from core.milvus_collection import Collection
from core.milvus_index import MilvusIndex, metric_name
from core.milvus_schema import FIELDS, WORDS_BM25, product_of
from core.store import Hit
from core.types import Embeddings, IndexType, Metric

MAX_TOPK = 16_384  # Milvus's limit on limit + offset


def search(io: Collection, queries: Embeddings, k: int, expr: str, live: MilvusIndex | None,
           settings: Settings) -> list[list[Hit]]:
    """The best ``k`` rows admitted by ``expr`` per query, best first. Each hit carries its vector:
    near-duplicate collapsing needs no second read, which a product deleted in between (by another process)
    would fail."""
    found = io.read(io.writes.rows, io.client.search, io.name, data=queries.tolist(), anns_field="vector",
                    limit=min(k, MAX_TOPK), filter=expr, output_fields=[*FIELDS, "vector"],
                    search_params={"metric_type": metric_name(settings.metric),
                                   "params": search_params(live, k, settings)})
    return [[Hit(product_of(h["entity"] | {"id": h["id"]}), score(float(h["distance"]), settings.metric),
                 vector=np.asarray(h["entity"]["vector"], dtype=np.float32)) for h in row]
            for row in found]


def search_words(io: Collection, words: str, k: int, expr: str) -> list[Hit]:
    """The best ``k`` rows admitted by ``expr`` by BM25 over ``words`` (folded, space-separated), best first,
    each scored by its relevance (higher: better; milvus-lite reports it negated) and carrying its vector."""
    found = io.read(io.writes.rows, io.client.search, io.name, data=[words], anns_field=WORDS_BM25,
                    limit=min(k, MAX_TOPK), filter=expr, output_fields=[*FIELDS, "vector"],
                    search_params={"metric_type": "BM25"})
    return [Hit(product_of(h["entity"] | {"id": h["id"]}), abs(float(h["distance"])),
                vector=np.asarray(h["entity"]["vector"], dtype=np.float32)) for h in (found[0] if found else [])]


def search_params(live: MilvusIndex | None, k: int, settings: Settings) -> dict[str, int]:
    """The served index's search parameters for a top-``k`` search."""
    kind = live.kind if live is not None else IndexType.FLAT
    if kind == IndexType.HNSW:
        return {"ef": max(k, int(live.info.params.get("efSearch", settings.hnsw_ef_search)) if live else k)}
    if kind in (IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ):
        return {"nprobe": int(live.info.params.get("nprobe", settings.ivf_nprobe)) if live else 16}
    return {}


def score(distance: float, metric: Metric) -> float:
    """Cosine similarity, as the local store reports it (L2 in Milvus is squared)."""
    return distance if metric == Metric.COSINE else 1.0 - distance / 2.0


def sample_ids(find: Callable[[Embeddings, int], list[list[Hit]]], dim: int, total: int, n: int,
               seed: int) -> list[str]:
    """The ids of a seeded sample of up to ``n`` of ``total`` products: the neighbours (``find``) of seeded
    random directions, sorted (spread over the catalogue, if not uniform)."""
    want = min(n, total)
    rng = np.random.default_rng(seed)
    picked: dict[str, None] = {}
    for _ in range(8):  # each round asks more directions for fewer neighbours each
        per = max(1, min(MAX_TOPK, want // 32))
        directions = rng.normal(size=(max(1, 2 * (want - len(picked)) // per), dim)).astype(np.float32)
        for row in find(directions, per):
            picked.update((h.product.id, None) for h in row)
        if len(picked) >= want:
            break
    return sorted(picked)[:want] if len(picked) > want else sorted(picked)
