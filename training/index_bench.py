"""Index benchmark: flat, HNSW, IVF, IVF-SQ8 and IVF-PQ on a model's stored vectors or a synthetic set of a given
size.

Each type is built, trained and tuned by ``core.ann`` exactly as the store builds its index (so the
nprobe / efSearch shown is what a build of that type would pick), then measured on held-out queries:
recall@10 against exact search, single-query latency on one FAISS thread, build and tuning time, and
the serialised size. IVF-PQ answers are re-ranked, and IVF-SQ8's shortlist re-scored, with the exact
vectors, as the store does (the store reads them from SQLite, which this in-memory bench leaves out). The
recommendation is the ``auto`` rule of ``core.ann.choose_index_type``, so what the benchmark advises is
what an ``auto`` build does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from core.ann import LiveIndex, build, choose_index_type, exact_top, needs_training, train_size, tune
from core.config import Settings
from core.encoder import l2_normalize
from core.errors import ConfigError, MissingInputError
from core.model_config import ModelSpec
from core.sqlite_store import store_path
from core.types import Embeddings, IndexType, Metric
from training.store_data import open_built_store, read_products

logger = logging.getLogger(__name__)

BENCH_TYPES = (IndexType.FLAT, IndexType.HNSW, IndexType.IVF, IndexType.IVFSQ, IndexType.IVFPQ)
RECALL_K = 10
DEFAULT_QUERIES = 200
DEFAULT_DIM = 512  # CLIP ViT-B/32, when the model has no vectors to take the width from
SYNTHETIC_CLUSTERS = 1000
TUNE_QUERIES = 200
PQ_MIN_VECTORS = 256  # an 8-bit sub-quantiser has 256 centroids; k-means needs at least that many points
_QUERY_NOISE = 0.6  # norm of the noise added to a catalogue vector: cosine ~0.86, like a new photo of it
_BATCH = 50_000

Batches = Callable[[], Iterator[tuple[np.ndarray, Embeddings]]]
Rerank = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def synthetic_vectors(n: int, dim: int, *, seed: int = 0, clusters: int | None = None) -> Embeddings:
    """Clustered unit vectors shaped like product embeddings: about 1000 gaussian clusters (fewer for
    small sets, ~10 items each) of varying spread, so neighbours are near-duplicates, not noise."""
    rng = np.random.default_rng(seed)
    clusters = clusters or min(SYNTHETIC_CLUSTERS, max(1, n // 10))
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    spread = rng.uniform(0.6, 1.0, size=clusters).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _BATCH):  # in slices: peak memory stays near the output size
        stop = min(n, start + _BATCH)
        assign = rng.integers(0, clusters, size=stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] = centres[assign] + noise * spread[assign, None]
    return l2_normalize(out)


def _queries(vectors: Embeddings, count: int, seed: int) -> Embeddings:
    rng = np.random.default_rng(seed + 1)
    picked = vectors[rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)]
    noise = rng.standard_normal(picked.shape, dtype=np.float32) * (_QUERY_NOISE / np.sqrt(vectors.shape[1]))
    return l2_normalize(picked + noise)


def _has_store(settings: Settings, spec: ModelSpec) -> bool:
    folder = spec.paths(settings).models
    return store_path(folder).is_file() or (folder / "metadata.jsonl").is_file()


def _model_dim(settings: Settings, spec: ModelSpec) -> int:
    """The width of the model's stored vectors (synthetic sets match it), else CLIP ViT-B/32's."""
    if not _has_store(settings, spec):
        return DEFAULT_DIM
    from core.catalogue_store import open_store

    store = open_store(settings, spec, open_index=False)
    try:
        return store.dim or DEFAULT_DIM
    finally:
        store.close()


def _vectors(settings: Settings, spec: ModelSpec, size: int | None) -> tuple[Embeddings, str]:
    if size is not None:
        if size < 1:
            raise ConfigError(f"--size must be a positive number of vectors, got {size}")
        return synthetic_vectors(size, _model_dim(settings, spec), seed=settings.seed), "synthetic"
    if not _has_store(settings, spec):
        raise MissingInputError(spec.name, "no stored vectors to benchmark; build the model first "
                                           f"(python run_training.py {spec.name}), or benchmark a synthetic "
                                           "set with --size N")
    store = open_built_store(settings, spec)
    try:
        return read_products(store).vectors, "model"
    finally:
        store.close()


def _batches(vectors: Embeddings) -> Batches:
    """(vid, vector) chunks with vid = row, the shape the store feeds ``core.ann.build``."""
    def chunks() -> Iterator[tuple[np.ndarray, Embeddings]]:
        for start in range(0, len(vectors), _BATCH):
            stop = min(len(vectors), start + _BATCH)
            yield np.arange(start, stop, dtype=np.int64), vectors[start:stop]

    return chunks


def _reranker(vectors: Embeddings, metric: Metric) -> Rerank:
    """Exact scores for a quantised index's candidates, best first (what the store does with its stored vectors)."""
    def rerank(query: np.ndarray, vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vids = vids[vids >= 0]
        cand = vectors[vids]
        scores = cand @ query if metric == Metric.COSINE else 1.0 - ((cand - query) ** 2).sum(axis=1) / 2.0
        order = np.argsort(-scores, kind="stable")
        return scores[order].astype(np.float32), vids[order]

    return rerank


def _single_queries(live: LiveIndex, queries: Embeddings, rerank: Rerank | None) -> tuple[np.ndarray, list[list[int]]]:
    """Per-query latency (ms) and top-10 vids, one query at a time on one FAISS thread, as a server answers
    concurrent requests: OpenMP fan-out over a single query costs more than it saves."""
    import faiss

    latencies, found = [], []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    k = min(live.ntotal, RECALL_K * max(1, live.rescore_factor))
    try:
        for q in queries:
            t0 = time.perf_counter()
            _, vids = live.search(q[None, :], k)
            row = vids[0] if rerank is None else rerank(q, vids[0])[1]
            latencies.append((time.perf_counter() - t0) * 1000)
            found.append([int(v) for v in row[:RECALL_K] if v >= 0])
    finally:
        faiss.omp_set_num_threads(threads)
    return np.array(latencies), found


def _recall(found: list[list[int]], truth: list[set[int]]) -> float:
    return float(np.mean([len(t.intersection(f)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]))


class _Workload:
    """The vectors, the tuning set (catalogue vectors, each its own vid left out, as the store tunes) and
    the held-out measuring queries (noisy copies) with their exact top-10."""

    def __init__(self, vectors: Embeddings, queries: Embeddings, settings: Settings) -> None:
        self.vectors, self.queries, self.settings = vectors, queries, settings
        self.batches = _batches(vectors)
        rng = np.random.default_rng(settings.seed + 2)
        self.tune_own = np.sort(rng.choice(len(vectors), size=min(TUNE_QUERIES, len(vectors)), replace=False))
        self.tune_truth = exact_top(self.batches(), vectors[self.tune_own], self.tune_own, RECALL_K)
        self.truth = exact_top(self.batches(), queries, np.full(len(queries), -1, dtype=np.int64), RECALL_K)

    def sample(self, kind: IndexType) -> Embeddings:
        n = len(self.vectors)
        size = train_size(kind, n) if needs_training(kind) else 0
        if size >= n:
            return self.vectors
        pick = np.sort(np.random.default_rng(self.settings.seed).choice(n, size=size, replace=False))
        return self.vectors[pick]


def _skip_reason(kind: IndexType, n: int, dim: int) -> str | None:
    # OPQ's rotation is learnt from the vectors: with fewer than ``dim`` of them FAISS 1.15 corrupts its
    # heap and aborts the process (seen at 511 x 512-d), so such a set is not even tried
    least = max(PQ_MIN_VECTORS, dim)
    if kind == IndexType.IVFPQ and n < least:
        return f"needs at least {least} vectors to train its rotation and 8-bit product quantiser ({n} here)"
    return None


def _measure(kind: IndexType, work: _Workload) -> dict[str, Any]:
    import faiss

    settings, vectors = work.settings, work.vectors
    n, dim = vectors.shape
    start = time.perf_counter()
    live = build(work.batches, work.sample(kind), n, dim, kind, settings.metric, settings, generation=0, head=None)
    build_s = time.perf_counter() - start
    rerank = _reranker(vectors, settings.metric) if live.rescore_factor else None
    start = time.perf_counter()
    tuning = tune(live, vectors[work.tune_own], work.tune_truth, work.tune_own, settings, rerank=rerank)
    tune_s = time.perf_counter() - start
    ms, found = _single_queries(live, work.queries, rerank)
    return {"recall_at_10": round(_recall(found, work.truth), 4),
            "latency_ms_median": round(float(np.median(ms)), 4),
            "latency_ms_p95": round(float(np.percentile(ms, 95)), 4), "build_seconds": round(build_s, 3),
            "tune_seconds": round(tune_s, 3), "memory_bytes": int(faiss.serialize_index(live.index).nbytes),
            "params": dict(live.info.params), "tuning": tuning.get("reason", "")}


def recommendation(num_vectors: int, settings: Settings) -> tuple[IndexType, str]:
    """The ``auto`` choice for this size and the rule that made it."""
    choice = choose_index_type(num_vectors, settings)
    s = settings
    reason = {
        IndexType.FLAT: f"{num_vectors} <= flat_max_products ({s.flat_max_products}): exact search is fast enough",
        IndexType.HNSW: f"{s.flat_max_products} < {num_vectors} <= hnsw_max_products ({s.hnsw_max_products}): "
                        "graph search keeps latency low at high recall",
        IndexType.IVF: f"{s.hnsw_max_products} < {num_vectors} <= ivfsq_min_products "
                       f"({min(s.ivfsq_min_products, s.ivfpq_min_products)}): "
                       "IVF keeps build time bounded",
        IndexType.IVFSQ: f"{s.ivfsq_min_products} < {num_vectors} <= ivfpq_min_products ({s.ivfpq_min_products}): "
                         "8-bit codes keep a quarter of the raw vectors in memory, close enough to rank; the "
                         "shortlist is re-scored with the stored vectors",
        IndexType.IVFPQ: f"{num_vectors} > ivfpq_min_products ({s.ivfpq_min_products}): compressed codes keep "
                         "the index in memory; answers are re-ranked with the stored vectors",
    }[choice]
    return choice, reason


def run_index_bench(settings: Settings, spec: ModelSpec, *, size: int | None = None, progress: bool = True,
                    queries: int = DEFAULT_QUERIES) -> dict[str, Any]:
    """Benchmark every index type; return per-type figures and the recommended type with its tuned setting."""
    from tqdm import tqdm

    vectors, source = _vectors(settings, spec, size)
    work = _Workload(vectors, _queries(vectors, queries, settings.seed), settings)
    results: dict[str, Any] = {}
    for kind in tqdm(BENCH_TYPES, desc="index types", unit="index", disable=not progress):
        skip = _skip_reason(kind, *vectors.shape)
        results[kind.value] = {"skipped": skip} if skip else _measure(kind, work)
        logger.info("%s bench %s: %s", spec.name, kind.value, results[kind.value])
    choice, reason = recommendation(len(vectors), settings)
    params = results[choice.value].get("params", {})
    if params:
        reason += "; tuned here: " + ", ".join(f"{k}={v}" for k, v in params.items())
    return {"model": spec.name, "source": source, "num_vectors": int(len(vectors)), "dim": int(vectors.shape[1]),
            "queries": int(len(work.queries)), "k": RECALL_K, "metric": settings.metric.value,
            "recall_target": settings.recall_target, "results": results, "recommended": choice.value,
            "recommended_params": params, "reason": reason}
