"""Index benchmark: flat vs IVF vs HNSW on a model's vectors or a synthetic set of a given size.

For each type: recall@10 against exact (flat) search, single-query latency, build time and memory
(bytes of the serialised index). The recommendation is the ``auto`` rule of core.vector_index, so
what the benchmark advises is what an ``auto`` build does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from core.config import Settings
from core.encoder import l2_normalize
from core.errors import ConfigError, MissingInputError
from core.model_config import ModelSpec
from core.types import Embeddings, IndexType
from core.vector_index import build_index, choose_index_type, search_index
from utils.atomic import read_json

logger = logging.getLogger(__name__)

BENCH_TYPES = (IndexType.FLAT, IndexType.IVF, IndexType.HNSW)
RECALL_K = 10
DEFAULT_QUERIES = 200
DEFAULT_DIM = 512  # CLIP ViT-B/32, when the model has no vectors to take the width from
_QUERY_NOISE = 0.6  # norm of the noise added to a catalogue vector: cosine ~0.86, like a new photo of it
_SEARCH_THREADS = 1  # see _single_queries


def synthetic_vectors(n: int, dim: int, *, seed: int = 0, clusters: int | None = None) -> Embeddings:
    """Clustered unit vectors, shaped like product embeddings (groups of similar items)."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(8, int(np.sqrt(n) / 2))
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 50_000  # generate in slices to keep peak memory near the output size
    for start in range(0, n, step):
        stop = min(n, start + step)
        assign = rng.integers(0, clusters, size=stop - start)
        out[start:stop] = centres[assign] + rng.standard_normal((stop - start, dim), dtype=np.float32) * 0.8
    return l2_normalize(out)


def _queries(vectors: Embeddings, count: int, seed: int) -> Embeddings:
    rng = np.random.default_rng(seed + 1)
    picked = vectors[rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)]
    noise = rng.standard_normal(picked.shape, dtype=np.float32) * (_QUERY_NOISE / np.sqrt(vectors.shape[1]))
    noisy = picked + noise
    return l2_normalize(noisy)


def _model_dim(settings: Settings, spec: ModelSpec) -> int:
    paths = spec.paths(settings)
    if paths.manifest.is_file():
        dim = read_json(paths.manifest).get("dim")
        if isinstance(dim, int) and dim > 0:
            return dim
    if paths.embeddings.is_file():
        return int(np.load(paths.embeddings, mmap_mode="r").shape[1])
    return DEFAULT_DIM


def _vectors(settings: Settings, spec: ModelSpec, size: int | None) -> tuple[Embeddings, str]:
    if size is not None:
        if size < 1:
            raise ConfigError(f"--size must be a positive number of vectors, got {size}")
        return synthetic_vectors(size, _model_dim(settings, spec), seed=settings.seed), "synthetic"
    path = spec.paths(settings).embeddings
    if not path.is_file():
        raise MissingInputError(spec.name, "no embeddings.npy to benchmark; build the model first, "
                                           "or benchmark a synthetic set with --size N")
    return np.ascontiguousarray(np.load(path, allow_pickle=False), dtype=np.float32), "model"


def _single_queries(index, queries: Embeddings, settings: Settings, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-query latency (ms) and results, one query at a time on one FAISS thread, as a server
    answers concurrent requests: OpenMP fan-out over a single query costs more than it saves
    (flat, 20k x 512, 2 cores: ~16 ms on 2 threads vs ~1.6 ms on 1)."""
    import faiss

    latencies, found = [], []
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(_SEARCH_THREADS)
    try:
        for q in queries:
            t0 = time.perf_counter()
            _, pos = search_index(index, settings.metric, q[None, :], k)
            latencies.append((time.perf_counter() - t0) * 1000)
            found.append(pos[0])
    finally:
        faiss.omp_set_num_threads(threads)
    return np.array(latencies), np.array(found)


def _measure(vectors: Embeddings, queries: Embeddings, index_type: IndexType, settings: Settings,
             truth: np.ndarray | None) -> tuple[dict[str, Any], np.ndarray]:
    import faiss

    start = time.perf_counter()
    index = build_index(vectors, index_type, settings.metric, settings)
    build_s = time.perf_counter() - start
    memory = int(faiss.serialize_index(index).nbytes)
    ms, found_arr = _single_queries(index, queries, settings, min(RECALL_K, len(vectors)))
    recall = 1.0 if truth is None else _recall(found_arr, truth)
    return {"recall_at_10": round(recall, 4), "latency_ms_median": round(float(np.median(ms)), 4),
            "latency_ms_p95": round(float(np.percentile(ms, 95)), 4), "build_seconds": round(build_s, 3),
            "memory_bytes": memory}, found_arr


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def recommendation(num_vectors: int, settings: Settings) -> tuple[IndexType, str]:
    """The ``auto`` choice for this size and the rule that made it."""
    choice = choose_index_type(num_vectors, settings)
    if choice == IndexType.FLAT:
        reason = f"{num_vectors} <= flat_max_products ({settings.flat_max_products}): exact search is fast enough"
    elif choice == IndexType.HNSW:
        reason = (f"{settings.flat_max_products} < {num_vectors} <= hnsw_max_products "
                  f"({settings.hnsw_max_products}): graph search keeps latency low at high recall")
    else:
        reason = (f"{num_vectors} > hnsw_max_products ({settings.hnsw_max_products}): "
                  "IVF keeps memory and build time bounded")
    return choice, reason


def run_index_bench(settings: Settings, spec: ModelSpec, *, size: int | None = None, progress: bool = True,
                    queries: int = DEFAULT_QUERIES) -> dict[str, Any]:
    """Benchmark every index type; return per-type figures and the recommended type."""
    from tqdm import tqdm

    vectors, source = _vectors(settings, spec, size)
    query_vecs = _queries(vectors, queries, settings.seed)
    results: dict[str, Any] = {}
    truth = None
    for index_type in tqdm(BENCH_TYPES, desc="index types", unit="index", disable=not progress):
        results[index_type.value], found = _measure(vectors, query_vecs, index_type, settings, truth)
        if index_type == IndexType.FLAT:
            truth = found  # exact search is the ground truth the others are scored against
        logger.info("%s bench %s: %s", spec.name, index_type.value, results[index_type.value])
    choice, reason = recommendation(len(vectors), settings)
    return {"model": spec.name, "source": source, "num_vectors": int(len(vectors)), "dim": int(vectors.shape[1]),
            "queries": int(len(query_vecs)), "k": RECALL_K, "metric": settings.metric.value,
            "results": results, "recommended": choice.value, "reason": reason}
